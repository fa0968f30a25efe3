"""One test's simulation: its scheduler's loop on its workload, optionally with a replica's multipliers.

The single place that maps a `Scheduler` to the compiled loop that plays it, shared by a test's expected
run (`executors.run_test`) and its perturbed replicas (`replicas.replica_bands`), so the two cannot drift.
"""

from __future__ import annotations

import numpy as np

from flowperf.stress.bins import Bins, cached_bins
from flowperf.stress.engine import Prefixes, simulate_engine
from flowperf.stress.sim import Outcome, SimConfig, simulate
from flowperf.stress.spec import SimTestConfig, TestSpec
from flowperf.stress.workload import Workload, cached_workload


def inputs_of(test_config: SimTestConfig, test: TestSpec) -> tuple[Workload, Bins | None, Prefixes | None]:
    """What the test's loop takes besides its settings, built once and cached: the workload, its bins
    (multi-bin batching with K > 1) and its prefix blocks (the engine model, numbered densely once, so a
    test and its replicas share them)."""
    spec = test_config.workload(test.num_requests)
    workload = cached_workload(spec)
    scheduler = test.scheduler
    bins = cached_bins(spec, scheduler.k) if scheduler.kind == "bins" and scheduler.k else None
    prefixes = workload_prefixes(workload) if scheduler.kind == "vllm" else None
    return workload, bins, None if prefixes is None else prefixes.densified()


def simulate_test(
    test_config: SimTestConfig,
    test: TestSpec,
    workload: Workload,
    bins: Bins | None = None,
    prefixes: Prefixes | None = None,
    scale: np.ndarray | None = None,
) -> Outcome:
    """The test's workload through its scheduler on its GPUs: `bins` for multi-bin batching with K > 1,
    `prefixes` for the vLLM engine model, iteration costs times `scale` (a replica's multipliers) where
    given."""
    scheduler = test.scheduler
    if scheduler.kind == "vllm":
        return simulate_engine(
            workload.arrival_s,
            workload.input_tokens,
            workload.output_tokens,
            test.n_gpus,
            test_config.engine(),
            test_config.service,
            prefixes,
            scale=scale,
        )
    sim_config = SimConfig(
        test.n_gpus, test_config.batch_size, scheduler.kind == "continuous", test_config.service
    )
    return simulate(
        workload.arrival_s,
        workload.input_tokens,
        workload.output_tokens,
        sim_config,
        bin_of=None if bins is None else bins.bin_of,
        scale=scale,
    )


def workload_prefixes(workload: Workload) -> Prefixes | None:
    """The prefix blocks of a workload tiled from a trace with hash ids (None otherwise)."""
    trace = workload.trace
    if trace is None or trace.block_tokens == 0 or workload.trace_row is None:
        return None
    return Prefixes(workload.trace_row, trace.hash_offsets, trace.hash_ids, trace.block_tokens)
