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
import pandas as pd

from flowperf.errors import UserError
from flowperf.rundir.rundata import RunData, load_run
from flowperf.stats import percentile
from flowperf.stress.calibrate import run_batched_tokens
from flowperf.stress.engine import EngineConfig, Prefixes, simulate_engine
from flowperf.stress.noise import NoiseModel, band, replica_scale
from flowperf.stress.service import ServiceModel
from flowperf.stress.traces import load_trace

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


@dataclass(frozen=True)
class Served:
    """The requests a run served, as the simulator takes them (arrivals in s from the first)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefixes: Prefixes | None
    cached_tokens: np.ndarray | None
    source: str


def load_calibration(source: Path) -> tuple[ServiceModel, float]:
    """(service model, harness overhead in s) from a run directory (fitted now), or a JSON file holding
    a `service` model directly or under `calibration` (as `stress_analysis.json` does)."""
    model = load_model(source)
    return model.service, model.overheads.ttft_s


DEFAULT_BATCHED_TOKENS = 8192  # vLLM's default token budget, for a run that recorded none


@dataclass(frozen=True)
class Overheads:
    """What the harness adds to the engine's times: to its TTFT (`ttft_s`, half on the way in), to its
    last token (`e2e_s`; None: the same), and per other request in flight (`per_request_s`, up to
    `max_others` of them: the calibration saw no more), on the way back."""

    ttft_s: float
    e2e_s: float | None = None
    per_request_s: float = 0.0
    max_others: float = np.inf


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


def engine_of(run: RunData, max_num_batched_tokens: int) -> EngineConfig:
    """The engine limits the run used: vLLM's own figures from config.json where recorded (the token
    budget from the engine arguments or vLLM's start-up log), else the settings flowperf gave it, else
    `max_num_batched_tokens` and vLLM's defaults."""
    engine = run.config.get("engine") or {}
    details = engine.get("details") or {}
    settings = (run.config.get("config") or {}).get("engine") or {}
    block_size = int(details.get("block_size") or settings.get("block_size") or 16)
    kv_tokens = details.get("kv_cache_tokens")
    if not kv_tokens:
        raise UserError(
            f"--validate: {run.run_dir}: config.json does not record the KV cache size (engine.details."
            "kv_cache_tokens); validate a run on the in-process engine"
        )
    return EngineConfig(
        max_num_seqs=int(details.get("max_num_seqs") or settings.get("max_num_seqs") or 256),
        max_num_batched_tokens=run_batched_tokens(run.run_dir) or max_num_batched_tokens,
        kv_cache_tokens=int(kv_tokens),
        block_size=block_size,
        prefix_caching=bool(details.get("prefix_caching", settings.get("enable_prefix_caching", True))),
    )


def served_steps(run: RunData) -> pd.DataFrame:
    """The run's successful steps in submission order; one session only, since offsets of different
    sessions (a resumed run) are not on one clock."""
    steps = run.ok_steps
    if steps.empty:
        raise UserError(f"--validate: {run.run_dir}: no successful steps to compare with")
    if steps["session"].nunique() > 1:
        raise UserError(
            f"--validate: {run.run_dir}: the run spans several sessions (resumed); use one made in one go"
        )
    return steps.sort_values("start_offset_ms", kind="stable").reset_index(drop=True)


def served_requests(run: RunData, steps: pd.DataFrame) -> Served:
    """What the simulator replays: the trace's own requests (with their hash ids) for a `bench replay`
    run, else the steps' lengths and their reported prefix-cache hits."""
    arrival = (steps["start_offset_ms"].to_numpy() - steps["start_offset_ms"].min()) / 1000.0
    prompt = steps["prompt_tokens"].fillna(0).to_numpy(np.int64)
    output = np.maximum(steps["output_tokens"].fillna(1).to_numpy(np.int64), 1)
    window = (run.config.get("config") or {}).get("trace")
    if not window:
        cached = steps["cached_prompt_tokens"].fillna(0).to_numpy(np.int64)
        return Served(arrival, prompt, output, None, cached, "the steps' lengths and reported cache hits")
    trace = load_trace(
        window["source"],
        token_scale=window.get("token_scale", 1.0),
        max_requests=window.get("max_requests"),
        start_s=window.get("start_s"),
        duration_s=window.get("duration_s"),
    )
    rows = steps["flow_index"].to_numpy(np.int64)
    if rows.max() >= trace.size or not np.array_equal(trace.prompt_tokens[rows], prompt):
        raise UserError(
            f"--validate: {run.run_dir}: its steps do not match the trace window in its config.json "
            f"({window['source']}): was the trace file changed since the replay?"
        )
    prefixes = Prefixes(rows, trace.hash_offsets, trace.hash_ids, trace.block_tokens)
    return Served(arrival, prompt, output, prefixes, None, f"trace {window['source']} (hash ids reloaded)")


