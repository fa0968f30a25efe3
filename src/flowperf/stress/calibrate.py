"""Fit the service model's a, b, c, d by least squares from the steps a `bench run` measured.

Prefill: the engine's own time from first scheduling to first token (`engine_ttft_ms - engine_queue_ms`,
both on the engine's clock) against the prompt tokens it had to compute (prompt minus prefix-cache hits)
gives a + b * tokens. The harness's TTFT would also hold queueing in the engine and the client's
transport, which the simulator models separately; it is used only for runs without engine timings
(an OpenAI server that reports none), and the fit says so.

Decode: each step's time per output token against the engine's running batch while it decoded gives
c + d * batch. The run records do not hold vLLM's running-request count, so the batch is estimated from
the records themselves: the requests in flight (submitted, not finished) averaged over the step's decode
window, on the harness clock within one session. With nothing waiting in the engine's queue that equals
the running batch; with requests queued it over-counts, which is why a run under the engine's
`max_num_seqs` calibrates decode best.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from flowperf.durable import read_complete_lines
from flowperf.errors import UserError
from flowperf.records import StepRecord
from flowperf.store import STEPS
from flowperf.stress.service import ServiceModel

FIT_FIELDS = ("prompt_tokens", "cached_prompt_tokens", "ttft_ms", "itl_ms")
PREFILL_FROM_ENGINE = "engine: engine_ttft_ms - engine_queue_ms (first scheduled to first token)"
PREFILL_FROM_HARNESS = "harness: ttft_ms (includes queueing; the run has no engine timings)"
DECODE_SOURCE = "tpot_ms against requests in flight, averaged over each step's decode window"


@dataclass(frozen=True)
class LinearFit:
    """y = intercept + slope * x with both kept non-negative; errors in the units of y.

    `residual_p50/p90/p99` are percentiles of |y - fit|: RMSE alone hides whether a few outliers or a
    wrong shape make the error.
    """

    intercept: float
    slope: float
    rmse: float
    r2: float | None
    points: int
    slope_identifiable: bool
    residual_p50: float
    residual_p90: float
    residual_p99: float


@dataclass(frozen=True)
class Calibration:
    service: ServiceModel
    prefill: LinearFit
    decode: LinearFit
    steps_used: int
    steps_skipped: int
    prefill_source: str
    decode_source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service.model_dump(),
            "prefill_fit": asdict(self.prefill) | {"source": self.prefill_source},
            "decode_fit": asdict(self.decode) | {"source": self.decode_source},
            "steps_used": self.steps_used,
            "steps_skipped": self.steps_skipped,
        }


def fit_line(x: np.ndarray, y: np.ndarray) -> LinearFit:
    """Least squares under intercept, slope >= 0 (a negative cost is noise, not physics).

    With two parameters the constrained optimum is the unconstrained one, or else lies on an edge where
    one parameter is zero, so no general solver is needed. With a single distinct x the slope cannot be
    told from the intercept: it is set to zero and flagged.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    identifiable = np.unique(x).size > 1
    intercept, slope = float(y.mean()), 0.0
    if identifiable:
        slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
        if intercept < 0:
            intercept, slope = 0.0, float(x @ y / (x @ x))
        if slope < 0:
            intercept, slope = float(y.mean()), 0.0
    residual = y - (intercept + slope * x)
    spread = float(((y - y.mean()) ** 2).sum())
    p50, p90, p99 = (float(v) for v in np.percentile(np.abs(residual), [50, 90, 99]))
    return LinearFit(
        intercept=intercept,
        slope=slope,
        rmse=float(np.sqrt(np.mean(residual**2))),
        r2=1.0 - float((residual**2).sum()) / spread if spread > 0 else None,
        points=int(x.size),
        slope_identifiable=bool(identifiable),
        residual_p50=p50,
        residual_p90=p90,
        residual_p99=p99,
    )


