"""Percentiles from Prometheus histogram buckets, the way Prometheus' `histogram_quantile` estimates them.

A histogram only says how many observations fell in each bucket `(le[i-1], le[i]]`. The q-quantile is
found by rank: the bucket holding the observation of rank `q * count`, and within it a linear
interpolation, as if its observations were spread evenly between its bounds. The first bucket's lower
bound is 0 (latencies are not negative). A rank in the +Inf bucket returns the largest finite bound
(the estimate can then only say "at least this"). So an estimate is exact to within the width of the
bucket it falls in: that width is reported beside it (`bucket_width`).
"""

from __future__ import annotations

from collections.abc import Iterable

from flowperf.rundir.records import HistogramDelta


def merge(deltas: Iterable[HistogramDelta]) -> HistogramDelta | None:
    """The sum of several intervals' observations (all with the same bucket bounds; others are skipped)."""
    merged: HistogramDelta | None = None
    for delta in deltas:
        if merged is None:
            merged = delta.model_copy()
        elif delta.le == merged.le:
            counts = [a + b for a, b in zip(merged.counts, delta.counts, strict=True)]
            merged = HistogramDelta(
                le=merged.le, counts=counts, count=merged.count + delta.count, sum=merged.sum + delta.sum
            )
    return merged


def quantile(histogram: HistogramDelta, q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation within the bucket that holds rank q * count."""
    if histogram.count <= 0:
        return None
    rank = q * histogram.count
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(histogram.le, histogram.counts, strict=True):
        if cumulative >= rank and cumulative > below:
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return histogram.le[-1] if histogram.le else None


def bucket_width(histogram: HistogramDelta, value: float) -> float | None:
    """The width of the bucket `value` falls in: how far an estimate there can be from the truth."""
    lower = 0.0
    for bound in histogram.le:
        if value <= bound:
            return bound - lower
        lower = bound
    return None