def validate(
    run_dir: Path,
    calibration: Path,
    max_num_batched_tokens: int = DEFAULT_BATCHED_TOKENS,
    replicas: int = 0,
    seed: int = 0,
) -> Validation:
    """Simulate the run's requests with the calibrated model (and `replicas` perturbed replicas) and
    compare the figures."""
    run = load_run(run_dir, "--validate")
    steps = served_steps(run)
    engine = engine_of(run, max_num_batched_tokens)
    model = load_model(calibration)
    service, overheads, noise = model.service, model.overheads, model.noise
    served = served_requests(run, steps)
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


@dataclass(frozen=True)
class HarnessTimes:
    """Each simulated request's TTFT and end to end as the harness would measure them."""

    ttft_s: np.ndarray
    e2e_s: np.ndarray
    preemptions: int


def harness_times(
    served: Served,
    engine: EngineConfig,
    service: ServiceModel,
    overheads: Overheads,
    scale: np.ndarray | None = None,
) -> HarnessTimes:
    """One simulation of the served requests, latencies as the harness would measure them: the way in
    (half the TTFT overhead) before the engine, the way back after it, longer by `per_request_s` for each
    other request in flight when the request arrived, up to `max_others` (counted in the simulation, to
    its last token's way back)."""
    overhead = overheads.ttft_s
    e2e_overhead = overhead if overheads.e2e_s is None else overheads.e2e_s
    arrival = served.arrival_s + overhead / 2  # the way into the engine
    outcome = simulate_engine(
        arrival, served.prompt_tokens, served.output_tokens, 1, engine, service,
        prefixes=served.prefixes, cached_tokens=served.cached_tokens, scale=scale,
    )  # fmt: skip
    finish = (
        outcome.finish + e2e_overhead - overhead / 2
    )  # the last token's way back, measured where recorded
    others = np.arange(arrival.size) - np.searchsorted(np.sort(finish), served.arrival_s, side="right")
    crowd = overheads.per_request_s * np.clip(others, 0, overheads.max_others)
    first = outcome.first_token + overhead / 2 + crowd  # the first token's way back
    return HarnessTimes(first - served.arrival_s, finish + crowd - served.arrival_s, int(outcome.preemptions))


def simulated_figures(
    served: Served,
    engine: EngineConfig,
    service: ServiceModel,
    overheads: Overheads,
    scale: np.ndarray | None = None,
) -> dict[str, float]:
    """The figures of one simulation of the served requests (`harness_times`)."""
    times = harness_times(served, engine, service, overheads, scale)
    return {
        "ttft_p50_s": percentile(times.ttft_s, 50),
        "ttft_p95_s": percentile(times.ttft_s, 95),
        "e2e_p50_s": percentile(times.e2e_s, 50),
        "e2e_p95_s": percentile(times.e2e_s, 95),
        "throughput_rps": served.arrival_s.size / float((served.arrival_s + times.e2e_s).max()),
        "preemptions": float(times.preemptions),
    }


def run_unexplained_ttft_s(
    run_dir: Path, service: ServiceModel, overheads: Overheads
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each request's measured TTFT minus the one simulated with `overheads` (no growth with requests in
    flight), and the other requests in flight when it started; None for a run the simulator cannot
    replay (no engine limits recorded, several sessions, no successful steps)."""
    try:
        run = load_run(run_dir, "--calibrate")
        steps = served_steps(run)
        engine = engine_of(run, DEFAULT_BATCHED_TOKENS)
        served = served_requests(run, steps)
    except UserError:
        return None
    simulated = harness_times(served, engine, service, replace(overheads, per_request_s=0.0)).ttft_s
    measured = steps["ttft_ms"].to_numpy(float) / 1000.0
    return measured - simulated, steps["inflight_at_start"].to_numpy(np.int64) - 1


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
