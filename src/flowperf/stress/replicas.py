"""Perturbed replicas of one test: each figure as median and 5-95% band.

A test run with a calibration that kept its per-iteration multipliers (`--calibrate RUN`) and `--replicas
K` is also simulated K times, replica k's iteration costs times `replica_scale(noise, seed + k)`
(`flowperf.stress.noise`), on the same workload: the request arrays, bins and prefix blocks are built once
and shared, only the iteration costs differ. Every scheduler takes the multipliers (the engine model per
iteration, static and continuous batching per GPU iteration, `flowperf.stress.sim`). Replica k of every
test of a run uses the same seed, so two tests are compared under the same slow spells (common random
numbers): a difference between their bands is theirs, not the draw's. Pure: the workload, config and noise
in, the bands out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from flowperf.stress.metrics import outcome_metrics
from flowperf.stress.noise import NoiseModel, band, replica_scale
from flowperf.stress.one_test import inputs_of, simulate_test
from flowperf.stress.spec import SUITE_BANDED, SimTestConfig, TestSpec

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


@dataclass(frozen=True)
class ReplicaPlan:
    """What a suite's tests need for their bands: the calibration's noise, how many replicas, the seed."""

    noise: NoiseModel
    replicas: int
    seed: int

    def digest(self) -> str:
        document = {"noise": self.noise.as_dict(), "replicas": self.replicas, "seed": self.seed}
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def results_fingerprint(test_config: SimTestConfig, plan: ReplicaPlan | None) -> str:
    """The settings' fingerprint, and with bands also their noise, replica count and seed: a resumed run
    reuses a result only if its bands too were made the same way. Without bands it is the settings' own, as
    before bands existed, so earlier results still resume."""
    if plan is None:
        return test_config.fingerprint()
    return hashlib.sha256((test_config.fingerprint() + plan.digest()).encode()).hexdigest()[:12]


def replica_bands(
    test_config: SimTestConfig, test: TestSpec, noise: NoiseModel, replicas: int, seed: int
) -> dict[str, Any]:
    """The test's figures over `replicas` perturbed replicas: {figure: {median, p5, p95}}."""
    workload, bins, prefixes = inputs_of(test_config, test)
    figures = []
    for k in range(replicas):
        outcome = simulate_test(test_config, test, workload, bins, prefixes, replica_scale(noise, seed + k))
        figures.append(outcome_metrics(workload, outcome, test.n_gpus, test_config.d_sla))
    return {"replicas": replicas, "bands": {name: band([f[name] for f in figures]) for name in BANDED}}


def band_columns(test_config: SimTestConfig, test: TestSpec, plan: ReplicaPlan) -> dict[str, Any]:
    """A suite test's band columns: `replicas` and `<figure>_median/_p5/_p95` of the SUITE_BANDED figures."""
    bands = replica_bands(test_config, test, plan.noise, plan.replicas, plan.seed)["bands"]
    columns: dict[str, Any] = {"replicas": plan.replicas}
    for figure in SUITE_BANDED:
        for key in ("median", "p5", "p95"):
            columns[f"{figure}_{key}"] = bands[figure][key]
    return columns
