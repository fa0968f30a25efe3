"""The three steps of the stress suite and the choices that link them.

Step 1 compares schedulers as the request count grows, step 2 sizes the cluster for the best of them,
step 3 tunes the number of bins at that size. Sizes above the caps are clamped to the cap (and merged), so
a capped suite keeps its shape and stays comparable with a full one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flowperf.stress.spec import Scheduler, TestResult, TestSpec

STEP1_REQUESTS = (1_000, 10_000, 100_000, 500_000, 1_000_000)
STEP1_SCHEDULERS = tuple(
    Scheduler.parse(name) for name in ("bins-1", "bins-2", "bins-4", "bins-8", "continuous")
)
STEP2_GPUS = (1, 2, 4, 8, 16, 32, 64, 100)
STEP23_REQUESTS = 100_000
STEP3_K = (1, 2, 3, 4, 6, 8)


def capped(values: Iterable[int], cap: int) -> list[int]:
    """`values` with each one above `cap` replaced by `cap`, duplicates dropped, order kept."""
    return list(dict.fromkeys(min(value, cap) for value in values))


def step1(n_gpus: int, max_requests: int) -> list[TestSpec]:
    return [
        TestSpec(step="step1", scheduler=scheduler, n_gpus=n_gpus, num_requests=requests)
        for requests in capped(STEP1_REQUESTS, max_requests)
        for scheduler in STEP1_SCHEDULERS
    ]


def step2(scheduler: Scheduler, max_gpus: int, max_requests: int) -> list[TestSpec]:
    requests = min(STEP23_REQUESTS, max_requests)
    return [
        TestSpec(step="step2", scheduler=scheduler, n_gpus=n_gpus, num_requests=requests)
        for n_gpus in capped(STEP2_GPUS, max_gpus)
    ]


def step3(n_gpus: int, max_requests: int) -> list[TestSpec]:
    requests = min(STEP23_REQUESTS, max_requests)
    return [
        TestSpec(step="step3", scheduler=Scheduler(kind="bins", k=k), n_gpus=n_gpus, num_requests=requests)
        for k in STEP3_K
    ]


def step1_finalists(results: Sequence[TestResult]) -> list[TestResult]:
    """Step 1's tests at its largest request count, where queues have reached their steady state: the
    ones its choice is made among."""
    largest = max(result.num_requests for result in results)
    return [result for result in results if result.num_requests == largest]


def best_scheduler(results: Sequence[TestResult]) -> str:
    """Best of step 1's finalists: highest SLA attainment, then lowest p99 TTFT, then the order of
    STEP1_SCHEDULERS."""
    order = [scheduler.name for scheduler in STEP1_SCHEDULERS]
    return min(
        step1_finalists(results),
        key=lambda result: (-result.sla_attainment, result.ttft_p99_s, order.index(result.scheduler)),
    ).scheduler


def best_gpu_count(results: Sequence[TestResult], sla_target: float) -> tuple[int, bool]:
    """Smallest GPU count whose SLA attainment reaches the target, and whether any did (else the largest)."""
    meeting = [result.n_gpus for result in results if result.sla_attainment >= sla_target]
    if meeting:
        return min(meeting), True
    return max(result.n_gpus for result in results), False


def best_k(results: Sequence[TestResult]) -> int | None:
    """Step 3's K with the highest SLA attainment, then lowest p99 TTFT, then the smaller K."""
    if not results:
        return None
    best = min(results, key=lambda result: (-result.sla_attainment, result.ttft_p99_s, result.k or 0))
    return best.k
