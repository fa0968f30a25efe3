"""Workloads (tiling, arrival modes, predictor noise, caching) and equal-mass bin boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowperf.errors import UserError
from flowperf.stress.bins import assign_bins, cached_bins, equal_mass_boundaries
from flowperf.stress.traces import Trace
from flowperf.stress.workload import (
    WorkloadSource,
    WorkloadSpec,
    build_workload,
    cached_workload,
    source_trace,
)

TRACE = Trace.of_lengths(np.array([0.0, 1.0, 3.0]), np.array([10, 20, 30]), np.array([5, 6, 7]))


def spec(n: int = 7, **changes) -> WorkloadSpec:
    options = {
        "use_real_timestamps": False,
        "rate": 5.0,
        "rps_scaling": 1.0,
        "predictor_error": 0.0,
        "seed": 1,
    }
    return WorkloadSpec.of(WorkloadSource(name="azure-code"), n, **(options | changes))


def test_real_timestamps_tile_the_trace_with_offsets_and_scale():
    workload = build_workload(spec(7, use_real_timestamps=True, rps_scaling=2.0), TRACE)
    # span 3 s plus one mean gap (1.5 s) per tile, then halved by the scaling
    np.testing.assert_allclose(workload.arrival_s, np.array([0, 1, 3, 4.5, 5.5, 7.5, 9]) / 2)
    np.testing.assert_array_equal(workload.input_tokens, [10, 20, 30, 10, 20, 30, 10])
    np.testing.assert_array_equal(workload.predicted_output, workload.output_tokens)


def test_stress_mode_draws_poisson_arrivals_at_the_rate():
    workload = build_workload(spec(200_000, rate=40.0), TRACE)
    gaps = np.diff(workload.arrival_s)
    assert gaps.min() >= 0 and 1 / gaps.mean() == pytest.approx(40.0, rel=0.01)
    assert np.std(gaps) == pytest.approx(np.mean(gaps), rel=0.02)  # exponential: std = mean


def test_predictor_error_is_seeded_lognormal_noise_that_leaves_the_truth_alone():
    exact = build_workload(spec(50_000), TRACE)
    noisy = build_workload(spec(50_000, predictor_error=0.5), TRACE)
    again = build_workload(spec(50_000, predictor_error=0.5), TRACE)
    np.testing.assert_array_equal(noisy.predicted_output, again.predicted_output)
    np.testing.assert_array_equal(noisy.output_tokens, exact.output_tokens)
    np.testing.assert_array_equal(noisy.arrival_s, exact.arrival_s)
    log_ratio = np.log(noisy.predicted_output / noisy.output_tokens)
    assert np.std(log_ratio) == pytest.approx(0.5, rel=0.05) and noisy.predicted_output.min() >= 1


def test_synthetic_workload_is_reproducible_and_refuses_real_timestamps():
    source = WorkloadSource.parse("synthetic")
    options = {"rate": 3.0, "rps_scaling": 1.0, "predictor_error": 0.0, "seed": 4}
    first = build_workload(WorkloadSpec.of(source, 1000, use_real_timestamps=False, **options), None)
    second = build_workload(WorkloadSpec.of(source, 1000, use_real_timestamps=False, **options), None)
    np.testing.assert_array_equal(first.input_tokens, second.input_tokens)
    assert first.output_tokens.min() >= 1 and 50 < np.median(first.output_tokens) < 400
    with pytest.raises(UserError, match="--use-real-timestamps"):
        WorkloadSpec.of(source, 10, use_real_timestamps=True, **options)


def test_settings_a_mode_ignores_do_not_split_the_cache():
    assert spec(use_real_timestamps=True, rate=1.0) == spec(use_real_timestamps=True, rate=99.0)
    assert spec(rps_scaling=1.0) == spec(rps_scaling=3.0)
    assert spec(rate=1.0) != spec(rate=2.0)


def test_cached_workload_and_bins_equal_fresh_ones_and_are_read_only():
    key = spec(30_000, predictor_error=0.3)
    cached = cached_workload(key)
    fresh = build_workload(key, source_trace(key.source))
    for name in ("arrival_s", "input_tokens", "output_tokens", "predicted_output"):
        np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name))
        assert not getattr(cached, name).flags.writeable
    assert cached_workload(key) is cached
    bins = cached_bins(key, 4)
    np.testing.assert_array_equal(bins.bin_of, assign_bins(fresh.predicted_output, 4, key.seed).bin_of)
    assert cached_bins(key, 4) is bins


def test_a_file_source_is_pinned_by_content_identity(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5,1\n")
    first = WorkloadSource.parse(str(path))
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5,1\n2023-11-16 18:17:04,5,2\n"
    )
    assert WorkloadSource.parse(str(path)) != first
    assert WorkloadSource.parse(f"burstgpt:{path}").burstgpt
    with pytest.raises(UserError, match="--workload"):
        WorkloadSource.parse(str(tmp_path / "missing.csv"))


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(1, 10**6), min_size=1, max_size=400, unique=True),
    k=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_equal_mass_bins_share_the_sample_evenly_without_ties(values, k, seed):
    sample = np.array(values)
    bins = assign_bins(sample, k, seed)
    counts = np.bincount(bins.bin_of, minlength=bins.effective_k)
    assert bins.effective_k == min(k, sample.size)
    assert np.all(np.abs(counts / sample.size - 1 / bins.effective_k) <= 1 / sample.size + 1e-12)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(1, 30), min_size=1, max_size=300),
    k=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_ties_merge_boundaries_and_every_bin_keeps_requests(values, k, seed):
    sample = np.array(values)
    bins = assign_bins(sample, k, seed)
    assert 1 <= bins.effective_k <= min(k, np.unique(sample).size)
    assert np.all(np.diff(bins.upper) > 0)
    assert np.all(np.bincount(bins.bin_of, minlength=bins.effective_k) > 0)
    # bins are ordered by length: a longer prediction never lands in a lower bin
    order = np.argsort(sample, kind="stable")
    assert np.all(np.diff(bins.bin_of[order]) >= 0)


def test_boundaries_come_from_a_seeded_sample_of_5000():
    predicted = np.random.default_rng(0).integers(1, 10**9, 100_000)
    first, second = (equal_mass_boundaries(predicted, 8, seed=3) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, equal_mass_boundaries(predicted, 8, seed=4))
    shares = np.bincount(np.searchsorted(first, predicted), minlength=8) / predicted.size
    assert np.all(np.abs(shares - 1 / 8) < 0.02)


def test_azure_code_lengths_collapse_to_fewer_bins():
    key = WorkloadSpec.of(
        WorkloadSource(name="azure-code"),
        8_819,
        use_real_timestamps=True,
        rate=1.0,
        rps_scaling=1.0,
        predictor_error=0.0,
        seed=0,
    )
    bins = cached_bins(key, 32)
    assert bins.effective_k < 32
    assert bins.effective_k == np.unique(bins.bin_of).size
    # over the whole trace, as its README counts: 22 distinct boundaries
    lengths = source_trace(key.source).output_tokens
    assert equal_mass_boundaries(lengths, 32, seed=0, sample_size=lengths.size).size == 22
