"""A measured run as the simulator replays it: the requests it served, the engine limits it ran under,
and the times the harness would have measured for one simulation of them, with a calibration's harness
overheads. Calibration replays its own runs through the model it fitted (to find what the harness adds
with company beyond the simulation) and validation replays the run it checks, so both take this one
reading of a run."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from flowperf.errors import UserError
from flowperf.rundir.rundata import RunData, load_run
from flowperf.stats import percentile
from flowperf.stress.engine import EngineConfig, Prefixes, simulate_engine
from flowperf.stress.service import ServiceModel
from flowperf.stress.traces import load_trace

BUDGET_IN_LOG = re.compile(r"max_num_batched_tokens=(\d+)")


def run_batched_tokens(run_dir: Path) -> int | None:
    """The run's `max_num_batched_tokens`: the engine argument flowperf passed, else the figure vLLM logged
    at start-up (engine.log), else None (unknown: a bare steps.jsonl, or a remote server)."""
    config_path = Path(run_dir) / "config.json"
    if config_path.is_file():
        recorded = json.loads(config_path.read_text(encoding="utf-8")).get("config") or {}
        extra = (recorded.get("engine") or {}).get("extra_engine_args") or {}
        if extra.get("max_num_batched_tokens"):
            return int(extra["max_num_batched_tokens"])
    log = Path(run_dir) / "engine.log"
    if log.is_file():
        found = BUDGET_IN_LOG.search(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class Served:
    """The requests a run served, as the simulator takes them (arrivals in s from the first)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefixes: Prefixes | None
    cached_tokens: np.ndarray | None
    source: str


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


@dataclass(frozen=True)
class Replay:
    """A run read for the simulator: its successful steps in submission order, the engine limits it ran
    under and the requests it served."""

    steps: pd.DataFrame
    engine: EngineConfig
    served: Served


def read_replay(run_dir: Path, flag: str, max_num_batched_tokens: int = DEFAULT_BATCHED_TOKENS) -> Replay:
    """The run directory as the simulator replays it; a UserError (naming `flag`) if it cannot be."""
    run = load_run(run_dir, flag)
    steps = served_steps(run)
    return Replay(steps, engine_of(run, max_num_batched_tokens), served_requests(run, steps))


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
        replay = read_replay(run_dir, "--calibrate")
    except UserError:
        return None
    simulated = harness_times(
        replay.served, replay.engine, service, replace(overheads, per_request_s=0.0)
    ).ttft_s
    measured = replay.steps["ttft_ms"].to_numpy(float) / 1000.0
    return measured - simulated, replay.steps["inflight_at_start"].to_numpy(np.int64) - 1
