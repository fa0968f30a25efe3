"""summary.json: the run's statistics, computed from what the run directory holds.

Computing from the files (never from in-memory state) means a summary written mid-run, at the end, or
after any number of crashes and resumes counts exactly the workflows the directory records: a workflow
counts once it has its row, steps count only as part of a counted workflow, and the measured window is
the sum of each session's window (a session is one `bench run` or `--resume` of the directory).

Run-wide step figures count LLM steps only (a tool or think step is a pause, not a request); a step
without a kind (schema 1 and 2) is an LLM step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flowperf.rundir.records import (
    RUN_SCHEMA_VERSION,
    EngineMetricRecord,
    GpuInfoRecord,
    MetricRecord,
    MonitorErrorRecord,
    PhaseRecord,
    ResourceSample,
)
from flowperf.rundir.rundata import read_tables
from flowperf.rundir.session_summary import is_session_replay, session_results
from flowperf.rundir.store import RunStore
from flowperf.rundir.summary_schema import (
    AchievedConcurrency,
    CachePosition,
    Counts,
    DepthGroup,
    Distribution,
    GpusUnavailable,
    GpuUse,
    Load,
    PhaseTotal,
    PromptLengthGroup,
    Resources,
    RunInfo,
    RunLatencies,
    RunStatus,
    RunSummary,
    SessionResults,
    StepIdLatencies,
    Throughput,
    Timings,
    WorkflowBreakdown,
)
from flowperf.stats import describe, pooled_gaps, tokens_per_s
from flowperf.telemetry.summarize import engine_state

MetricRecords = list[MetricRecord]
MIN_STEPS_FOR_LEAK_FIT = 100
MIN_SAMPLES_FOR_LEAK_FIT = 8
CONCURRENCY_SERIES_POINTS = 100
SMALLEST_PROMPT_BUCKET = 256


@dataclass
class SummaryContext:
    """What a summary needs beyond the run directory's records: known only to the process running it
    (a report recomputing a summary takes these from the saved one)."""

    planned_workflows: int
    run: RunInfo
    timings: Timings = field(default_factory=Timings)
    engine: dict[str, Any] | None = None


def distribution(samples: Any) -> Distribution:
    return Distribution(**describe(samples))


def measured_window_ms(workflows: pd.DataFrame) -> float:
    """Sum over sessions of the time from a session's start to its last finished workflow."""
    if workflows.empty:
        return 0.0
    return float(workflows.groupby("session")["end_offset_ms"].max().sum())


def _itl_samples(steps: pd.DataFrame) -> np.ndarray:
    if "itl_ms" not in steps or steps.empty:
        return np.array([])
    return pooled_gaps(steps["itl_ms"])


def _latencies(steps: pd.DataFrame) -> dict[str, Distribution]:
    columns = ("step_ms", "ttft_ms", "tpot_ms")
    block = {name: distribution(steps[name].dropna() if name in steps else []) for name in columns}
    return block | {"itl_ms": distribution(_itl_samples(steps))}


def ttft_beyond_engine(steps: pd.DataFrame) -> pd.Series:
    """Client TTFT minus the engine's, where both exist: durations, so their clocks need not agree."""
    if steps.empty:
        return pd.Series(dtype=float)
    return (steps["ttft_ms"] - steps["engine_ttft_ms"]).dropna()


def connect_waits(steps: pd.DataFrame) -> pd.Series:
    """Each step's wait for a client connection (NaN where none was measured: in-process)."""
    if steps.empty or "connect_wait_ms" not in steps:
        return pd.Series(dtype=float)
    return steps["connect_wait_ms"]


def llm_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """The LLM steps of a table: kind llm, or no kind at all (schema 1 and 2 recorded LLM steps only)."""
    if steps.empty or "kind" not in steps:
        return steps
    return steps[steps["kind"].fillna("llm") == "llm"]


def _step_kind(group: pd.DataFrame) -> str:
    return str(group["kind"].fillna("llm").iloc[0])


