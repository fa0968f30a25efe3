"""The `bench stress` flags as one validated model; every mistake becomes a UserError naming its flag.

The defaults describe a cluster that the default workload stresses without drowning it: at 20 requests/s
of the Azure conversation trace, continuous batching needs a dozen-odd of the illustrative GPUs to meet a
2 s TTFT SLA, so GPU scaling has a real answer to find.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flowperf.errors import UserError
from flowperf.stress.service import ServiceModel
from flowperf.stress.spec import Scheduler, SimTestConfig
from flowperf.stress.workload import WorkloadSource

DEFAULT_OUT = Path("stress_out")
DEFAULT_REPLICAS = 200  # the band's 5th and 95th of 200 move by about a sixth of its width between seeds
# A --num-requests vllm test's replicas: at 1M requests the band's width moved -11% from 20 to 40 replicas
# and -0.4%/-3.3% (TTFT p95, e2e p50) from 40 to 80 (benchmarks/sim_replicas.py, docs/stress.md), and 40
# replicas of 1M requests take about 18 s on one core.
LARGE_RUN_REPLICAS = 40
# Each suite test's replicas (steps 1-3 with a noisy calibration): the suite's cost is (1 + K) times its
# own, so fewer than a single test's; measured in docs/stress.md ("How sure it is").
SUITE_REPLICAS = 10


class StressConfig(BaseModel):
    """One field per flag (`--max-requests` is `max_requests`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workload: WorkloadSource = WorkloadSource(name="azure-conv")
    rate: float = Field(20.0, gt=0, allow_inf_nan=False)
    use_real_timestamps: bool = False
    rps_scaling: float = Field(1.0, gt=0, allow_inf_nan=False)
    predictor_error: float = Field(0.0, ge=0, allow_inf_nan=False)
    batch_size: int = Field(16, ge=1)
    gpus: int = Field(16, ge=1)
    scheduler: Scheduler | None = None
    num_requests: int | None = Field(None, ge=1)
    d_sla: float = Field(2.0, gt=0, allow_inf_nan=False)
    sla_target: float = Field(0.95, gt=0, le=1)
    step1_only: bool = False
    step2_only: bool = False
    step3_only: bool = False
    max_requests: int = Field(1_000_000, ge=1)
    max_gpus: int = Field(100, ge=1)
    best_gpu_count: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    out: Path = DEFAULT_OUT
    workers: int = Field(default_factory=lambda: default_workers(), ge=1)
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    resume: bool = False
    calibrate: list[Path] = Field(default_factory=list)
    max_num_batched_tokens: int = Field(8192, ge=1)
    kv_cache_tokens: int = Field(400_000, ge=1)
    block_size: int = Field(16, ge=1)
    prefix_caching: bool = True
    token_scale: float = Field(1.0, gt=0, allow_inf_nan=False)
    start: float | None = Field(None, ge=0, allow_inf_nan=False)
    duration: float | None = Field(None, gt=0, allow_inf_nan=False)
    validate_run: Path | None = None
    calibration: Path | None = None
    json_output: bool = False
    replicas: int | None = Field(None, ge=0)
    sessions: Path | None = None
    routing: Literal["session", "round-robin"] = "session"
    concurrency: int | None = Field(None, ge=1)
    session_rate: float | None = Field(None, gt=0, allow_inf_nan=False)
    num_sessions: int | None = Field(None, ge=1)
    slo: str | None = None
    find_gpus: bool = False

    @field_validator("workload", mode="before")
    @classmethod
    def _parse_workload(cls, value: Any) -> Any:
        return WorkloadSource.parse(value) if isinstance(value, str) else value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _parse_scheduler(cls, value: Any) -> Any:
        return Scheduler.parse(value) if isinstance(value, str) else value

    @field_validator("out")
    @classmethod
    def _out_is_a_directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StressConfig:
        only = [
            flag
            for flag, on in (("1", self.step1_only), ("2", self.step2_only), ("3", self.step3_only))
            if on
        ]
        if len(only) > 1:
            raise _FlagError("step1_only", f"choose one of --step{only[0]}-only and --step{only[1]}-only")
        if only and self.num_requests is not None:
            raise _FlagError("num_requests", "runs one test; it does not combine with --stepN-only")
        if self.ray_address and self.executor != "ray":
            raise _FlagError("ray_address", "needs --executor ray")
        if self.use_real_timestamps and not self.workload.has_timestamps:
            raise _FlagError("use_real_timestamps", "the synthetic workload has no timestamps; use --rate")
        for field, given in (
            ("token_scale", self.token_scale != 1.0),
            ("start", self.start is not None),
            ("duration", self.duration is not None),
        ):
            if given and not self.workload.has_timestamps:
                raise _FlagError(field, "selects from a trace; the synthetic workload has none")
        if self.validate_run is not None and self.calibration is None:
            raise _FlagError("validate_run", "and --calibration go together")
        if self.calibration is not None and self.validate_run is None and self.sessions is None:
            raise _FlagError("calibration", "is the model of --validate or --sessions")
        self._check_sessions()
        return self

    def _check_sessions(self) -> None:
        if self.sessions is None:
            for field, given in (
                ("find_gpus", self.find_gpus),
                ("slo", self.slo),
                ("concurrency", self.concurrency),
                ("session_rate", self.session_rate),
                ("num_sessions", self.num_sessions),
            ):
                if given:
                    raise _FlagError(field, "goes with --sessions TRACE")
            return
        if self.concurrency is not None and self.session_rate is not None:
            raise _FlagError("concurrency", "choose one of --concurrency and --session-rate")
        if self.find_gpus and not self.slo:
            raise _FlagError("find_gpus", "needs --slo NAME=MS (e.g. session_p95_ms=60000)")
        if self.slo:
            from flowperf.stress.session_plan import Slo

            try:
                Slo.parse(self.slo)
            except ValueError as error:
                raise _FlagError("slo", str(error)) from None

    def replica_count(self) -> int:
        """--replicas, else 200 where the simulation is small (--validate, --sessions: enough for a stable
        5-95% band), 40 for a --num-requests test (its band is stable to 5% at 40 at 1M requests) and
        SUITE_REPLICAS for each test of the suite."""
        if self.replicas is not None:
            return self.replicas
        if self.validate_run is not None or self.sessions is not None:
            return DEFAULT_REPLICAS
        return LARGE_RUN_REPLICAS if self.num_requests is not None else SUITE_REPLICAS

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps to run, or ("single",) for a one-test run."""
        if self.num_requests is not None:
            return ("single",)
        chosen = [
            step
            for step, on in (
                ("step1", self.step1_only),
                ("step2", self.step2_only),
                ("step3", self.step3_only),
            )
            if on
        ]
        return tuple(chosen) or ("step1", "step2", "step3")

    def test_config(self, service: ServiceModel) -> SimTestConfig:
        """What every test of this run shares, with the service model (default or calibrated)."""
        source = self.workload.model_copy(
            update={"token_scale": self.token_scale, "start_s": self.start, "duration_s": self.duration}
        )
        return SimTestConfig(
            source=source,
            use_real_timestamps=self.use_real_timestamps,
            rate=self.rate,
            rps_scaling=self.rps_scaling,
            predictor_error=self.predictor_error,
            seed=self.seed,
            batch_size=self.batch_size,
            service=service,
            d_sla=self.d_sla,
            max_num_batched_tokens=self.max_num_batched_tokens,
            kv_cache_tokens=self.kv_cache_tokens,
            block_size=self.block_size,
            prefix_caching=self.prefix_caching,
        )


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _FlagError(ValueError):
    """A cross-flag conflict, carrying the field whose flag the message should name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_flags(**flags: Any) -> StressConfig:
    """Validate flag values (None means not given) into a StressConfig, or raise one UserError line."""
    try:
        return StressConfig(**{name: value for name, value in flags.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        cause = first.get("ctx", {}).get("error")
        field = cause.field if isinstance(cause, _FlagError) else str(first["loc"][0]) if first["loc"] else ""
        message = str(cause) if isinstance(cause, ValueError) else first["msg"]
        flag = _FLAG_NAMES.get(field, field.replace("_", "-"))
        raise UserError(f"--{flag}: {message}") from None


_FLAG_NAMES = {"validate_run": "validate", "json_output": "json"}  # fields whose name is not the flag's