def read_steps(run_dir: Path) -> tuple[list[StepRecord], list[StepRecord]]:
    """The successful steps of a run's steps.jsonl, each with every field the fit uses, and the others;
    a torn last line from a crash is left out, any other bad line is an error."""
    run_dir = Path(run_dir)
    path = run_dir / STEPS
    if not run_dir.is_dir():
        raise UserError(f"--calibrate: {run_dir} is not a directory")
    if not path.is_file():
        raise UserError(f"--calibrate: {path} not found; expected a `bench run` output directory")
    successful, others = [], []
    for number, line in enumerate(read_complete_lines(path), start=1):
        try:
            record = StepRecord.model_validate_json(line)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(map(str, first["loc"]))
            raise UserError(f"{path}: line {number}: {field + ': ' if field else ''}{first['msg']}") from None
        if record.status != "ok":
            others.append(record)
            continue
        missing = [name for name in FIT_FIELDS if getattr(record, name) is None]
        if missing:
            raise UserError(f"{path}: line {number}: {missing[0]}: missing in a successful step")
        successful.append(record)
    return successful, others


def prefill_seconds(steps: list[StepRecord]) -> tuple[np.ndarray, str]:
    """Each step's prefill time, from the engine's clock when every step has it (never mixing sources)."""
    if all(step.engine_ttft_ms is not None and step.engine_queue_ms is not None for step in steps):
        engine = [(step.engine_ttft_ms or 0.0) - (step.engine_queue_ms or 0.0) for step in steps]
        return np.maximum(np.array(engine, dtype=float), 0.0) / 1000.0, PREFILL_FROM_ENGINE
    return np.array([step.ttft_ms for step in steps], dtype=float) / 1000.0, PREFILL_FROM_HARNESS


def decode_window_occupancy(steps: list[StepRecord], every: list[StepRecord]) -> np.ndarray:
    """For each step, the requests in flight averaged over its decode window (first to last token).

    `every` is all the run's steps, failed ones too (they occupied the engine). Offsets are comparable
    only within one session, so each session's in-flight count is integrated on its own.
    """
    occupancy = np.empty(len(steps))
    for session in {step.session for step in steps}:
        in_session = [step for step in every if step.session == session]
        starts = np.array([step.start_offset_ms for step in in_session])
        ends = starts + np.array([step.step_ms for step in in_session])
        times = np.concatenate([starts, ends])
        order = np.argsort(times, kind="stable")
        times = times[order]
        counts = np.cumsum(np.concatenate([np.ones(starts.size), -np.ones(ends.size)])[order])
        area = np.concatenate([[0.0], np.cumsum(counts[:-1] * np.diff(times))])
        for index, step in enumerate(steps):
            if step.session != session:
                continue
            begin, end = step.start_offset_ms + (step.ttft_ms or 0.0), step.start_offset_ms + step.step_ms
            occupancy[index] = (np.interp(end, times, area) - np.interp(begin, times, area)) / (end - begin)
    return occupancy


def calibrate(run_dir: Path) -> Calibration:
    """Fit prefill and decode lines from a run's successful steps; times in the model are seconds."""
    ok, others = read_steps(run_dir)
    if len(ok) < 2:
        raise UserError(
            f"--calibrate: {Path(run_dir) / STEPS} has {len(ok)} successful steps; need 2 or more"
        )
    computed = np.array(
        [max((step.prompt_tokens or 0) - (step.cached_prompt_tokens or 0), 0) for step in ok], dtype=float
    )
    prefill_y, prefill_source = prefill_seconds(ok)
    prefill = fit_line(computed, prefill_y)
    decoding = [step for step in ok if step.itl_ms and step.step_ms > (step.ttft_ms or 0.0)]
    if not decoding:
        raise UserError(f"--calibrate: no successful step in {run_dir} has inter-token gaps (itl_ms)")
    per_token = [
        step.tpot_ms if step.tpot_ms is not None else np.mean(step.itl_ms or [0.0]) for step in decoding
    ]
    decode = fit_line(
        decode_window_occupancy(decoding, ok + others), np.array(per_token, dtype=float) / 1000.0
    )
    service = ServiceModel(
        prefill_base_s=prefill.intercept,
        prefill_per_token_s=prefill.slope,
        decode_base_s=decode.intercept,
        decode_per_request_s=decode.slope,
    )
    return Calibration(
        service,
        prefill,
        decode,
        len(ok),
        len(others),
        prefill_source=prefill_source,
        decode_source=DECODE_SOURCE,
    )
