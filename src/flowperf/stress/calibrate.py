"""Fit the service model's a, b, c, d by least squares from the steps a `bench run` measured.

Prefill: each successful step's time to first token against the prompt tokens it had to compute (prompt
minus prefix-cache hits) gives a + b * tokens. Decode: each step's mean inter-token gap against the number
of requests in flight when it was submitted gives c + d * batch. TTFT also holds queueing in the engine,
so a run at low concurrency calibrates prefill best; the fit's RMSE and R^2 say how well the line holds.
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


@dataclass(frozen=True)
class LinearFit:
    """y = intercept + slope * x with both kept non-negative; errors in the units of y."""

    intercept: float
    slope: float
    rmse: float
    r2: float | None
    points: int
    slope_identifiable: bool


@dataclass(frozen=True)
class Calibration:
    service: ServiceModel
    prefill: LinearFit
    decode: LinearFit
    steps_used: int
    steps_skipped: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service.model_dump(),
            "prefill_fit": asdict(self.prefill),
            "decode_fit": asdict(self.decode),
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
    return LinearFit(
        intercept=intercept,
        slope=slope,
        rmse=float(np.sqrt(np.mean(residual**2))),
        r2=1.0 - float((residual**2).sum()) / spread if spread > 0 else None,
        points=int(x.size),
        slope_identifiable=bool(identifiable),
    )


def read_successful_steps(run_dir: Path) -> tuple[list[StepRecord], int]:
    """The successful steps of a run's steps.jsonl, each with every field the fit uses, and how many
    other steps it holds; a torn last line from a crash is left out, any other bad line is an error."""
    run_dir = Path(run_dir)
    path = run_dir / STEPS
    if not run_dir.is_dir():
        raise UserError(f"--calibrate: {run_dir} is not a directory")
    if not path.is_file():
        raise UserError(f"--calibrate: {path} not found; expected a `bench run` output directory")
    successful, others = [], 0
    for number, line in enumerate(read_complete_lines(path), start=1):
        try:
            record = StepRecord.model_validate_json(line)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(map(str, first["loc"]))
            raise UserError(f"{path}: line {number}: {field + ': ' if field else ''}{first['msg']}") from None
        if record.status != "ok":
            others += 1
            continue
        missing = [name for name in FIT_FIELDS if getattr(record, name) is None]
        if missing:
            raise UserError(f"{path}: line {number}: {missing[0]}: missing in a successful step")
        successful.append(record)
    return successful, others


def calibrate(run_dir: Path) -> Calibration:
    """Fit prefill and decode lines from a run's successful steps; times in the model are seconds."""
    ok, skipped = read_successful_steps(run_dir)
    if len(ok) < 2:
        raise UserError(
            f"--calibrate: {Path(run_dir) / STEPS} has {len(ok)} successful steps; need 2 or more"
        )
    computed = np.array(
        [max((step.prompt_tokens or 0) - (step.cached_prompt_tokens or 0), 0) for step in ok], dtype=float
    )
    prefill = fit_line(computed, np.array([step.ttft_ms for step in ok], dtype=float) / 1000.0)
    decoding = [step for step in ok if step.itl_ms]
    if not decoding:
        raise UserError(f"--calibrate: no successful step in {run_dir} has inter-token gaps (itl_ms)")
    decode = fit_line(
        np.array([step.inflight_at_start for step in decoding], dtype=float),
        np.array([np.mean(step.itl_ms or [0.0]) for step in decoding]) / 1000.0,
    )
    service = ServiceModel(
        prefill_base_s=prefill.intercept,
        prefill_per_token_s=prefill.slope,
        decode_base_s=decode.intercept,
        decode_per_request_s=decode.slope,
    )
    return Calibration(service, prefill, decode, steps_used=len(ok), steps_skipped=skipped)