def _by_step(ok_steps: pd.DataFrame) -> dict[str, StepIdLatencies]:
    """Per step id, every kind: a tool or think step's step_ms is its duration, and it has no output rate."""
    by_step: dict[str, StepIdLatencies] = {}
    if ok_steps.empty:
        return by_step
    for step_id, group in ok_steps.groupby("step_id", sort=False):
        kind = _step_kind(group)
        step_ms = group["step_ms"].sum()
        rate = (
            float(tokens_per_s(group["output_tokens"].sum(), step_ms)) if step_ms and kind == "llm" else None
        )
        by_step[str(step_id)] = StepIdLatencies(
            **_latencies(group), kind=kind, request_output_tokens_per_s=rate
        )
    return by_step


def _turn_group(group: pd.DataFrame) -> dict[str, Any]:
    """The TurnGroup figures of some ok LLM steps; the cache ratio is over tokens, not a mean of ratios."""
    prompt = float(group["prompt_tokens"].sum())
    cached = float(group["cached_prompt_tokens"].fillna(0).sum())
    return {
        "steps": len(group),
        "prompt_tokens_mean": float(group["prompt_tokens"].mean())
        if group["prompt_tokens"].notna().any()
        else None,
        "cached_prompt_ratio": cached / prompt if prompt else None,
        "ttft_ms": distribution(group["ttft_ms"]),
        "tpot_ms": distribution(group["tpot_ms"]),
    }


def by_depth(ok_llm: pd.DataFrame) -> list[DepthGroup]:
    """Ok LLM steps grouped by turn depth, shallowest first (none where no step records its depth)."""
    known = ok_llm.dropna(subset=["depth"]) if not ok_llm.empty else ok_llm
    if known.empty:
        return []
    return [
        DepthGroup(depth=int(depth), **_turn_group(group))
        for depth, group in known.groupby(known["depth"].astype(int), sort=True)
    ]


def prompt_bucket(prompt_tokens: int) -> tuple[int, int]:
    """The power-of-two bucket [from, below) of a prompt length: [0, 256), [256, 512), [512, 1024), ..."""
    if prompt_tokens < SMALLEST_PROMPT_BUCKET:
        return 0, SMALLEST_PROMPT_BUCKET
    low = 1 << (int(prompt_tokens).bit_length() - 1)
    return low, 2 * low


def by_prompt_length(ok_llm: pd.DataFrame) -> list[PromptLengthGroup]:
    """Ok LLM steps grouped by prompt-length bucket, shortest first."""
    known = ok_llm.dropna(subset=["prompt_tokens"]) if not ok_llm.empty else ok_llm
    if known.empty:
        return []
    lows = known["prompt_tokens"].astype(int).map(lambda tokens: prompt_bucket(tokens)[0])
    groups: list[PromptLengthGroup] = []
    for low, group in known.groupby(lows, sort=True):
        bucket = prompt_bucket(int(low))
        groups.append(
            PromptLengthGroup(
                prompt_tokens_from=bucket[0], prompt_tokens_below=bucket[1], **_turn_group(group)
            )
        )
    return groups


def workflow_breakdown(ok_workflows: pd.DataFrame) -> WorkflowBreakdown | None:
    """Where ok workflows' time went (schema 3 on; None where no row has a critical path)."""
    if ok_workflows.empty:
        return None
    known = ok_workflows.dropna(subset=["critical_path_ms"])
    if known.empty:
        return None
    arrived = known.dropna(subset=["arrival_offset_ms"])
    return WorkflowBreakdown(
        workflows=len(known),
        makespan_ms=distribution(known["workflow_ms"]),
        critical_path_ms=distribution(known["critical_path_ms"]),
        llm_ms=distribution(known["llm_ms"]),
        tool_ms=distribution(known["tool_ms"]),
        engine_queue_ms=distribution(known["engine_queue_ms"]),
        scheduling_gap_ms=distribution(known["workflow_ms"] - known["critical_path_ms"]),
        slot_wait_ms=distribution(start_delay(arrived)) if not arrived.empty else None,
    )


