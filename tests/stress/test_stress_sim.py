"""The compiled event loops against plain references, and invariants the references cannot cover."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ODD_SERVICE, reference_bins, reference_continuous_one_gpu
from flowperf.stress.service import ServiceModel
from flowperf.stress.sim import SimConfig, simulate


def requests(seed: int, n: int, tied: bool = False):
    """n requests with arrivals ~ 4/s (on a 50 ms grid when `tied`, so several share a timestamp)."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.25, n))
    if tied:
        arrival = np.round(arrival / 0.05) * 0.05
    return arrival, rng.integers(1, 400, n), rng.integers(1, 60, n)


def times(outcome):
    return np.stack([outcome.start, outcome.first_token, outcome.finish])


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 80),
    n_gpus=st.integers(1, 4),
    batch_size=st.integers(1, 5),
    n_bins=st.integers(1, 3),
    tied=st.booleans(),
    length=st.integers(0, 40),
)
def test_bins_loop_matches_reference(seed, n, n_gpus, batch_size, n_bins, tied, length):
    """With and without a replica's multipliers (`length` 0: none; see multipliers below)."""
    arrival, inputs, outputs = requests(seed, n, tied)
    bin_of = np.random.default_rng(seed + 1).integers(0, n_bins, n)
    scale = multipliers(seed + 2, length) if length else None
    config = SimConfig(n_gpus, batch_size, False, ODD_SERVICE)
    outcome = simulate(arrival, inputs, outputs, config, bin_of, scale=scale)
    expected = reference_bins(arrival, inputs, outputs, bin_of, n_gpus, batch_size, ODD_SERVICE, scale)
    np.testing.assert_allclose(times(outcome), np.stack(expected), rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 80), slots=st.integers(1, 6), tied=st.booleans())
def test_continuous_loop_matches_iteration_by_iteration_reference(seed, n, slots, tied):
    arrival, inputs, outputs = requests(seed, n, tied)
    outcome = simulate(arrival, inputs, outputs, SimConfig(1, slots, True, ODD_SERVICE))
    expected = reference_continuous_one_gpu(arrival, inputs, outputs, slots, ODD_SERVICE)
    np.testing.assert_allclose(times(outcome), np.stack(expected), rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), n_gpus=st.integers(1, 6))
