"""`bench stress --sessions TRACE`: the I/O edge of the session simulator (read the trace and the model,
shape the load, write `sessions.json`, print the figures); every decision lives in sessions/session_plan.

The load: the trace's own session starts by default; `--session-rate R` starts its sessions (or
`--num-sessions` drawn from them) as a Poisson process; `--concurrency N` keeps N in flight, over
`--num-sessions` sessions (default: the trace's, at least 3 N so the loop reaches a steady state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from flowperf.errors import UserError
from flowperf.outputs.tables import TableSpec, print_table
from flowperf.sessions.format import read_trace
from flowperf.stress.config import StressConfig
from flowperf.stress.engine import EngineConfig
from flowperf.stress.noise import NoiseModel
from flowperf.stress.service import ServiceModel
from flowperf.stress.session_plan import Load, Slo, find_gpus, session_bands
from flowperf.stress.sessions import at_rate, repeat_sessions, workload_from_trace

console = Console()


def model_of(config: StressConfig) -> tuple[ServiceModel, NoiseModel | None]:
    """The price of an iteration and its noise: fitted from `--calibrate`, read from `--calibration`, else
    the illustrative defaults with no noise."""
    if config.calibrate:
        from flowperf.stress.calibrate import calibrate

        fitted = calibrate(config.calibrate)
        return fitted.service, fitted.noise
    if config.calibration is not None:
        from flowperf.stress.validate import load_model

        model = load_model(config.calibration)
        return model.service, model.noise
    return ServiceModel(), None


def load_of(config: StressConfig) -> Load:
    assert config.sessions is not None
    trace = read_trace(Path(config.sessions))
    workload = workload_from_trace(trace)
    rng = np.random.default_rng(config.seed)
    count = config.num_sessions or max(workload.sessions, 3 * (config.concurrency or 0))
    if count != workload.sessions:
        workload = repeat_sessions(workload, count, rng)
    if config.session_rate is not None:
        workload = at_rate(workload, config.session_rate, rng)
    service, noise = model_of(config)
    engine = EngineConfig(
        max_num_seqs=config.batch_size,
        max_num_batched_tokens=config.max_num_batched_tokens,
        kv_cache_tokens=config.kv_cache_tokens,
        block_size=config.block_size,
        prefix_caching=config.prefix_caching,
    )
    return Load(
        workload,
        engine,
        service,
        noise,
        config.routing,
        config.concurrency or 0,
        config.replica_count(),
        config.seed,
    )


def run_sessions(config: StressConfig) -> dict[str, Any]:
    """Simulate the sessions on `--gpus` GPUs, or (--find-gpus) find the GPU count for `--slo`; writes
    `sessions.json` under `--out` and prints the figures."""
    load = load_of(config)
    try:
        if config.find_gpus:
            result = find_gpus(load, Slo.parse(config.slo or ""), config.max_gpus)
        else:
            result = session_bands(load, config.gpus)
    except ValueError as error:
        raise UserError(f"--sessions: {config.sessions}: {error}") from None
    document = {
        "trace": str(config.sessions),
        "routing": config.routing,
        "service": load.service.model_dump(),
        "noise": load.noise is not None,
        "result": result,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "sessions.json").write_text(json.dumps(document, indent=2, default=float), encoding="utf-8")
    _print(result, config)
    return document


def _print(result: dict[str, Any], config: StressConfig) -> None:
    if config.json_output:
        print(json.dumps(result, indent=2, default=float))
        return
    rows = result.get("evaluated", [result])
    names = ("session_p50_s", "session_p95_s", "ttft_p95_s", "cache_hit", "kv_utilisation", "preemptions")
    table_rows = [
        (
            str(row["n_gpus"]),
            str(row["expected"]["sessions_completed"]),
            *(_cell(row, name) for name in names),
        )
        for row in rows
    ]
    header = ("GPUs", "done", "session p50 s", "session p95 s", "TTFT p95 s", "cache hit", "KV", "preempt")
    title = f"Sessions of {config.sessions} ({config.routing} routing)"
    print_table(console, TableSpec(title, header, table_rows))
    if "gpus" in result:
        gpus = result["gpus"]
        console.print(
            f"GPUs for {result['slo']['name']} <= {result['slo']['limit_ms']:g} ms: [bold]{gpus['sure']}[/] "
            f"in 95% of replicas, {gpus['median']} in the median, {gpus['optimistic']} in 5% "
            "(None: more than --max-gpus)"
        )
    console.print(f"written to {config.out / 'sessions.json'}")


def _cell(row: dict[str, Any], name: str) -> str:
    """The replicas' median and the 5-95% band's half-width (in full in sessions.json), else the
    expected value."""
    if name in row["bands"]:
        b = row["bands"][name]
        half = (b["p95"] - b["p5"]) / 2
        return f"{b['median']:.3g} ±{half:.2g}" if half > 0 else f"{b['median']:.3g}"
    return f"{row['expected'][name]:.3g}"
