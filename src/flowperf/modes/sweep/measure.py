"""One sweep level: an ordinary run directory measured on the sweep's engine, and its row.

A level is a `bench run` (or, for a level the last sweep left half-done, a `bench run --resume`) through
`benchmark.prepare` / `execute` / `release` / `finalize`, with the engine kept up between levels: its own
warm-up, then an emptied prefix cache (unless --keep-prefix-cache), then its measured window. So
`bench report`, `bench compare` and `bench run --resume` work on a level as on any run.

The sweep may end a level's measured window on purpose (`LevelWatch`): at `--duration`, or when an
open-loop level is clearly saturated (`sweep_levels.saturation_reason`). No workflow starts after that;
those in flight get --grace-s to finish. A duration-limited level is `complete` (it ran what it was
asked: its duration); a saturated one `partial` (resumable), its row saying why, and the workflows that
had arrived but did not finish counted against its SLO attainment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowperf.config import RunConfig
from flowperf.engines.base import Engine
from flowperf.modes.sweep.levels import LevelRow, LevelSpec, saturation_reason
from flowperf.run.benchmark import RunHooks, execute, finalize, prepare, release
from flowperf.run.interrupts import InterruptController
from flowperf.run.runner import WindowRunner
from flowperf.rundir.records import WorkflowRecord
from flowperf.rundir.rundata import RunData, load_run
from flowperf.rundir.slo import Objective, WorkflowSamples, evaluate
from flowperf.rundir.summary import workflow_latency
from flowperf.rundir.summary_schema import RunStatus, RunSummary, ServerState

CHECK_INTERVAL_S = 1.0


@dataclass
class LevelWatch:
    """Counts a level's finished workflows and stops its measured window at --duration or saturation."""

    rate: float | None
    duration_s: float | None
    reason: str | None = None
    finished: int = 0
    failed: int = 0
    arrived: int | None = None
    _arrivals: np.ndarray | None = None
    _started: float = 0.0
    _task: asyncio.Task[None] | None = None
    _in_flight: list[int] = field(default_factory=list)

    def start(self, runner: WindowRunner, window_start: float, arrivals: np.ndarray | None) -> None:
        """Called as the measured window opens (its `window_opened`, on its event loop) with the window's
        own start and schedule: not the on_start hook's moment, before templates compiled and workers
        were told to go, which ran --duration windows short and counted arrivals before the window."""
        self._started = window_start
        self._arrivals = arrivals if self.rate is not None else None
        if self.rate is not None or self.duration_s is not None:
            self._task = asyncio.get_running_loop().create_task(self._watch(runner))

    def workflow_done(self, record: WorkflowRecord) -> None:
        self.finished += 1
        self.failed += 0 if record.ok else 1

    def _arrived_by(self, elapsed_s: float) -> int | None:
        if self._arrivals is None:
            return None
        return int(np.searchsorted(self._arrivals, elapsed_s, side="right"))

    async def _watch(self, runner: WindowRunner) -> None:
        while True:
            elapsed = time.perf_counter() - self._started
            remaining = None if self.duration_s is None else self.duration_s - elapsed
            await asyncio.sleep(CHECK_INTERVAL_S if remaining is None else min(CHECK_INTERVAL_S, remaining))
            elapsed = time.perf_counter() - self._started
            if self.duration_s is not None and elapsed >= self.duration_s:
                self._stop(runner, f"duration: --duration {self.duration_s:g} s reached", elapsed)
                return
            arrived = self._arrived_by(elapsed)
            if arrived is None or self.rate is None:
                continue
            self._in_flight.append(arrived - self.finished)
            reason = saturation_reason(self.rate, elapsed, self.finished, self._in_flight)
            if reason is not None:
                self._stop(runner, reason, elapsed)
                return

    def _stop(self, runner: WindowRunner, reason: str, elapsed_s: float) -> None:
        self.reason = reason
        self.arrived = self._arrived_by(elapsed_s)
        runner.request_stop()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def status(self, status: RunStatus, fail_fast: bool) -> RunStatus:
        """The level's run status: a stop this watch made is not a failure (unless fail-fast also
        stopped it on a failed workflow)."""
        if status != "stopped_on_failure" or self.reason is None or (fail_fast and self.failed):
            return status
        return "complete" if self.reason.startswith("duration") else "partial"


@dataclass(frozen=True)
class LevelOutcome:
    run_dir: Path
    summary: RunSummary
    session: int
    watch: LevelWatch
    wall_s: float


async def run_level(
    config: RunConfig,
    spec: LevelSpec,
    engine: Engine,
    resume: Path | None,
    duration_s: float | None,
    interrupts: InterruptController | None,
    echo: Callable[[str], None],
    workflow_done: Callable[[WorkflowRecord], None],
) -> LevelOutcome:
    """Measure one level into its run directory (new, or `resume` reopened); the engine stays up."""
    started = time.perf_counter()
    watch = LevelWatch(spec.rate, duration_s)
    holder: dict[str, Any] = {}

    def on_start(total: int, done: int) -> None:
        window = holder["run"].window
        window.window_opened = lambda start, arrivals: watch.start(window, start, arrivals)

    def on_workflow_done(record: WorkflowRecord) -> None:
        watch.workflow_done(record)
        workflow_done(record)

    hooks = RunHooks(echo=echo, warn=echo, on_start=on_start, on_workflow_done=on_workflow_done)
    run = holder["run"] = prepare(config, hooks, resume, engine, interrupts)
    try:
        status = await execute(run, interrupts)
    finally:
        watch.cancel()
        await release(run, interrupts, shutdown_engine=False)
    result = finalize(run, watch.status(status, config.fail_fast), interrupts)
    return LevelOutcome(
        result.run_dir, result.summary, run.opened.session, watch, time.perf_counter() - started
    )