def _cache_by_position(ok_steps: pd.DataFrame) -> list[CachePosition]:
    rows = []
    if ok_steps.empty:
        return rows
    for (position, step_id), group in ok_steps.groupby(["step_index", "step_id"], sort=True):
        prompt = int(group["prompt_tokens"].sum())
        cached = int(group["cached_prompt_tokens"].fillna(0).sum())
        rows.append(
            CachePosition(
                step_index=int(position),
                step_id=str(step_id),
                prompt_tokens=prompt,
                cached_prompt_tokens=cached,
                hit_ratio=cached / prompt if prompt else None,
            )
        )
    return rows


def achieved_concurrency(
    starts: np.ndarray,
    ends: np.ndarray,
    points: int = CONCURRENCY_SERIES_POINTS,
    window_ms: float | None = None,
) -> AchievedConcurrency:
    """Intervals (workflows, requests) in flight over one session's window, which starts at offset 0 and
    ends at `window_ms` (default: the last end): time-weighted mean, peak, and a series sampled at
    `points` evenly spaced instants. Given the same window, two series share their instants."""
    if len(starts) == 0:
        return AchievedConcurrency()
    window = float(ends.max()) if window_ms is None else window_ms
    times = np.concatenate([starts, ends])
    changes = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.lexsort((changes, times))  # at equal times, a finish is counted before a start
    running = np.cumsum(changes[order])
    instants = np.linspace(0.0, window, points)
    index = np.searchsorted(times[order], instants, side="right") - 1
    in_flight = np.where(index >= 0, running[np.clip(index, 0, None)], 0)
    return AchievedConcurrency(
        mean=float((ends - starts).sum() / window) if window > 0 else None,
        max=int(running.max()),
        series=[(round(float(t), 1), int(n)) for t, n in zip(instants, in_flight, strict=True)],
    )


def workflow_latency(workflows: pd.DataFrame) -> pd.Series:
    """`WorkflowRecord.latency_ms` over a table: from scheduled arrival in open loop, else workflow_ms."""
    return (workflows["end_offset_ms"] - workflows["arrival_offset_ms"]).fillna(workflows["workflow_ms"])


def start_delay(workflows: pd.DataFrame) -> pd.Series:
    """`WorkflowRecord.start_delay_ms` over a table: arrival to start in open loop, NaN closed loop."""
    return workflows["start_offset_ms"] - workflows["arrival_offset_ms"]


def step_ends(steps: pd.DataFrame) -> pd.Series:
    """Each step's end offset; schema 1 and 2 did not record it, so there it is start + step_ms."""
    return steps["end_offset_ms"].fillna(steps["start_offset_ms"] + steps["step_ms"])


def request_concurrency(steps: pd.DataFrame, session: int, window_ms: float) -> AchievedConcurrency:
    """LLM requests in flight in `session` over its window (tool and think pauses hold no request)."""
    requests = llm_steps(steps)
    requests = requests[requests["session"] == session] if not requests.empty else requests
    if requests.empty:
        return AchievedConcurrency()
    return achieved_concurrency(
        requests["start_offset_ms"].to_numpy(float), step_ends(requests).to_numpy(float), window_ms=window_ms
    )


def load_summary(workflows: pd.DataFrame, steps: pd.DataFrame) -> Load:
    """How much load the run really applied: sessions and LLM requests in flight side by side (over the
    busiest session), and for open loop the wait from a workflow's scheduled arrival to its start
    (non-zero only when a --concurrency cap held it back)."""
    if workflows.empty:
        return Load()
    busiest = workflows["session"].value_counts().idxmax()
    session = workflows[workflows["session"] == busiest]
    arrived = session.dropna(subset=["arrival_offset_ms"])
    window_ms = float(session["end_offset_ms"].max())
    return Load(
        achieved_concurrency=achieved_concurrency(
            session["start_offset_ms"].to_numpy(float),
            session["end_offset_ms"].to_numpy(float),
            window_ms=window_ms,
        ),
        request_concurrency=request_concurrency(steps, int(busiest), window_ms),
        start_delay_ms=distribution(start_delay(arrived)) if not arrived.empty else None,
    )


