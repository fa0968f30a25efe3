"""The stress suite: steps 1-3 (or one test) run through an executor, saved as they finish, resumable.

Steps run in order because each feeds the next (step 2 sizes the cluster for step 1's best scheduler,
step 3 tunes K at step 2's size); the tests within a step are independent and run in parallel. Each
choice records where it came from (`flag`, the step that made it, `resumed` results, or `default`) so an
analysis read later says why step 2 used the scheduler it did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flowperf.stress import band_choices, plan
from flowperf.stress.config import StressConfig
from flowperf.stress.executors import RunMany
from flowperf.stress.replicas import ReplicaPlan, results_fingerprint
from flowperf.stress.results import IncrementalLog, write_outputs
from flowperf.stress.spec import Scheduler, SimTestConfig, TestResult, TestSpec

OnResult = Callable[[TestResult, bool], None]  # (result, whether it came from the resumed file)
DEFAULT_STEP2_SCHEDULER = "continuous"


@dataclass(frozen=True)
class SuiteReport:
    """All results of the run in plan order, the analysis written beside them, and the files written."""

    results: list[TestResult]
    analysis: dict[str, Any]
    files: list[str]


def planned_tests(config: StressConfig) -> list[TestSpec]:
    """Every test the run will do, for progress totals; step 2's scheduler is a stand-in until step 1 ends."""
    stand_in = config.scheduler or Scheduler.parse(DEFAULT_STEP2_SCHEDULER)
    tests = {
        "single": lambda: [_single(config)],
        "step1": lambda: plan.step1(config.gpus, config.max_requests),
        "step2": lambda: plan.step2(stand_in, config.max_gpus, config.max_requests),
        "step3": lambda: plan.step3(config.best_gpu_count or config.gpus, config.max_requests),
    }
    return [test for step in config.steps for test in tests[step]()]


def run_suite(
    config: StressConfig,
    test_config: SimTestConfig,
    run_many: RunMany,
    on_result: OnResult,
    calibration: dict[str, Any] | None = None,
    replicas: ReplicaPlan | None = None,
) -> SuiteReport:
    """Run the steps `config` selects, appending each result to the incremental file as it arrives.
    `replicas` is the plan `run_many` gives each test's bands with (None: no bands); it enters the
    fingerprint, so results with other bands are not resumed."""
    began = time.perf_counter()
    fingerprint = results_fingerprint(test_config, replicas)
    log = IncrementalLog(config.out, fingerprint, config.resume)
    try:
        resumed = dict(log.previous)

        def run(tests: Sequence[TestSpec]) -> list[TestResult]:
            done = {test.test_id: resumed[test.test_id] for test in tests if test.test_id in resumed}
            for result in done.values():
                on_result(result, True)
            for result in run_many([test for test in tests if test.test_id not in done]):
                log.append(result)
                on_result(result, False)
                done[result.test_id] = result
            return [done[test.test_id] for test in tests]

        results, analysis = _run_steps(config, run, resumed)
    finally:
        log.close()
    analysis = {
        "settings": test_config.model_dump(mode="json"),  # a persisted key: analyses already written use it
        "fingerprint": fingerprint,
        "calibration": calibration,
        **({} if replicas is None else {"replicas": {"count": replicas.replicas, "seed": replicas.seed}}),
        **analysis,
        "tests": len(results),
        "resumed_tests": sum(result.test_id in resumed for result in results),
        "wall_s": time.perf_counter() - began,
    }
    files = write_outputs(config.out, results, analysis)
    return SuiteReport(results, analysis, [str(path) for path in files])


def single_test(config: StressConfig) -> TestSpec:
    """The one test of a `--num-requests` run."""
    return _single(config)


def _single(config: StressConfig) -> TestSpec:
    return TestSpec(
        step="single",
        scheduler=config.scheduler or Scheduler.parse(DEFAULT_STEP2_SCHEDULER),
        n_gpus=config.gpus,
        num_requests=config.num_requests or 1,
    )


