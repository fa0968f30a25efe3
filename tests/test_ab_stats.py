"""The statistics of `bench ab` as pure functions: exact Wilcoxon, its Hodges-Lehmann interval, the
paired verdicts, and the point of it all: drift that fools an unpaired comparison cancels in pairs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from flowperf.modes.ab.stats import (
    balanced_orders,
    hodges_lehmann,
    paired_comparison,
    signed_rank_null,
    signed_rank_p_value,
    smallest_p,
)
from flowperf.outputs.compare import judge
from flowperf.stats import NO_CHANGE, holm_verdicts


def brute_force_p(differences: np.ndarray) -> float:
    """The signed-rank p-value by enumerating every sign assignment (no ties in the inputs used)."""
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    observed = ranks[differences > 0].sum()
    totals = [sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in
              itertools.product([0, 1], repeat=len(ranks))]  # fmt: skip
    totals = np.array(totals)
    return min(1.0, 2 * min(np.mean(totals <= observed), np.mean(totals >= observed)))


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_the_null_distribution_is_exact(n: int) -> None:
    null = signed_rank_null(n)
    counts = np.zeros_like(null)
    for signs in itertools.product([0, 1], repeat=n):
        counts[sum(rank for rank, sign in zip(range(1, n + 1), signs, strict=True) if sign)] += 1
    assert np.allclose(null, counts / 2**n)


def test_p_value_matches_enumeration() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        differences = rng.normal(0.3, 1.0, int(rng.integers(3, 10)))
        assert signed_rank_p_value(differences) == pytest.approx(brute_force_p(differences))


def test_interval_excludes_zero_exactly_when_the_test_rejects() -> None:
    """The interval shown and the test gated on must agree, or a reader sees a CI clear of zero beside
    "no significant change" (or the reverse)."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        differences = rng.normal(rng.uniform(-1, 1), 1.0, int(rng.integers(6, 14)))
        _, low, high = hodges_lehmann(differences, 0.05)
        assert low is not None and high is not None and low <= high
        rejects = signed_rank_p_value(differences) <= 0.05
        assert rejects == (low > 0 or high < 0)


def test_hodges_lehmann_is_the_median_of_walsh_averages() -> None:
    estimate, _, _ = hodges_lehmann(np.array([1.0, 2.0, 10.0]), 0.05)
    # Walsh averages: 1, 2, 10, 1.5, 5.5, 6 -> median (2 + 5.5) / 2
    assert estimate == pytest.approx(3.75)


def test_too_few_pairs_give_no_interval_and_no_verdict() -> None:
    assert smallest_p(5) > 0.05 and smallest_p(6) <= 0.05
    result = paired_comparison("m", [1.0] * 5, [2.0] * 5, alpha=0.05, threshold_pct=5, gated=True)
    assert result.ci_low_pct is None and not result.testable and result.verdict == NO_CHANGE
    assert "too few pairs" in result.note


def test_orders_are_balanced_seeded_and_random() -> None:
    orders = balanced_orders(10, seed=3)
    assert orders.count("AB") == orders.count("BA") == 5
    assert orders == balanced_orders(10, seed=3)
    assert len({tuple(balanced_orders(10, seed)) for seed in range(20)}) > 10
    odd = balanced_orders(7, seed=0)
    assert abs(odd.count("AB") - odd.count("BA")) == 1


def drifting_session(
    pairs: int, change: float, drift: float, seed: int, noise: float = 0.02
) -> tuple[list[float], list[float]]:
    """Block values of arms A and B in an interleaved session whose machine slows linearly by `drift`
    over it (B is `change` slower than A), with the AB/BA order `bench ab` uses."""
    rng = np.random.default_rng(seed)
    slots = 2 * pairs
    speed = 1.0 + drift * np.arange(slots) / (slots - 1)
    a, b = [], []
    for pair, order in enumerate(balanced_orders(pairs, seed)):
        first, second = 2 * pair, 2 * pair + 1
        slot_a, slot_b = (first, second) if order == "AB" else (second, first)
        a.append(1000.0 * speed[slot_a] * (1 + rng.normal(0, noise)))
        b.append(1000.0 * (1 + change) * speed[slot_b] * (1 + rng.normal(0, noise)))
    return a, b