def _peak(values: list[float]) -> float | None:
    return max(values) if values else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def growth_per_100_steps(steps: list[float], rss: list[float]) -> float | None:
    """Least-squares slope of RSS (MB) against steps done, per 100 steps; None without enough spread."""
    if len(steps) < MIN_SAMPLES_FOR_LEAK_FIT or max(steps) - min(steps) < MIN_STEPS_FOR_LEAK_FIT:
        return None
    slope, _ = np.polyfit(np.asarray(steps, dtype=float), np.asarray(rss, dtype=float), 1)
    return float(slope * 100.0)


def _gpu_use(records: MetricRecords, samples: list[ResourceSample]) -> dict[str, GpuUse] | GpusUnavailable:
    gpu_info = [r for r in records if isinstance(r, GpuInfoRecord)]
    if not any(info.available for info in gpu_info):
        reasons = sorted({info.reason for info in gpu_info if info.reason})
        return GpusUnavailable(reason="; ".join(reasons) or "not sampled")
    per_device: dict[int, list[Any]] = {}
    for sample in samples:
        for device in sample.gpus or []:
            per_device.setdefault(device.index, []).append(device)
    return {
        str(index): GpuUse(
            util_percent_mean=_mean([d.util_percent for d in values]),
            util_percent_peak=_peak([d.util_percent for d in values]),
            mem_used_mb_mean=_mean([d.mem_used_mb for d in values]),
            mem_used_mb_peak=_peak([d.mem_used_mb for d in values]),
        )
        for index, values in sorted(per_device.items())
    }


def _longest_measuring_session(samples: list[ResourceSample]) -> list[ResourceSample]:
    """The samples, taken while steps were being done, of the session with most of them: the leak fit
    needs one session's steps-done counter, which restarts with each resume."""
    by_session: dict[int, list[ResourceSample]] = {}
    for sample in samples:
        if sample.steps_done > 0:
            by_session.setdefault(sample.session, []).append(sample)
    return max(by_session.values(), key=len, default=[])


def resource_summary(records: MetricRecords) -> Resources:
    """Peaks, means, GPU use and the RSS leak slope from the monitor's records (all sessions)."""
    samples = [r for r in records if isinstance(r, ResourceSample)]
    engine = [r.children_rss_mb for r in samples if r.children_rss_mb is not None]
    longest = _longest_measuring_session(samples)
    steps = [float(s.steps_done) for s in longest]
    return Resources(
        samples=len(samples),
        monitor_cpu_ms=round(sum(r.sample_cpu_ms for r in samples), 3),
        peak_rss_mb=_peak([r.rss_mb for r in samples]),
        peak_engine_rss_mb=_peak(engine),
        peak_total_rss_mb=_peak([r.rss_mb + (r.children_rss_mb or 0.0) for r in samples]),
        cpu_percent_mean=_mean([r.cpu_percent for r in samples]),
        engine_cpu_percent_mean=_mean(
            [r.children_cpu_percent for r in samples if r.children_cpu_percent is not None]
        ),
        rss_growth_mb_per_100_steps=growth_per_100_steps(steps, [s.rss_mb for s in longest]),
        engine_rss_growth_mb_per_100_steps=growth_per_100_steps(
            steps, [s.children_rss_mb or 0.0 for s in longest]
        ),
        gpus=_gpu_use(records, samples),
        phases_ms=_phase_totals(records),
        monitor_errors=[r.error for r in records if isinstance(r, MonitorErrorRecord)],
    )


def leak_warning(resources: Resources, threshold_mb: float) -> str | None:
    """A warning when the harness's RSS grew faster than `threshold_mb` per 100 steps, else None."""
    slope = resources.rss_growth_mb_per_100_steps
    if slope is None or slope <= threshold_mb:
        return None
    return (
        f"harness RSS grew {slope:.2f} MB per 100 steps over the run "
        f"(--leak-threshold-mb {threshold_mb:g}): a possible leak"
    )


