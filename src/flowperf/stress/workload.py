"""Workloads: N requests with arrival times, true and predicted lengths, from a trace or a generator.

A sweep runs dozens of tests on a handful of distinct workloads, so workloads are cached in memory per key
(source identity, arrival mode and its parameter, seed, size, predictor error) and shared read-only. Each
random quantity draws from its own seeded stream so that, say, changing the predictor error leaves the
arrival times untouched.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from flowperf.errors import UserError
from flowperf.stats import poisson_arrivals
from flowperf.stress.traces import BURSTGPT, SHIPPED, Trace, load_trace

SYNTHETIC = "synthetic"

# Synthetic lengths: lognormal around chat-like medians, clipped to what one model context holds.
_SYNTHETIC_INPUT = (600.0, 0.9, 32_768)  # median tokens, sigma of log, cap
_SYNTHETIC_OUTPUT = (150.0, 1.0, 4_096)


class WorkloadSource(BaseModel):
    """Where requests come from: a shipped trace name, `synthetic`, `burstgpt:PATH` or a trace file PATH.

    For a file, `identity` pins its resolved path, size and modification time, so an edited file is a
    different source for every cache. `token_scale`, `start_s` and `duration_s` select and scale the
    trace as `traces.load_trace` does (`--token-scale`, `--start`, `--duration`).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path | None = None
    burstgpt: bool = False
    identity: tuple[str, int, int] | None = None
    token_scale: float = 1.0
    start_s: float | None = None
    duration_s: float | None = None

    @classmethod
    def parse(cls, spec: str) -> WorkloadSource:
        """Read the `--workload` value; a missing file is a UserError naming the flag."""
        if spec in SHIPPED or spec == SYNTHETIC:
            return cls(name=spec)
        burstgpt = spec.startswith("burstgpt:")
        path = Path(spec.removeprefix("burstgpt:")).expanduser()
        if not path.is_file():
            choices = ", ".join([*SHIPPED, SYNTHETIC, "burstgpt:PATH", "PATH"])
            raise UserError(f"--workload: {spec!r} is neither one of {choices} nor an existing file")
        stat = path.stat()
        resolved = path.resolve()
        return cls(
            name=spec,
            path=resolved,
            burstgpt=burstgpt,
            identity=(str(resolved), stat.st_size, stat.st_mtime_ns),
        )

    @property
    def has_timestamps(self) -> bool:
        return self.name != SYNTHETIC


class WorkloadSpec(BaseModel):
    """Everything a workload depends on, normalised so that settings it ignores do not split the cache."""

    model_config = ConfigDict(frozen=True)

    source: WorkloadSource
    num_requests: int = Field(ge=1)
    use_real_timestamps: bool = False
    rate: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Poisson arrivals/s (stress mode)"
    )
    rps_scaling: float | None = Field(None, gt=0, allow_inf_nan=False, description="speed-up of trace time")
    predictor_error: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0)

    @classmethod
    def of(
        cls,
        source: WorkloadSource,
        num_requests: int,
        *,
        use_real_timestamps: bool,
        rate: float,
        rps_scaling: float,
        predictor_error: float,
        seed: int,
    ) -> WorkloadSpec:
        """Build the normalised key: the rate only matters for Poisson arrivals, the scaling only for real
        timestamps."""
        if use_real_timestamps and not source.has_timestamps:
            raise UserError("--use-real-timestamps: the synthetic workload has no timestamps; use --rate")
        return cls(
            source=source,
            num_requests=num_requests,
            use_real_timestamps=use_real_timestamps,
            rate=None if use_real_timestamps else rate,
            rps_scaling=rps_scaling if use_real_timestamps else None,
            predictor_error=predictor_error,
            seed=seed,
        )


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival; `predicted_output` is what a length-aware scheduler sees.

    `trace` is the trace the requests were tiled from (None for synthetic) and `trace_row[i]` request i's
    row in it, so prefix-block ids are read from the trace rather than copied a million times.
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    predicted_output: np.ndarray
    trace: Trace | None = None
    trace_row: np.ndarray | None = None


def stream(seed: int, purpose: str) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, purpose)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]))


_parsed: dict[WorkloadSource, Trace | None] = {}


def source_trace(source: WorkloadSource) -> Trace | None:
    """The trace behind a source (None for synthetic), parsed once per process."""
    if source not in _parsed:
        if source.name == SYNTHETIC:
            _parsed[source] = None
        else:
            _parsed[source] = load_trace(
                source.name if source.path is None else source.path,
                BURSTGPT if source.burstgpt else None,
                token_scale=source.token_scale,
                start_s=source.start_s,
                duration_s=source.duration_s,
            )
    return _parsed[source]


def adopt_trace(source: WorkloadSource, trace: Trace | None) -> None:
    """Take a trace another process already parsed: a big file is read once per run, and a remote worker
    needs no copy of the file."""
    _parsed[source] = trace


def build_workload(spec: WorkloadSpec, trace: Trace | None) -> Workload:
    """Tile the trace (request i is trace row i mod M) or draw synthetic lengths, then place arrivals.

    Real timestamps repeat the trace once per tile, each tile shifted by the trace span plus one mean
    gap so tiles neither overlap nor leave a hole; Poisson arrivals at `rate` replace them in stress mode.
    Both keep arrivals sorted, which the simulator requires.
    """
    n = spec.num_requests
    if trace is None:
        if spec.use_real_timestamps or spec.rate is None:
            raise ValueError("a synthetic workload needs Poisson arrivals")
        lengths = stream(spec.seed, "synthetic-lengths")
        input_tokens = _lognormal_tokens(lengths, n, *_SYNTHETIC_INPUT)
        output_tokens = _lognormal_tokens(lengths, n, *_SYNTHETIC_OUTPUT)
        arrival = poisson_arrivals(spec.rate, n, stream(spec.seed, "arrivals"))
    else:
        rows = np.arange(n) % trace.size
        input_tokens = trace.prompt_tokens[rows]
        output_tokens = trace.output_tokens[rows]
        if spec.use_real_timestamps and spec.rps_scaling is not None:
            arrival = _tiled_timestamps(trace.arrival_s, n) / spec.rps_scaling
        elif spec.rate is not None:
            arrival = poisson_arrivals(spec.rate, n, stream(spec.seed, "arrivals"))
        else:
            raise ValueError("a workload needs either a rate or real timestamps with a scaling")
    predicted = output_tokens
    if spec.predictor_error > 0:
        noise = stream(spec.seed, "predictor").lognormal(0.0, spec.predictor_error, n)
        predicted = np.maximum(np.rint(output_tokens * noise), 1).astype(np.int64)
    arrays = (_frozen(values) for values in (arrival, input_tokens, output_tokens, predicted))
    if trace is None:
        return Workload(*arrays)
    return Workload(*arrays, trace=trace, trace_row=_frozen(np.arange(n) % trace.size))


@lru_cache(maxsize=12)
def cached_workload(spec: WorkloadSpec) -> Workload:
    """`build_workload`, built once per process and key."""
    return build_workload(spec, source_trace(spec.source))


def _tiled_timestamps(stamps: np.ndarray, n: int) -> np.ndarray:
    span = float(stamps[-1])
    period = span + (span / (stamps.size - 1) if stamps.size > 1 and span > 0 else 1.0)
    index = np.arange(n)
    return stamps[index % stamps.size] + (index // stamps.size) * period


def _lognormal_tokens(rng: np.random.Generator, n: int, median: float, sigma: float, cap: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), 1, cap).astype(np.int64)


def _frozen(values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values)
    values.flags.writeable = False
    return values