def test_continuous_with_one_slot_is_static_batching_of_one(seed, n, n_gpus):
    arrival, inputs, outputs = requests(seed, n)
    continuous = simulate(arrival, inputs, outputs, SimConfig(n_gpus, 1, True, ODD_SERVICE))
    static = simulate(arrival, inputs, outputs, SimConfig(n_gpus, 1, False, ODD_SERVICE))
    np.testing.assert_allclose(times(continuous), times(static), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n_gpus", [1, 3, 8])
def test_continuous_on_many_gpus_keeps_its_invariants(n_gpus):
    arrival, inputs, outputs = requests(7, 3000)
    slots = 4
    outcome = simulate(arrival / 6, inputs, outputs, SimConfig(n_gpus, slots, True, ODD_SERVICE))
    assert np.all(outcome.start >= arrival / 6)
    assert np.all(outcome.first_token > outcome.start)
    fastest = (outputs - 1) * (ODD_SERVICE.decode_base_s + ODD_SERVICE.decode_per_request_s)
    assert np.all(outcome.finish - outcome.first_token >= fastest - 1e-9)
    # at no moment more requests in service than the cluster has slots
    change = np.concatenate([np.ones(arrival.size), -np.ones(arrival.size)])
    at = np.concatenate([outcome.start, outcome.finish])
    order = np.lexsort((change, at))  # a departure before an arrival at the same instant
    assert np.cumsum(change[order]).max() <= n_gpus * slots
    assert outcome.events >= arrival.size
    assert 0 < outcome.mean_fill <= 1


def test_a_static_batch_lasts_as_long_as_its_longest_service_time():
    arrival = np.array([0.0, 0.0, 0.0])
    outcome = simulate(
        arrival,
        np.zeros(3),
        np.ones(3),
        SimConfig(1, 3, False, ODD_SERVICE),
        service_time_s=np.array([1.0, 5.0, 2.0]),
    )
    np.testing.assert_array_equal(outcome.first_token, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(outcome.finish, [1.0, 5.0, 2.0])
    assert outcome.busy_gpu_s == 5.0 and outcome.batches == 1 and outcome.mean_fill == 1.0


def test_multi_bin_batches_never_mix_bins():
    arrival = np.zeros(6)
    bin_of = np.array([0, 1, 0, 1, 0, 1])
    outcome = simulate(arrival, np.full(6, 10), np.arange(1, 7), SimConfig(1, 4, False, ODD_SERVICE), bin_of)
    for k in (0, 1):
        assert np.unique(outcome.start[bin_of == k]).size == 1
    assert outcome.batches == 2


def test_no_requests_is_an_empty_outcome():
    empty = np.zeros(0)
    for continuous in (False, True):
        outcome = simulate(empty, empty, empty, SimConfig(2, 4, continuous, ODD_SERVICE))
        assert outcome.finish.size == 0 and outcome.events == 0 and outcome.busy_gpu_s == 0.0


def test_misuse_is_refused():
    arrival = np.array([1.0, 0.5])
    with pytest.raises(ValueError, match="sorted"):
        simulate(arrival, np.ones(2), np.ones(2), SimConfig(1, 1, False, ODD_SERVICE))
    with pytest.raises(ValueError, match="one queue"):
        simulate(np.zeros(2), np.ones(2), np.ones(2), SimConfig(1, 1, True, ODD_SERVICE), bin_of=np.zeros(2))
    with pytest.raises(ValueError, match="at least one GPU"):
        simulate(np.zeros(2), np.ones(2), np.ones(2), SimConfig(0, 1, False, ODD_SERVICE))


def test_an_arrival_starts_on_an_idle_gpu_after_another_gpu_took_the_request_planned_elsewhere():
    """GPU 0 is in a 2 s prefill with a free slot when request 4 arrives, so it plans to admit it at its
    boundary; GPU 1 frees a slot first and takes request 4 instead; GPU 2 then goes idle. Request 5 must
    start on GPU 2 at once; with the stale promise still counted it waited almost a second for a busy GPU's
    next completion."""
    service = ServiceModel(
        prefill_base_s=0.0, prefill_per_token_s=0.001, decode_base_s=0.01, decode_per_request_s=0.0
    )
    arrival = np.array([0.0, 0.001, 0.001, 0.002, 0.003, 0.05])
    prompt = np.array([2000, 1, 1, 1, 1, 1])
    output = np.array([2, 3, 100, 5, 2, 2])
    outcome = simulate(arrival, prompt, output, SimConfig(3, 2, True, service))
    assert outcome.start[4] == pytest.approx(0.023)  # GPU 1 drained the queue at its first completion
    assert outcome.start[5] == arrival[5]


# Perturbed replicas: every iteration's cost times a multiplier (flowperf.stress.noise's replicas).


def multipliers(seed: int, length: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, length)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 80),
    slots=st.integers(1, 6),
    tied=st.booleans(),
    length=st.integers(1, 40),
)
def test_continuous_loop_with_a_scale_matches_iteration_by_iteration_reference(seed, n, slots, tied, length):
    arrival, inputs, outputs = requests(seed, n, tied)
    scale = multipliers(seed + 2, length)
    outcome = simulate(arrival, inputs, outputs, SimConfig(1, slots, True, ODD_SERVICE), scale=scale)
    expected = reference_continuous_one_gpu(arrival, inputs, outputs, slots, ODD_SERVICE, scale)
    np.testing.assert_allclose(times(outcome), np.stack(expected), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("length", [1, 7, 64])
def test_a_scale_of_ones_gives_the_unscaled_results_bit_for_bit(continuous, length):
    arrival, inputs, outputs = requests(11, 3000, tied=True)
    config = SimConfig(5, 4, continuous, ODD_SERVICE)
    bin_of = None if continuous else np.random.default_rng(3).integers(0, 3, arrival.size)
    plain = simulate(arrival / 8, inputs, outputs, config, bin_of)
    ones = simulate(arrival / 8, inputs, outputs, config, bin_of, scale=np.ones(length))
    np.testing.assert_array_equal(times(ones), times(plain))
    assert (ones.busy_gpu_s, ones.iterations, ones.events, ones.mean_fill) == (
        plain.busy_gpu_s,
        plain.iterations,
        plain.events,
        plain.mean_fill,
    )


SCALE = np.array([2.0, 3.0, 5.0, 7.0, 11.0])


def two_requests_on_one_gpu(continuous: bool):
    """Requests of 100 and 50 prompt tokens (4 and 3 output tokens) at 0 and 100 s on one GPU with SCALE:
    the outcome, each one's unscaled prefill and the unscaled decode iteration of one request."""
    service = ODD_SERVICE
    arrival = np.array([0.0, 100.0])
    config = SimConfig(1, 2, continuous, service)
    outcome = simulate(arrival, np.array([100, 50]), np.array([4, 3]), config, scale=SCALE)
    prefill = [service.prefill_base_s + service.prefill_per_token_s * t for t in (100, 50)]
    return outcome, prefill, service.decode_base_s + service.decode_per_request_s


def test_static_batching_prices_the_prefill_and_each_decode_iteration_with_its_own_multiplier():
    """One GPU: the first batch's prefill is iteration 0 and its 3 decode iterations 1-3; the next batch
    (after the GPU went idle) goes on from iteration 4, and the multipliers wrap around after 5."""
    outcome, prefill, tau = two_requests_on_one_gpu(continuous=False)
    assert outcome.first_token[0] == pytest.approx(prefill[0] * 2.0)
    assert outcome.finish[0] == pytest.approx(prefill[0] * 2.0 + tau * (3.0 + 5.0 + 7.0))
    assert outcome.first_token[1] == pytest.approx(100.0 + prefill[1] * 11.0)
    assert outcome.finish[1] == pytest.approx(100.0 + prefill[1] * 11.0 + tau * (2.0 + 3.0))


def test_continuous_batching_prices_each_decode_iteration_and_a_prefill_at_its_boundary():
    """One GPU: request 0's prefill at boundary 0 and its 3 decode iterations 0-2; request 1 arrives while
    the GPU is idle at boundary 3, its prefill priced with multiplier 3, its 2 iterations with 3 and 4."""
    outcome, prefill, tau = two_requests_on_one_gpu(continuous=True)
    assert outcome.finish[0] == pytest.approx(prefill[0] * 2.0 + tau * (2.0 + 3.0 + 5.0))
    assert outcome.first_token[1] == pytest.approx(100.0 + prefill[1] * 7.0)
    assert outcome.finish[1] == pytest.approx(100.0 + prefill[1] * 7.0 + tau * (7.0 + 11.0))


@pytest.mark.parametrize("continuous", [False, True])
def test_each_gpu_reads_the_multipliers_from_its_own_offset(continuous):
    """Two GPUs, one slot each, two requests at once: GPU 1 starts at multiplier 10 // 2 = 5."""
    scale = np.arange(1.0, 11.0)
    service = ODD_SERVICE
    outcome = simulate(
        np.zeros(2), np.array([10, 10]), np.array([3, 3]), SimConfig(2, 1, continuous, service), scale=scale
    )
    prefill = service.prefill_base_s + service.prefill_per_token_s * 10
    tau = service.decode_base_s + service.decode_per_request_s
    decode = [(1.0 + 2.0, 6.0 + 7.0), (2.0 + 3.0, 7.0 + 8.0)][not continuous]
    assert outcome.finish[0] == pytest.approx(prefill * 1.0 + tau * decode[0])
    assert outcome.finish[1] == pytest.approx(prefill * 6.0 + tau * decode[1])


@pytest.mark.parametrize("continuous", [False, True])
def test_a_constant_scale_of_two_doubles_every_service_interval_when_nothing_queues(continuous):
    arrival, inputs, outputs = requests(5, 400)
    arrival = arrival * 20  # one request every ~5 s, each served in well under a second
    config = SimConfig(3, 4, continuous, ODD_SERVICE)
    plain = simulate(arrival, inputs, outputs, config)
    doubled = simulate(arrival, inputs, outputs, config, scale=np.full(9, 2.0))
    np.testing.assert_array_equal(doubled.start, arrival)
    np.testing.assert_allclose(doubled.first_token - arrival, 2 * (plain.first_token - arrival), rtol=1e-9)
    np.testing.assert_allclose(doubled.finish - arrival, 2 * (plain.finish - arrival), rtol=1e-9)
    assert doubled.busy_gpu_s == pytest.approx(2 * plain.busy_gpu_s, rel=1e-9)


def test_a_scale_is_refused_where_it_means_nothing():
    one = np.ones(1)
    config = SimConfig(1, 1, False, ODD_SERVICE)
    with pytest.raises(ValueError, match="service_time_s"):
        simulate(one, one, one, config, service_time_s=one, scale=one)
    for bad in (np.zeros(0), np.array([1.0, 0.0]), np.array([np.nan])):
        with pytest.raises(ValueError, match="finite and positive"):
            simulate(one, one, one, config, scale=bad)


@pytest.mark.parametrize("scale", [None, np.ones(7)])
def test_unscaled_times_keep_the_unscaled_arithmetic_to_the_last_bit(scale):
    """Each request alone in its batch (one slot): its times are exactly the expressions the loops computed
    before they took a scale, in the same order of operations, so results did not move by a rounding."""
    arrival, inputs, outputs = requests(13, 2000, tied=True)
    arrival = arrival / 3
    s = ODD_SERVICE
    tau = s.decode_base_s + s.decode_per_request_s * 1
    for continuous in (False, True):
        outcome = simulate(arrival, inputs, outputs, SimConfig(3, 1, continuous, s), scale=scale)
        start, decode = outcome.start, (outputs - 1).astype(float)
        if continuous:
            first = [
                start[r] + s.prefill_base_s + s.prefill_per_token_s * float(inputs[r]) for r in range(2000)
            ]
        else:
            first = [
                start[r] + (s.prefill_base_s + s.prefill_per_token_s * float(inputs[r])) for r in range(2000)
            ]
        np.testing.assert_array_equal(outcome.first_token, first)
        finish = [first[r] + decode[r] * tau for r in range(2000)]
        np.testing.assert_array_equal(outcome.finish, finish)
        assert np.any(outcome.start > arrival)  # congested: queueing and planned admissions are exercised