def _run_steps(
    config: StressConfig,
    run: Callable[[Sequence[TestSpec]], list[TestResult]],
    resumed: dict[str, TestResult],
) -> tuple[list[TestResult], dict[str, Any]]:
    """Run the chosen steps; a step not run can still inform the next one through resumed results."""
    if config.steps == ("single",):
        return run([_single(config)]), {}

    def outcome(step: str, tests: Callable[[], list[TestSpec]]) -> tuple[list[TestResult], str]:
        if step in config.steps:
            return run(tests()), step
        return [result for result in resumed.values() if result.step == step], "resumed"

    analysis: dict[str, Any] = {}
    step1, origin = outcome("step1", lambda: plan.step1(config.gpus, config.max_requests))
    if step1:
        analysis["step1"] = {
            "n_gpus": config.gpus,
            "best_scheduler": plan.best_scheduler(step1),
            "rule": "at the largest request count: highest SLA attainment, then lowest p99 TTFT",
            "source": origin,
        }

    if config.scheduler is not None:
        scheduler, origin = config.scheduler, "flag"
    elif step1:
        scheduler = Scheduler.parse(analysis["step1"]["best_scheduler"])
    else:
        scheduler, origin = Scheduler.parse(DEFAULT_STEP2_SCHEDULER), "default"
    step2, step2_origin = outcome(
        "step2", lambda: plan.step2(scheduler, config.max_gpus, config.max_requests)
    )
    if step2:
        best, met = plan.best_gpu_count(step2, config.sla_target)
        analysis["step2"] = {
            "scheduler": step2[0].scheduler,
            "scheduler_source": origin if step2_origin == "step2" else "resumed",
            "best_gpu_count": best,
            "sla_target": config.sla_target,
            "target_met": met,
            "source": step2_origin,
        }

    if config.best_gpu_count is not None:
        n_gpus, origin = config.best_gpu_count, "flag"
    elif step2:
        n_gpus, origin = analysis["step2"]["best_gpu_count"], step2_origin
    else:
        n_gpus, origin = config.gpus, "default"
    step3, step3_origin = outcome("step3", lambda: plan.step3(n_gpus, config.max_requests))
    if step3:
        analysis["step3"] = {
            "n_gpus": step3[0].n_gpus,
            "gpu_count_source": origin if step3_origin == "step3" else "resumed",
            "best_k": plan.best_k(step3),
            "by_k": [
                {
                    "k": result.k,
                    "effective_k": result.effective_k,
                    "sla_attainment": result.sla_attainment,
                    "ttft_p99_s": result.ttft_p99_s,
                    "throughput_rps": result.throughput_rps,
                }
                for result in step3
            ],
            "source": step3_origin,
        }
    ran = {"step1": step1, "step2": step2, "step3": step3}
    _band_verdicts(analysis, ran, config.sla_target)
    return [result for step in config.steps for result in ran[step]], analysis


def _band_verdicts(analysis: dict[str, Any], ran: dict[str, list[TestResult]], sla_target: float) -> None:
    """Add to each step's analysis whether its choice holds within the replicas' bands (when it has them)."""
    step1, step2, step3 = ran["step1"], ran["step2"], ran["step3"]
    largest = plan.step1_finalists(step1) if step1 else []
    if band_choices.has_bands(largest):
        best = analysis["step1"]["best_scheduler"]
        chosen = next(result for result in largest if result.scheduler == best)
        analysis["step1"]["band"] = band_choices.contenders(largest, chosen, "scheduler")
    if band_choices.has_bands(step2):
        analysis["step2"]["band"] = band_choices.gpu_counts(step2, sla_target)
    if band_choices.has_bands(step3):
        chosen = next(result for result in step3 if result.k == analysis["step3"]["best_k"])
        analysis["step3"]["band"] = band_choices.contenders(step3, chosen, "k")