def _phase_totals(records: MetricRecords) -> dict[str, PhaseTotal]:
    totals: dict[str, list[float]] = {}
    for record in records:
        if isinstance(record, PhaseRecord):
            totals.setdefault(record.name, []).append(record.duration_ms)
    return {
        name: PhaseTotal(count=len(values), total_ms=sum(values), mean_ms=sum(values) / len(values))
        for name, values in totals.items()
    }


def build_summary(store: RunStore, status: RunStatus, context: SummaryContext) -> RunSummary:
    """The summary of the run directory behind `store`."""
    workflows, steps = read_tables(store)
    return summarize_run(
        workflows, steps, store.read_metrics(), status, context, engine_records=store.read_engine_metrics()
    )


def summarize_run(
    workflows: pd.DataFrame,
    steps: pd.DataFrame,
    metrics: MetricRecords,
    status: RunStatus,
    context: SummaryContext,
    engine_records: list[EngineMetricRecord] | None = None,
) -> RunSummary:
    """The summary from a run directory's tables (counted workflows and their steps) and, where given,
    the engines' own metrics (engine_metrics.jsonl)."""
    ok_workflows = workflows[workflows["status"] == "ok"] if not workflows.empty else workflows
    ok_steps = steps[steps["status"] == "ok"] if not steps.empty else steps
    ok_llm = llm_steps(ok_steps)
    failed = workflows[workflows["status"] != "ok"] if not workflows.empty else workflows
    window_ms = measured_window_ms(workflows)
    return RunSummary(
        schema_version=RUN_SCHEMA_VERSION,
        status=status,
        run=context.run,
        engine=context.engine,
        counts=Counts(
            workflows_planned=context.planned_workflows,
            workflows_done=len(workflows),
            workflows_ok=len(ok_workflows),
            workflows_failed=len(failed),
            failures_by_type=dict(Counter(failed["error_type"])) if not failed.empty else {},
            steps_done=len(steps),
            steps_ok=len(ok_steps),
            sessions=int(workflows["session"].nunique()) if not workflows.empty else 0,
        ),
        timing=context.timings.model_copy(update={"measured_window_ms": window_ms}),
        latency=RunLatencies(
            workflow_ms=distribution(ok_workflows["workflow_ms"] if not ok_workflows.empty else []),
            workflow_latency_ms=distribution(
                workflow_latency(ok_workflows) if not ok_workflows.empty else []
            ),
            ttft_beyond_engine_ms=distribution(ttft_beyond_engine(ok_llm)),
            connect_wait_ms=distribution(connect_waits(ok_llm)),
            **_latencies(ok_llm if not ok_llm.empty else pd.DataFrame()),
        ),
        latency_by_step=_by_step(ok_steps),
        throughput=_throughput(ok_llm, len(ok_workflows), window_ms / 1000.0),
        prefix_cache=_cache_by_position(ok_llm),
        turns=by_depth(ok_llm),
        by_prompt_length=by_prompt_length(ok_llm),
        workflow_breakdown=workflow_breakdown(ok_workflows),
        load=load_summary(workflows, steps),
        resources=resource_summary(metrics),
        sessions=sessions_summary(workflows, ok_llm, window_ms / 1000.0, context.run.slo),
        engine_state=engine_state(engine_records or [], ok_llm),
    )


def sessions_summary(
    workflows: pd.DataFrame, ok_llm: pd.DataFrame, window_s: float, slo: str | None
) -> SessionResults | None:
    """Job-level results where the run replayed a session trace; None for any other run."""
    if workflows.empty or not is_session_replay(ok_llm):
        return None
    return session_results(workflows, workflow_latency(workflows), ok_llm, window_s, slo, _turn_group)


def _throughput(ok_llm: pd.DataFrame, ok_workflows: int, window_s: float) -> Throughput:
    output_tokens = int(ok_llm["output_tokens"].sum()) if not ok_llm.empty else 0
    if window_s <= 0:
        return Throughput(output_tokens=output_tokens)
    return Throughput(
        output_tokens=output_tokens,
        output_tokens_per_s=tokens_per_s(output_tokens, window_s * 1000.0),
        steps_per_s=len(ok_llm) / window_s,
        workflows_per_s=ok_workflows / window_s,
    )