def test_drift_fools_back_to_back_runs_but_cancels_in_pairs() -> None:
    """Identical arms on a machine slowing by 15% over the session. Run back to back (all of A, then all
    of B), `bench compare`'s unpaired test sees B 7-8% slower: a regression. Interleaved and paired,
    `bench ab` sees no change."""
    rng = np.random.default_rng(4)
    speed = 1.0 + 0.15 * np.arange(80) / 79
    workflows = 1000.0 * speed * (1 + rng.normal(0, 0.02, 80))
    unpaired = judge("workflow_ms", workflows[:40], workflows[40:], higher_is_better=False, alpha=0.05,
                     threshold_pct=5, seed=0, gated=True)  # fmt: skip
    assert unpaired.verdict == "regression"

    a, b = drifting_session(pairs=10, change=0.0, drift=0.15, seed=4)
    paired = paired_comparison("workflow_p50_ms", a, b, alpha=0.05, threshold_pct=5, gated=True)
    assert paired.verdict == NO_CHANGE
    assert abs(paired.change_pct) < 5.0


def test_a_real_shift_is_found_through_drift() -> None:
    a, b = drifting_session(pairs=10, change=0.10, drift=0.30, seed=5)
    result = paired_comparison("workflow_p50_ms", a, b, alpha=0.05, threshold_pct=5, gated=True)
    assert result.verdict == "regression" and result.regressed
    assert 7.0 < result.change_pct < 13.0
    assert result.ci_low_pct is not None and result.ci_low_pct > 0
    faster = paired_comparison("m", b, a, alpha=0.05, threshold_pct=5, gated=True)
    assert faster.verdict == "improvement"


def test_a_significant_change_below_the_threshold_is_no_change() -> None:
    a, b = drifting_session(pairs=12, change=0.03, drift=0.1, seed=6, noise=0.002)
    result = paired_comparison("m", a, b, alpha=0.05, threshold_pct=5, gated=True)
    assert result.p_value is not None and result.p_value < 0.01
    assert result.verdict == NO_CHANGE and result.change is None


def test_false_regressions_of_identical_arms_stay_near_alpha() -> None:
    """Over many simulated A/A sessions with drift and noise, a regression verdict (significant, any
    size) comes up at most at about alpha / 2 (one side of a two-sided test)."""
    flagged = 0
    for seed in range(400):
        a, b = drifting_session(pairs=10, change=0.0, drift=0.3, seed=seed, noise=0.05)
        result = paired_comparison("m", a, b, alpha=0.05, threshold_pct=0, gated=True)
        flagged += result.verdict == "regression"
    assert flagged / 400 < 0.045


def test_holm_over_gated_metrics_only() -> None:
    a, b = drifting_session(pairs=8, change=0.2, drift=0.0, seed=7, noise=0.01)
    gated = [paired_comparison(f"m{i}", a, b, alpha=0.05, threshold_pct=5, gated=True) for i in range(3)]
    free = paired_comparison("free", a, b, alpha=0.05, threshold_pct=5, gated=False)
    judged = holm_verdicts([*gated, free], alpha=0.05)
    # 8 pairs all one way: p = 2/256 each; Holm over 3 multiplies by 3 -> still below 0.05
    assert all(r.p_holm == pytest.approx(3 * 2 / 256) and r.verdict == "regression" for r in judged[:3])
    assert judged[3].p_holm is None and not judged[3].regressed
    many = holm_verdicts(
        [paired_comparison(f"m{i}", a, b, alpha=0.05, threshold_pct=5, gated=True) for i in range(7)], 0.05
    )
    assert all(r.verdict == NO_CHANGE for r in many)  # 7 * 2/256 > 0.05


def test_missing_or_nonpositive_pairs_are_left_out() -> None:
    result = paired_comparison("m", [1.0, None, 2.0, 0.0], [1.1, 5.0, None, 3.0], alpha=0.05,
                               threshold_pct=5, gated=False)  # fmt: skip
    assert result.pairs == 1
    assert result.differences_pct == pytest.approx((10.0,))
    assert paired_comparison("m", [], [], alpha=0.05, threshold_pct=5, gated=True).verdict == "no data"
    assert math.isclose(smallest_p(1), 1.0)
