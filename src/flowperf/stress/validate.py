"""`bench stress --validate RUN_DIR --calibration FILE_OR_RUN_DIR`: how far the engine model is from a run.

The run's own requests are simulated on one GPU with the engine model: arrivals are when the harness
submitted each step (`start_offset_ms`), lengths are what the engine served, engine limits come from the
run's config.json. A `bench replay` run names its trace window in config.json, so the trace is reloaded
and the simulator's prefix cache sees the same hash blocks the engine's did; any other run brings the
prefix-cache hits the engine reported instead. The iteration-time model comes from a calibration made on
*another* run, so the error is a prediction's, not a fit's.

Latencies are compared as the harness measured them (`ttft_ms`, `step_ms`): the engine's own TTFT starts
when its core takes the request in, which under load is after the iteration it arrived during, so it
leaves out part of the queueing the simulator models. The calibration's harness overhead (the request's
way in and its tokens' way out) is added to the simulated times, half on each side; where the run
recorded `engine_last_token_ms`, the last token's way out is measured (the calibration's
`e2e_overhead_s`, step_ms minus engine_last_token_ms, less the way in) instead of taken as the first's.

With `replicas` > 0 and a calibration that kept its per-iteration multipliers (`noise`), the run is also
simulated that many times with perturbed iteration costs (`flowperf.stress.noise`), and each figure gets
the replicas' median and 5-95% band; `predicted` is then the median, and `inside_band` says whether the
measured figure fell in the band.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from flowperf.errors import UserError
from flowperf.stats import percentile
from flowperf.stress.noise import NoiseModel, band, replica_scale
from flowperf.stress.replayed import (
    DEFAULT_BATCHED_TOKENS,
    Overheads,
    read_replay,
    simulated_figures,
)
from flowperf.stress.service import ServiceModel

TTFT_SOURCE = "ttft_ms and step_ms (harness: submission to first and last token)"


@dataclass(frozen=True)
class Figure:
    """One predicted-versus-measured figure; `relative_error` is (predicted - measured) / measured."""

    name: str
    predicted: float
    measured: float | None
    relative_error: float | None
    p5: float | None = None
    p95: float | None = None
    inside_band: bool | None = None


@dataclass(frozen=True)
class Validation:
    run_dir: str
    requests: int
    requests_from: str
    engine: dict[str, Any]
    service: dict[str, Any]
    harness_overhead_s: float
    ttft_source: str
    figures: list[Figure]
    replicas: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figure(self, name: str) -> Figure:
        return next(figure for figure in self.figures if figure.name == name)


def load_calibration(source: Path) -> tuple[ServiceModel, float]:
    """(service model, harness overhead in s) from a run directory (fitted now), or a JSON file holding
    a `service` model directly or under `calibration` (as `stress_analysis.json` does)."""
    model = load_model(source)
    return model.service, model.overheads.ttft_s


@dataclass(frozen=True)
class CalibratedModel:
    service: ServiceModel
    overheads: Overheads
    noise: NoiseModel | None


def load_model(source: Path) -> CalibratedModel:
    """The calibration's service model, harness overheads and noise model (None when it kept none), from
    a run directory (fitted now) or a JSON file as `load_calibration` reads it."""
    source = Path(source)
    if source.is_dir():
        from flowperf.stress.calibrate import calibrate

        fitted = calibrate(source)
        return CalibratedModel(fitted.service, overheads_of(fitted.as_dict()), fitted.noise)
    if not source.is_file():
        raise UserError(f"--calibration: {source}: no such file or run directory")
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
        if "service" not in document:
            document = document.get("calibration") or {}
        service = ServiceModel.model_validate(document.get("service"))
        noise = NoiseModel.from_dict(document["noise"]) if document.get("noise") else None
        return CalibratedModel(service, overheads_of(document), noise)
    except (ValueError, AttributeError, TypeError, KeyError) as error:
        raise UserError(
            f"--calibration: {source}: no service model in it ({error})".splitlines()[0]
        ) from None


def overheads_of(document: dict[str, Any]) -> Overheads:
    """The harness overheads of a calibration as `Calibration.as_dict` writes it (older files lack the
    later fields: no growth with requests in flight, or growth without a limit)."""
    e2e, most = document.get("e2e_overhead_s"), document.get("overhead_max_others")
    return Overheads(
        float(document.get("harness_overhead_s") or 0.0),
        None if e2e is None else float(e2e),
        float(document.get("overhead_per_request_s") or 0.0),
        np.inf if most is None else float(most),
    )


def validate(
    run_dir: Path,
    calibration: Path,
    max_num_batched_tokens: int = DEFAULT_BATCHED_TOKENS,
    replicas: int = 0,
    seed: int = 0,
) -> Validation:
    """Simulate the run's requests with the calibrated model (and `replicas` perturbed replicas) and
    compare the figures."""
    replay = read_replay(run_dir, "--validate", max_num_batched_tokens)
    steps, engine, served = replay.steps, replay.engine, replay.served
    model = load_model(calibration)
    service, overheads, noise = model.service, model.overheads, model.noise
    measured_ttft, measured_e2e = steps["ttft_ms"].to_numpy() / 1000.0, steps["step_ms"].to_numpy() / 1000.0
    measured = {
        "ttft_p50_s": percentile(measured_ttft, 50),
        "ttft_p95_s": percentile(measured_ttft, 95),
        "e2e_p50_s": percentile(measured_e2e, 50),
        "e2e_p95_s": percentile(measured_e2e, 95),
        "throughput_rps": len(steps) / float((served.arrival_s + measured_e2e).max()),
        "preemptions": None,  # the run records none of vLLM's preemptions
    }
    predicted = simulated_figures(served, engine, service, overheads)
    spread = [
        simulated_figures(served, engine, service, overheads, replica_scale(noise, seed + k))
        for k in range(replicas if noise is not None else 0)
    ]
    figures = []
    for name, value in predicted.items():
        if not spread:
            figures.append(figure(name, value, measured[name]))
            continue
        middle = band([replica[name] for replica in spread])
        figures.append(banded(figure(name, middle["median"], measured[name]), middle["p5"], middle["p95"]))
    return Validation(
        run_dir=str(run_dir),
        requests=len(steps),
        requests_from=served.source,
        engine=asdict(engine),
        service=service.model_dump(),
        harness_overhead_s=overheads.ttft_s,
        ttft_source=TTFT_SOURCE,
        figures=figures,
        replicas=len(spread),
    )


def banded(item: Figure, p5: float, p95: float) -> Figure:
    """The figure with the replicas' band, and whether what was measured fell inside it."""
    inside = None if item.measured is None else bool(p5 <= item.measured <= p95)
    return replace(item, p5=p5, p95=p95, inside_band=inside)


def figure(name: str, predicted: float, measured: float | None) -> Figure:
    """A figure with its relative error; none when nothing was measured or the measure is 0."""
    if measured is None:
        return Figure(name, float(predicted), None, None)
    error = (float(predicted) - float(measured)) / float(measured) if measured else None
    return Figure(name, float(predicted), float(measured), error)
