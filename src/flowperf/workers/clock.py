"""Aligning a worker's monotonic clock with the coordinator's, with a stated error.

The coordinator reads its clock (t0), asks the worker for its clock (w), reads its clock again (t1). The
worker read w somewhere inside [t0, t1], so its offset is w - (t0 + t1) / 2 to within (t1 - t0) / 2.
Of several such exchanges the one with the shortest round trip bounds the offset tightest (Cristian's
algorithm). On one host the monotonic clocks are the same clock and the offset is zero within that bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockAlignment:
    """worker clock = coordinator clock + offset_s, to within error_s either way."""

    offset_s: float
    error_s: float

    def to_worker(self, coordinator_time: float) -> float:
        return coordinator_time + self.offset_s


def align(exchanges: Sequence[tuple[float, float, float]]) -> ClockAlignment:
    """The alignment from (t0, worker time, t1) exchanges: the tightest one's midpoint and half round trip."""
    if not exchanges:
        raise ValueError("no clock exchange to align with")
    t0, worker, t1 = min(exchanges, key=lambda exchange: exchange[2] - exchange[0])
    if t1 < t0:
        raise ValueError("a clock exchange ended before it began")
    return ClockAlignment(offset_s=worker - (t0 + t1) / 2.0, error_s=(t1 - t0) / 2.0)