def workflow_samples(run: RunData) -> list[WorkflowSamples]:
    """Every counted workflow of a level as the objectives see it: its latency (from arrival in open
    loop) and its LLM steps' TTFT, step time, TPOT and inter-token gaps."""
    if run.workflows.empty:
        return []
    latency = workflow_latency(run.workflows)
    steps = run.ok_steps
    if not steps.empty:
        steps = steps[steps["kind"].fillna("llm") == "llm"]
    by_flow = {index: group for index, group in steps.groupby("flow_index")} if not steps.empty else {}
    samples = []
    for position, row in enumerate(run.workflows.itertuples(index=False)):
        own = by_flow.get(row.flow_index)
        samples.append(
            WorkflowSamples(
                ok=row.status == "ok",
                samples={key: [float(latency.iloc[position])] for key in ("workflow", "session")}
                | step_samples(own),
            )
        )
    return samples


def step_samples(steps: pd.DataFrame | None) -> dict[str, list[float]]:
    if steps is None or steps.empty:
        return {}
    values = {name: steps[f"{name}_ms"].dropna().tolist() for name in ("ttft", "step", "tpot")}
    values["itl"] = [float(gap) for gaps in steps["itl_ms"] for gap in gaps]
    return values


def level_row(
    index: int,
    spec: LevelSpec,
    outcome: LevelOutcome,
    objectives: Sequence[Objective],
    target: float,
) -> LevelRow:
    """The level's row, computed from its run directory (all its sessions)."""
    run = load_run(outcome.run_dir)
    summary = outcome.summary
    window_s = summary.timing.measured_window_ms / 1000.0
    done = summary.counts.workflows_done
    abandoned = 0
    if outcome.watch.arrived is not None and not run.workflows.empty:
        in_session = int((run.workflows["session"] == outcome.session).sum())
        abandoned = max(0, outcome.watch.arrived - in_session)
    figures: dict[str, Any] = {}
    if objectives:
        figures = slo_figures(objectives, workflow_samples(run), window_s, abandoned, target)
    latency, ttft = summary.latency.workflow_latency_ms, summary.latency.ttft_ms
    return LevelRow(
        index=index, name=outcome.run_dir.name, role=spec.role, mode=spec.mode, concurrency=spec.concurrency,
        rate=spec.rate, status=summary.status, workflows=done, ok=summary.counts.workflows_ok,
        failed=summary.counts.workflows_failed, abandoned=abandoned, window_s=window_s,
        wall_s=round(outcome.wall_s, 3), achieved_per_s=done / window_s if window_s > 0 else None,
        latency_p50_ms=latency.p50, latency_p95_ms=latency.p95, ttft_p50_ms=ttft.p50, ttft_p95_ms=ttft.p95,
        stopped_early=outcome.watch.reason, finished_at=dt.datetime.now(dt.UTC).isoformat(), **figures,
        **engine_figures(summary.engine_state),
    )  # fmt: skip


def engine_figures(servers: Sequence[ServerState]) -> dict[str, float | None]:
    """What filled up at this level, from the engines' own metrics (summary.engine_state): requests
    waiting (summed over servers: the deployment's queue; the max is the sum of each server's max, an
    upper bound), the fullest KV cache, and preemptions; None where no server said."""

    def values(field: str) -> list[float]:
        return [value for server in servers if (value := getattr(server, field)) is not None]

    def total(field: str) -> float | None:
        found = values(field)
        return float(sum(found)) if found else None

    usage = values("kv_usage_max")
    return {
        "engine_waiting_mean": total("waiting_mean"),
        "engine_waiting_max": total("waiting_max"),
        "engine_kv_usage_max": max(usage) if usage else None,
        "engine_preemptions": total("preemptions"),
    }


def slo_figures(
    objectives: Sequence[Objective],
    samples: list[WorkflowSamples],
    window_s: float,
    abandoned: int,
    target: float,
) -> dict[str, Any]:
    result = evaluate(objectives, samples, window_s, unfinished=abandoned)
    failing = result.failing_objective
    missed = {item.name: item.missed for item in result.objectives}
    return {
        "attainment": result.attainment,
        "goodput_per_s": result.goodput_per_s,
        "failing_objective": failing,
        "failing_share": missed[failing] / result.workflows if failing and result.workflows else None,
        "meets_target": None if result.attainment is None else result.attainment >= target,
        "objectives": {
            item.name: {
                "missed": item.missed,
                "level_value_ms": item.level_value_ms,
                "level_met": item.level_met,
            }
            for item in result.objectives
        },
    }
