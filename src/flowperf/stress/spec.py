"""The data model of a sweep: schedulers, the config all tests share, one test, and one test's result.

Tests travel to worker processes and Ray tasks, and results come back and go to CSV and are read back on
resume, so each is a small frozen pydantic model: picklable, validated on the way in, one schema for all.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from flowperf.stress.service import ServiceModel
from flowperf.stress.workload import WorkloadSource, WorkloadSpec

if TYPE_CHECKING:
    from flowperf.stress.engine import EngineConfig

_SCHEDULER = re.compile(r"bins-([1-9][0-9]*)|continuous|vllm")


class Scheduler(BaseModel):
    """`bins-K` (static batching from K equal-mass queues; K=1 is plain static batching), `continuous`
    (iteration-level batching, prefill first) or `vllm` (the engine model: vLLM V1's scheduler per GPU)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["bins", "continuous", "vllm"]
    k: int | None = Field(None, ge=1)

    @classmethod
    def parse(cls, name: str) -> Scheduler:
        match = _SCHEDULER.fullmatch(name)
        if match is None:
            raise ValueError(f"unknown scheduler {name!r}; expected bins-K (K >= 1), continuous or vllm")
        if match[1]:
            return cls(kind="bins", k=int(match[1]))
        return cls(kind="vllm" if name == "vllm" else "continuous")

    @property
    def name(self) -> str:
        return f"bins-{self.k}" if self.kind == "bins" else self.kind


class SimTestConfig(BaseModel):
    """What every test of a run shares: the workload recipe, the cluster's batch size and service model,
    and the SLA."""

    model_config = ConfigDict(frozen=True)

    source: WorkloadSource
    use_real_timestamps: bool
    rate: float = Field(gt=0)
    rps_scaling: float = Field(gt=0)
    predictor_error: float = Field(ge=0)
    seed: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    service: ServiceModel
    d_sla: float = Field(gt=0)
    max_num_batched_tokens: int = Field(8192, ge=1)
    kv_cache_tokens: int = Field(400_000, ge=1)
    block_size: int = Field(16, ge=1)
    prefix_caching: bool = True

    def workload(self, num_requests: int) -> WorkloadSpec:
        return WorkloadSpec.of(
            self.source,
            num_requests,
            use_real_timestamps=self.use_real_timestamps,
            rate=self.rate,
            rps_scaling=self.rps_scaling,
            predictor_error=self.predictor_error,
            seed=self.seed,
        )

    def engine(self) -> EngineConfig:
        """The per-GPU engine of the `vllm` scheduler; its `max_num_seqs` is the batch size."""
        from flowperf.stress.engine import EngineConfig  # numba: never on the CLI's import path (see cli)

        return EngineConfig(
            max_num_seqs=self.batch_size,
            max_num_batched_tokens=self.max_num_batched_tokens,
            kv_cache_tokens=self.kv_cache_tokens,
            block_size=self.block_size,
            prefix_caching=self.prefix_caching,
        )

    def fingerprint(self) -> str:
        """Short hash of this config; a resumed run only reuses results with the same one."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


class TestSpec(BaseModel):
    """One simulation: a scheduler on `n_gpus` GPUs serving `num_requests` requests."""

    __test__ = False
    model_config = ConfigDict(frozen=True)

    step: Literal["step1", "step2", "step3", "single"]
    scheduler: Scheduler
    n_gpus: int = Field(ge=1)
    num_requests: int = Field(ge=1)

    @property
    def test_id(self) -> str:
        return f"{self.step}/{self.scheduler.name}/r{self.num_requests}/g{self.n_gpus}"


class TestResult(BaseModel):
    """One row of the results CSVs. Times are seconds; None (an empty cell) where a figure is undefined."""

    __test__ = False
    model_config = ConfigDict(frozen=True)

    test_id: str
    step: str
    scheduler: str
    k: int | None
    effective_k: int | None
    n_gpus: int
    num_requests: int
    batch_size: int
    d_sla_s: float
    sla_attainment: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    e2e_mean_s: float
    e2e_p50_s: float
    e2e_p95_s: float
    e2e_p99_s: float
    wait_mean_s: float
    throughput_rps: float
    throughput_tokens_s: float
    gpu_utilisation: float
    batch_fill: float | None
    batches: int
    iterations: float
    events: int
    preemptions: int
    sim_s: float
    wall_s: float
    events_per_s: float
    fingerprint: str
    # With a noisy calibration and --replicas: the key figures over the perturbed replicas (stress.replicas);
    # empty otherwise. Last, so a results file written before they existed still resumes.
    replicas: int | None = None
    sla_attainment_median: float | None = None
    sla_attainment_p5: float | None = None
    sla_attainment_p95: float | None = None
    ttft_p99_s_median: float | None = None
    ttft_p99_s_p5: float | None = None
    ttft_p99_s_p95: float | None = None
    e2e_p50_s_median: float | None = None
    e2e_p50_s_p5: float | None = None
    e2e_p50_s_p95: float | None = None
    throughput_rps_median: float | None = None
    throughput_rps_p5: float | None = None
    throughput_rps_p95: float | None = None


SUITE_BANDED = ("sla_attainment", "ttft_p99_s", "e2e_p50_s", "throughput_rps")  # the band columns' figures
TIMING_FIELDS = ("sim_s", "wall_s", "events_per_s")  # vary run to run; everything else is deterministic
