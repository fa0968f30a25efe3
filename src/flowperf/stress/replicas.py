"""Perturbed replicas of one `--scheduler vllm` test: each figure as median and 5-95% band.

A `--num-requests N --scheduler vllm` capacity test with a calibration that kept its per-iteration
multipliers (`--calibrate RUN`) and `--replicas K` is also simulated K times, replica k's iteration costs
times `replica_scale(noise, seed + k)` (`flowperf.stress.noise`), on the same workload: the request
arrays and prefix blocks are built once and shared, only the iteration costs differ. Pure: the workload,
config and noise in, the bands out.
"""

from __future__ import annotations

from typing import Any

from flowperf.stress.executors import simulate_vllm, workload_prefixes
from flowperf.stress.metrics import outcome_metrics
from flowperf.stress.noise import NoiseModel, band, replica_scale
from flowperf.stress.spec import SimTestConfig, TestSpec
from flowperf.stress.workload import cached_workload

BANDED = (
    "sla_attainment",
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "e2e_p50_s",
    "e2e_p99_s",
    "throughput_rps",
    "gpu_utilisation",
    "preemptions",
)


def replica_bands(
    test_config: SimTestConfig, test: TestSpec, noise: NoiseModel, replicas: int, seed: int
) -> dict[str, Any]:
    """The test's figures over `replicas` perturbed replicas: {figure: {median, p5, p95}}."""
    workload = cached_workload(test_config.workload(test.num_requests))
    prefixes = workload_prefixes(workload)  # built and numbered once, shared by every replica
    prefixes = None if prefixes is None else prefixes.densified()
    figures = []
    for k in range(replicas):
        outcome = simulate_vllm(test_config, test, workload, prefixes, replica_scale(noise, seed + k))
        figures.append(outcome_metrics(workload, outcome, test.n_gpus, test_config.d_sla))
    return {"replicas": replicas, "bands": {name: band([f[name] for f in figures]) for name in BANDED}}
