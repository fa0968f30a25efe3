"""Whether each step's choice holds within the replicas' 5-95% bands (a suite run with `--replicas`).

A step picks its best test from the expected figures (`plan`). With bands, a rival could still be the
better one if its best case (its SLA attainment's 95th percentile, its p99 TTFT's 5th) beats the chosen
test's worst case (SLA 5th, TTFT 95th) by the step's own rule: those rivals are listed as `contenders`,
and the choice is `clear` when there are none. Step 2 also gives the smallest GPU count whose band's 5th
percentile of SLA attainment reaches the target (sure in 95% of replicas) beside the median's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowperf.stress.spec import TestResult


def has_bands(results: Sequence[TestResult]) -> bool:
    return bool(results) and all(result.replicas is not None for result in results)


def contenders(results: Sequence[TestResult], chosen: TestResult, name: str) -> dict[str, Any]:
    """The rivals of `chosen` (highest SLA attainment, then lowest p99 TTFT) whose best case beats its
    worst case; `name` is the field that names a test (scheduler, k)."""
    worst = (-_value(chosen.sla_attainment_p5), _value(chosen.ttft_p99_s_p95))
    rivals = [
        getattr(result, name)
        for result in results
        if result is not chosen and (-_value(result.sla_attainment_p95), _value(result.ttft_p99_s_p5)) < worst
    ]
    by_median = min(
        results,
        key=lambda result: (-_value(result.sla_attainment_median), _value(result.ttft_p99_s_median)),
    )
    return {
        "replicas": chosen.replicas,
        "best_by_median": getattr(by_median, name),
        "contenders": rivals,
        "clear": not rivals,
        "rule": "a contender's SLA p95 / TTFT p99 p5 beats the choice's SLA p5 / TTFT p99 p95",
    }


def gpu_counts(results: Sequence[TestResult], sla_target: float) -> dict[str, Any]:
    """Smallest GPU count whose SLA attainment reaches the target at the band's 5th percentile, median
    and 95th percentile (None where no count does)."""

    def smallest(field: str) -> int | None:
        meeting = [result.n_gpus for result in results if _value(getattr(result, field)) >= sla_target]
        return min(meeting) if meeting else None

    return {
        "replicas": results[0].replicas,
        "best_gpu_count_p5": smallest("sla_attainment_p5"),
        "best_gpu_count_median": smallest("sla_attainment_median"),
        "best_gpu_count_p95": smallest("sla_attainment_p95"),
    }


def _value(figure: float | None) -> float:
    """A band figure; NaN (never ranked first) if missing."""
    return float("nan") if figure is None else figure
