"""Run tests: one test end to end, and the three ways to run many (in process, worker processes, Ray).

A test's figures are a pure function of (test config, test), so any executor gives the same results as a
serial run; only the timing columns differ. Executors hand results back as tests finish so the caller can
save each one at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Literal

import numpy as np

from flowperf.stress.engine import EngineConfig, simulate_engine
from flowperf.stress.metrics import outcome_metrics
from flowperf.stress.one_test import inputs_of, simulate_test
from flowperf.stress.replicas import ReplicaPlan, band_columns, results_fingerprint
from flowperf.stress.service import ServiceModel
from flowperf.stress.sim import SimConfig, simulate
from flowperf.stress.spec import SimTestConfig, TestResult, TestSpec
from flowperf.stress.traces import Trace
from flowperf.stress.workload import adopt_trace, source_trace
from flowperf.workers.ray_cluster import connected

RunMany = Callable[[Sequence[TestSpec]], Iterator[TestResult]]


def run_test(test_config: SimTestConfig, test: TestSpec, plan: ReplicaPlan | None = None) -> TestResult:
    """Build (or reuse) the workload and bins, simulate, and summarise one test; with a replica `plan`,
    also simulate its perturbed replicas and add the key figures' median and 5-95% band."""
    began = time.perf_counter()
    scheduler = test.scheduler
    workload, bins, prefixes = inputs_of(test_config, test)
    sim_began = time.perf_counter()
    outcome = simulate_test(test_config, test, workload, bins, prefixes)
    sim_s = time.perf_counter() - sim_began
    figures = outcome_metrics(workload, outcome, test.n_gpus, test_config.d_sla)
    bands = {} if plan is None else band_columns(test_config, test, plan)
    return TestResult(
        test_id=test.test_id,
        step=test.step,
        scheduler=scheduler.name,
        k=scheduler.k,
        effective_k=None if bins is None else bins.effective_k,
        n_gpus=test.n_gpus,
        num_requests=test.num_requests,
        batch_size=test_config.batch_size,
        d_sla_s=test_config.d_sla,
        **figures,
        sim_s=sim_s,
        wall_s=time.perf_counter() - began,
        events_per_s=outcome.events / sim_s if sim_s > 0 else float("nan"),
        fingerprint=results_fingerprint(test_config, plan),
        **bands,
    )


def warm_up() -> None:
    """Compile the simulator's loops, or load them from numba's on-disk cache, before the first test is
    timed; done in the parent first so worker processes find the cache filled."""
    one = np.ones(1)
    for continuous in (False, True):
        simulate(one, one, one, SimConfig(1, 1, continuous, ServiceModel()))
    simulate_engine(one, one, one, 1, EngineConfig(), ServiceModel())


@contextmanager
def open_executor(
    test_config: SimTestConfig,
    kind: Literal["local", "ray"],
    workers: int,
    ray_address: str | None = None,
    plan: ReplicaPlan | None = None,
) -> Iterator[RunMany]:
    """Yield a function that runs tests and yields their results as they finish; stop workers on exit.
    With a replica `plan` every test also gets its bands (`run_test`).

    The trace is parsed here first, so a bad trace file is reported before any worker starts or any
    output is written.
    """
    trace = source_trace(test_config.source)
    warm_up()
    if kind == "ray":
        with _ray_executor(test_config, trace, workers, ray_address, plan) as run_many:
            yield run_many
    elif workers <= 1:
        yield lambda tests: (run_test(test_config, test, plan) for test in tests)
    else:
        # Workers parse the trace themselves (it is on this machine): a large object in the initializer's
        # arguments would hang the parent, mid-write, if a worker died while starting.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=warm_up)
        try:
            yield lambda tests: _pool_results(pool, test_config, tests, plan)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _costliest_first(tests: Sequence[TestSpec]) -> list[TestSpec]:
    """Longest tests first, so no worker is left with a big one at the end (cost grows with requests)."""
    return sorted(tests, key=lambda test: -test.num_requests * (1 if test.scheduler.kind == "bins" else 3))


def _pool_results(
    pool: ProcessPoolExecutor, test_config: SimTestConfig, tests: Sequence[TestSpec], plan: ReplicaPlan | None
) -> Iterator[TestResult]:
    futures = [pool.submit(run_test, test_config, test, plan) for test in _costliest_first(tests)]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        for future in futures:
            future.cancel()


def _ray_task(
    test_config: SimTestConfig, test: TestSpec, trace: Trace | None, plan: ReplicaPlan | None
) -> TestResult:
    adopt_trace(test_config.source, trace)
    return run_test(test_config, test, plan)


@contextmanager
def _ray_executor(
    test_config: SimTestConfig,
    trace: Trace | None,
    workers: int,
    address: str | None,
    plan: ReplicaPlan | None,
) -> Iterator[RunMany]:
    """Run tests as Ray tasks: on the cluster at `address`, on the one this process is already connected
    to, or on a local one started here (and stopped on exit, as is a connection opened here)."""
    with connected(address, workers) as ray:
        task = ray.remote(num_cpus=1)(_ray_task)
        trace_ref = ray.put(trace)

        def run_many(tests: Sequence[TestSpec]) -> Iterator[TestResult]:
            pending = [task.remote(test_config, test, trace_ref, plan) for test in _costliest_first(tests)]
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    yield ray.get(done[0])
            finally:
                for ref in pending:
                    ray.cancel(ref)

        yield run_many
