"""The statistics of `bench ab`: paired block differences, judged by the Wilcoxon signed-rank test.

Two runs made one after the other on a shared machine differ by more than most changes worth catching
(whole runs 8-30% slower, issue 13), and no test of their pooled samples can tell that drift from a
change. `bench ab` instead runs the two arms in short interleaved blocks, a pair of blocks (one of each
arm, in random order) close together in time, and compares each pair on its own: the relative difference
of the two blocks' values (a block's median or mean of a metric) is taken as a log ratio, so a machine that
is uniformly slower during a pair slows both of its blocks alike and cancels out of that pair's difference.

Over the pairs, the log ratios are judged by the exact Wilcoxon signed-rank test (does their distribution
centre on zero?); the estimate shown is its Hodges-Lehmann estimator (the median of the Walsh averages)
and the interval the one that inverts the same test, so the interval excludes zero exactly when the test
rejects (up to tied ranks, which continuous timings do not produce). Rank statistics need no normality and
a single disturbed pair cannot move them far. With several gated metrics the p-values are Holm-corrected,
as in `bench compare`. A change counts only if significant *and* at least `threshold_pct`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flowperf.stats import NO_CHANGE


def balanced_orders(pairs: int, seed: int) -> list[str]:
    """Which arm runs first in each pair: "AB" or "BA", as many of each as possible, in a seeded random
    sequence. Random, so no drift with a period of its own lines up with the order; balanced, so any
    advantage of running first (or second) weighs on both arms alike."""
    firsts = ["AB"] * (pairs // 2) + ["BA"] * (pairs // 2)
    rng = np.random.default_rng(seed)
    if pairs % 2:
        firsts.append("AB" if rng.random() < 0.5 else "BA")
    return [firsts[index] for index in rng.permutation(pairs)]


def signed_rank_null(n: int) -> np.ndarray:
    """P(T+ = t) for t = 0 .. n(n+1)/2 under the null hypothesis: each rank 1..n is positive or negative
    with probability 1/2, independently (computed exactly, by adding one rank at a time)."""
    probabilities = np.zeros(n * (n + 1) // 2 + 1)
    probabilities[0] = 1.0
    for rank in range(1, n + 1):
        shifted = np.zeros_like(probabilities)
        shifted[rank:] = probabilities[:-rank]
        probabilities = 0.5 * (probabilities + shifted)
    return probabilities


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if np.count_nonzero(tied) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def signed_rank_p_value(differences: np.ndarray) -> float:
    """Exact two-sided p-value of the Wilcoxon signed-rank test that `differences` centre on zero.

    Zero differences carry no sign and are left out (Wilcoxon's rule); with none left the p-value is 1.
    """
    nonzero = differences[differences != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    ranks = _ranks(np.abs(nonzero))
    positive = float(ranks[nonzero > 0].sum())
    cumulative = np.cumsum(signed_rank_null(n))
    at_most = float(cumulative[math.floor(positive)])
    at_least = 1.0 - (float(cumulative[math.ceil(positive) - 1]) if positive >= 1 else 0.0)
    return min(1.0, 2.0 * min(at_most, at_least))


def hodges_lehmann(differences: np.ndarray, alpha: float) -> tuple[float, float | None, float | None]:
    """The Hodges-Lehmann estimate (median of the Walsh averages (d_i + d_j) / 2, i <= j) and the
    (1 - alpha) interval that inverts the signed-rank test: the k-th smallest and k-th largest Walsh
    averages, k the largest count whose null tail P(T+ < k) stays within alpha / 2. With too few pairs no
    such k exists and the interval is None: no number of pairs that small can show a change."""
    n = len(differences)
    upper = np.triu_indices(n)
    walsh = np.sort((differences[upper[0]] + differences[upper[1]]) / 2.0)
    estimate = float(np.median(walsh))
    tail = np.cumsum(signed_rank_null(n))
    below = np.nonzero(tail <= alpha / 2.0)[0]
    if len(below) == 0:
        return estimate, None, None
    k = int(below[-1]) + 1
    return estimate, float(walsh[k - 1]), float(walsh[len(walsh) - k])


def smallest_p(pairs: int) -> float:
    """The smallest two-sided p-value the signed-rank test can give with this many pairs: every pair
    moving the same way."""
    return min(1.0, 2.0 / 2.0**pairs)


@dataclass(frozen=True)
class PairedResult:
    """One metric's paired verdict. `change_pct` is the Hodges-Lehmann estimate of B relative to A, in %;
    the interval is in % too; `differences_pct` are the per-pair relative differences (B/A - 1), in pair
    order; `change` is what the difference would be called were it significant."""

    metric: str
    pairs: int
    a_median: float | None
    b_median: float | None
    change_pct: float | None
    ci_low_pct: float | None
    ci_high_pct: float | None
    p_value: float | None
    verdict: str
    gated: bool
    differences_pct: tuple[float, ...] = ()
    change: str | None = None
    p_holm: float | None = None
    testable: bool = False
    note: str = ""

    @property
    def regressed(self) -> bool:
        return self.gated and self.verdict == "regression"


def _percent(log_ratio: float | None) -> float | None:
    return None if log_ratio is None else (math.exp(log_ratio) - 1.0) * 100.0


def paired_comparison(
    metric: str,
    a_values: Sequence[float | None],
    b_values: Sequence[float | None],
    *,
    alpha: float,
    threshold_pct: float,
    gated: bool,
    higher_is_better: bool = False,
) -> PairedResult:
    """Compare arm B with arm A over block pairs: `a_values[i]` and `b_values[i]` are pair i's block
    values. Pairs missing either value (a block that measured nothing) are left out."""
    kept = [
        (float(a), float(b))
        for a, b in zip(a_values, b_values, strict=True)
        if a is not None and b is not None and a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)
    ]
    if not kept:
        return PairedResult(metric, 0, None, None, None, None, None, None, "no data", gated)
    a, b = np.array([pair[0] for pair in kept]), np.array([pair[1] for pair in kept])
    logs = np.log(b / a)
    estimate, low, high = hodges_lehmann(logs, alpha)
    change_pct = _percent(estimate) or 0.0
    worse = change_pct < 0 if higher_is_better else change_pct > 0
    change = ("regression" if worse else "improvement") if abs(change_pct) >= threshold_pct else None
    p_value = signed_rank_p_value(logs)
    testable = smallest_p(len(kept)) <= alpha
    note = "" if testable else f"too few pairs ({len(kept)}) to reach alpha {alpha:g}"
    return PairedResult(
        metric=metric,
        pairs=len(kept),
        a_median=float(np.median(a)),
        b_median=float(np.median(b)),
        change_pct=change_pct,
        ci_low_pct=_percent(low),
        ci_high_pct=_percent(high),
        p_value=p_value,
        verdict=change if change and testable and p_value <= alpha else NO_CHANGE,
        gated=gated,
        differences_pct=tuple(float(value) for value in (b / a - 1.0) * 100.0),
        change=change,
        testable=testable,
        note=note,
    )
