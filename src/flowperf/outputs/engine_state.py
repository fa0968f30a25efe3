"""The engine's own state in reports: a per-server table, the burst-delivery line, and a timeline of
running/waiting requests, KV-cache usage and tokens/s aligned with the client's requests in flight
(all on the harness clock's window offsets; see telemetry/ and summary_schema.ServerState)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from flowperf.outputs import plots
from flowperf.rundir.records import EngineMetricRecord, EngineSample
from flowperf.rundir.summary_schema import RunSummary, ServerState
from flowperf.telemetry.summarize import GENERATION_TOKENS, KV_USAGE, RUNNING, WAITING

COLUMNS = (
    "server", "samples", "gaps", "running mean/max", "waiting mean/max", "KV max", "saturated",
    "preemptions", "prefix hit", "server TTFT p50/p99", "queue p50/p99", "client-server p50/p99",
)  # fmt: skip


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(first: float | None, second: float | None, digits: int = 1) -> str:
    return f"{_num(first, digits)}/{_num(second, digits)}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def state_row(state: ServerState) -> list[str]:
    saturated = (
        "-"
        if state.saturated_ms is None
        else f"{state.saturated_ms / 1000:.1f}s ({_pct(state.saturated_share)})"
    )
    return [
        state.server,
        str(state.samples),
        str(state.scrape_failures),
        _pair(state.running_mean, state.running_max),
        _pair(state.waiting_mean, state.waiting_max),
        _pct(state.kv_usage_max),
        saturated,
        _num(state.preemptions, 0),
        _pct(state.prefix_cache_hit_ratio),
        _pair(state.ttft_ms.p50, state.ttft_ms.p99),
        _pair(state.queue_ms.p50, state.queue_ms.p99),
        _pair(state.client_minus_server_ttft_p50_ms, state.client_minus_server_ttft_p99_ms),
    ]


def state_rows(summary: RunSummary) -> list[list[str]]:
    return [state_row(state) for state in summary.engine_state]


def burst_text(summary: RunSummary) -> str | None:
    """One line when any server delivered streams in bursts (see `bench doctor`)."""
    bursts = [(state.server, state.burst_steps) for state in summary.engine_state if state.burst_steps]
    if not bursts:
        return None
    listed = ", ".join(f"{count} at {server}" for server, count in bursts)
    return (
        f"{sum(count for _, count in bursts)} step(s) arrived in one burst ({listed}): their TTFT and "
        "inter-token gaps measure the front end's delivery, not the engine (bench doctor explains)"
    )


def missing_text(summary: RunSummary) -> str | None:
    missing = [
        f"{state.server}: {', '.join(state.missing_series)}"
        for state in summary.engine_state
        if state.missing_series
    ]
    return None if not missing else "series not exposed: " + "; ".join(missing)


def in_flight(steps: pd.DataFrame, times_ms: np.ndarray) -> np.ndarray:
    """Client requests in flight at each time (steps started and not yet ended), window offsets."""
    if steps.empty or "end_offset_ms" not in steps:
        return np.zeros_like(times_ms)
    starts = np.sort(steps["start_offset_ms"].to_numpy(dtype=float))
    ends = np.sort(steps["end_offset_ms"].dropna().to_numpy(dtype=float))
    return np.searchsorted(starts, times_ms, side="right") - np.searchsorted(ends, times_ms, side="right")


def timeline(records: Sequence[EngineMetricRecord], steps: pd.DataFrame) -> bytes | None:
    """Three stacked panels per run: requests (client in flight, engine running and waiting), KV-cache
    usage, generated tokens/s; x is the window offset in seconds."""
    samples = [record for record in records if isinstance(record, EngineSample)]
    if not samples:
        return None
    figure, grid_axes = plots.new_figure(3, 1, size=(9.0, 6.6))
    axes = list(np.ravel(grid_axes))
    for server in dict.fromkeys(sample.server for sample in samples):
        mine = [sample for sample in samples if sample.server == server]
        t = np.array([sample.t_ms for sample in mine]) / 1000.0
        for name, label in ((RUNNING, "running"), (WAITING, "waiting")):
            axes[0].step(
                t,
                [sample.gauges.get(name, np.nan) for sample in mine],
                where="post",
                label=f"{label} {server}",
            )
        axes[1].plot(t, [sample.gauges.get(KV_USAGE, np.nan) * 100 for sample in mine], label=server)
        rate = [
            sample.counters.get(GENERATION_TOKENS, np.nan) / (sample.interval_ms / 1000.0)
            if sample.interval_ms else np.nan
            for sample in mine
        ]  # fmt: skip
        axes[2].step(t, rate, where="pre", label=server)
    grid = np.linspace(0, max(sample.t_ms for sample in samples), 400)
    axes[0].plot(
        grid / 1000.0, in_flight(steps, grid), color="black", linewidth=0.8, label="client in flight"
    )
    for axis, label in zip(axes, ("requests", "KV cache used %", "tokens/s"), strict=True):
        axis.set_ylabel(label)
        axis.legend(fontsize=6, loc="upper right")
    axes[-1].set_xlabel("window offset (s)")
    return plots.to_png(figure)
