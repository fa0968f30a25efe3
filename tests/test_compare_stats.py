"""The comparison statistics on synthetic samples with a known difference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowperf.compare import bootstrap_median_difference, judge, parse_gate, smallest_detectable_p
from flowperf.errors import UserError


def latencies(seed: int, n: int, scale: float = 100.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(scale), 0.2, n)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(30, 200), slowdown=st.floats(0.4, 1.0))
def test_a_clear_slowdown_is_a_regression_and_a_speedup_an_improvement(
    seed: int, n: int, slowdown: float
) -> None:
    base = latencies(seed, n)
    slower = base * (1 + slowdown)
    common = {"alpha": 0.05, "threshold_pct": 5.0, "seed": 1, "gated": True}
    assert judge("workflow_ms", base, slower, higher_is_better=False, **common).verdict == "regression"
    assert judge("workflow_ms", slower, base, higher_is_better=False, **common).verdict == "improvement"
    assert judge("tokens_per_s", base, slower, higher_is_better=True, **common).verdict == "improvement"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 200))
def test_identical_samples_never_change(seed: int, n: int) -> None:
    base = latencies(seed, n)
    result = judge(
        "step_ms",
        base,
        base.copy(),
        higher_is_better=False,
        alpha=0.05,
        threshold_pct=5.0,
        seed=2,
        gated=True,
    )
    assert result.verdict == "no significant change" and result.delta_pct == 0.0
    assert result.ci_low <= 0 <= result.ci_high


def test_a_small_real_change_below_the_threshold_does_not_count() -> None:
    base = latencies(1, 2000)
    result = judge(
        "step_ms",
        base,
        base * 1.02,
        higher_is_better=False,
        alpha=0.05,
        threshold_pct=5.0,
        seed=0,
        gated=True,
    )
    assert result.ci_low > 0  # significant...
    assert result.verdict == "no significant change"  # ...but smaller than the threshold


def test_interval_covers_the_true_difference_about_as_often_as_promised() -> None:
    covered = 0
    trials = 150
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        base, new = rng.normal(100.0, 10.0, 60), rng.normal(104.0, 10.0, 60)
        low, high = bootstrap_median_difference(base, new, alpha=0.05, seed=trial, resamples=1000)
        covered += low <= 4.0 <= high
    assert 0.88 <= covered / trials <= 0.995


def test_too_few_samples_cannot_be_significant() -> None:
    assert smallest_detectable_p(3, 3) == pytest.approx(0.1)
    result = judge("ttft_ms", np.array([10.0, 11, 12]), np.array([50.0, 51, 52]), higher_is_better=False,
                   alpha=0.05, threshold_pct=5.0, seed=0, gated=True)  # fmt: skip
    assert result.verdict == "no significant change" and "too few samples" in result.note


def test_single_values_use_the_threshold_alone() -> None:
    result = judge("peak_rss_mb", np.array([100.0]), np.array([120.0]), higher_is_better=False, alpha=0.05,
                   threshold_pct=5.0, seed=0, gated=False)  # fmt: skip
    assert result.verdict == "regression" and "no significance test" in result.note and not result.regressed


def test_gate_names_are_checked() -> None:
    assert parse_gate("workflow_ms, ttft_ms") == ("workflow_ms", "ttft_ms")
    with pytest.raises(UserError, match="--gate latency: unknown metric"):
        parse_gate("latency")
