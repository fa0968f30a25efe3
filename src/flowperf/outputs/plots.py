"""The report's plots, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes tables from a run directory and returns one figure, or None when the run holds no data
for it (a report never shows an empty chart as if it were a measurement).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flowperf.run.critical_path import critical_path
from flowperf.rundir.records import MetricRecord, ResourceSample, StepRecord
from flowperf.rundir.summary_schema import CachePosition, DepthGroup, PromptLengthGroup

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
KIND_COLOURS = {"llm": COLOURS[0], "tool": COLOURS[1], "think": COLOURS[2]}
LABELLED_BAR_SHARE = 0.07  # a bar gets its step's name when it spans this share of the makespan


def new_figure(rows: int = 1, columns: int = 1, size: tuple[float, float] = (9.0, 3.6)) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    return figure, axes


def to_png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _cdf(axis: Any, values: np.ndarray, label: str, colour: str) -> None:
    ordered = np.sort(values)
    axis.plot(
        ordered,
        np.arange(1, len(ordered) + 1) / len(ordered),
        label=label,
        color=colour,
        drawstyle="steps-post",
    )


def distribution(samples: dict[str, np.ndarray], title: str, unit: str = "ms") -> bytes | None:
    """Histogram and CDF side by side; several labelled sample sets are overlaid (e.g. base vs new)."""
    present = {label: values for label, values in samples.items() if len(values)}
    if not present:
        return None
    figure, axes = new_figure(1, 2)
    edges = np.histogram_bin_edges(np.concatenate(list(present.values())), bins=30)
    for (label, values), colour in zip(present.items(), COLOURS, strict=False):
        axes[0][0].hist(values, bins=edges, alpha=0.55, label=label, color=colour)
        _cdf(axes[0][1], values, label, colour)
    axes[0][0].set(title=f"{title}: histogram", xlabel=unit, ylabel="count")
    axes[0][1].set(title=f"{title}: CDF", xlabel=unit, ylabel="fraction ≤ x", ylim=(0, 1.02))
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        if len(present) > 1:
            axis.legend()
    return to_png(figure)


def step_boxplots(steps: pd.DataFrame, metric: str = "step_ms") -> bytes | None:
    if steps.empty or metric not in steps:
        return None
    groups = [
        (step_id, group[metric].dropna().to_numpy())
        for step_id, group in steps.groupby("step_id", sort=False)
    ]
    groups = [(step_id, values) for step_id, values in groups if len(values)]
    if not groups:
        return None
    figure, axes = new_figure()
    axis = axes[0][0]
    axis.boxplot([values for _, values in groups], showfliers=True)
    axis.set_xticks(range(1, len(groups) + 1), [step_id for step_id, _ in groups])
    axis.set(title=f"{metric} by step", ylabel="ms")
    axis.grid(alpha=0.3, axis="y")
    return to_png(figure)


def gantt(workflows: pd.DataFrame, steps: pd.DataFrame) -> bytes | None:
    """Each workflow a row, each step a bar from its start to its end: concurrency at a glance."""
    if workflows.empty or steps.empty:
        return None
    session = workflows["session"].value_counts().idxmax()
    shown = steps[steps["session"] == session]
    order = {index: row for row, index in enumerate(sorted(shown["flow_index"].unique()))}
    step_ids = list(dict.fromkeys(shown.sort_values("step_index")["step_id"]))
    height = min(12.0, 1.5 + 0.12 * len(order))
    figure, axes = new_figure(size=(9.0, height))
    axis = axes[0][0]
    for step_id, colour in zip(step_ids, COLOURS, strict=False):
        part = shown[shown["step_id"] == step_id]
        rows = [order[index] for index in part["flow_index"]]
        axis.barh(
            rows, part["step_ms"], left=part["start_offset_ms"], color=colour, label=step_id, height=0.8
        )
    axis.set(title="timeline: workflows (rows) and their steps", xlabel="ms since the measured window began")
    axis.set_ylabel("workflow")
    axis.invert_yaxis()
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3, axis="x")
    return to_png(figure)


def _busiest_session(samples: list[ResourceSample]) -> list[ResourceSample]:
    """The samples of the session with most of them: sessions' clocks restart, so one is plotted."""
    counts = Counter(sample.session for sample in samples)
    session = counts.most_common(1)[0][0]
    return [sample for sample in samples if sample.session == session]


def _plot_gpus(axis: Any, times: list[float], samples: list[ResourceSample]) -> None:
    for index in sorted({device.index for sample in samples for device in sample.gpus or []}):
        devices = [next(d for d in sample.gpus or [] if d.index == index) for sample in samples]
        used = np.asarray([device.mem_used_mb for device in devices])
        axis.plot(times, [device.util_percent for device in devices], label=f"GPU {index} util %")
        axis.plot(
            times, used / max(used.max(), 1.0) * 100.0, linestyle="--", label=f"GPU {index} mem % of peak"
        )
    axis.set(title="GPU", xlabel="s", ylabel="%")


def resources(metrics: Sequence[MetricRecord]) -> bytes | None:
    samples = [record for record in metrics if isinstance(record, ResourceSample)]
    if not samples:
        return None
    samples = _busiest_session(samples)
    gpus = any(sample.gpus for sample in samples)
    figure, axes = new_figure(1, 3 if gpus else 2, size=(12.0 if gpus else 9.0, 3.4))
    times = [s.t_s for s in samples]
    memory, cpu = axes[0][0], axes[0][1]
    memory.plot(times, [s.rss_mb for s in samples], label="harness")
    memory.plot(times, [s.children_rss_mb or 0.0 for s in samples], label="engine processes")
    memory.set(title="RSS", xlabel="s", ylabel="MB")
    cpu.plot(times, [s.cpu_percent for s in samples], label="harness")
    cpu.plot(times, [s.children_cpu_percent or 0.0 for s in samples], label="engine processes")
    cpu.set(title="CPU", xlabel="s", ylabel="% of one core")
    if gpus:
        _plot_gpus(axes[0][2], times, samples)
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.legend()
    return to_png(figure)


def cache_hits(prefix_cache: Sequence[CachePosition]) -> bytes | None:
    rows = [row for row in prefix_cache if row.hit_ratio is not None]
    if not rows:
        return None
    figure, axes = new_figure(size=(7.0, 3.2))
    axis = axes[0][0]
    labels = [f"{row.step_index + 1}: {row.step_id}" for row in rows]
    axis.bar(labels, [(row.hit_ratio or 0.0) * 100.0 for row in rows], color=COLOURS[2])
    axis.set(title="prompt tokens served from the prefix cache, by step position", ylabel="%", ylim=(0, 100))
    axis.grid(alpha=0.3, axis="y")
    return to_png(figure)


@dataclass(frozen=True)
class TimelineBar:
    """One step of a workflow graph: its lane (branches running at once get lanes side by side), its
    interval in ms from the workflow's first step submitted (harness clock), and whether it lies on the
    critical path."""

    step_index: int
    name: str
    kind: str
    lane: int
    start_ms: float
    end_ms: float
    needs: tuple[int, ...]
    critical: bool


def _end_ms(record: StepRecord) -> float:
    """Schema 3 records the end; start + step_ms otherwise (the same fallback the critical path uses)."""
    return (
        record.end_offset_ms if record.end_offset_ms is not None else record.start_offset_ms + record.step_ms
    )


def _lane(lane_ends: list[float], start: float, preferred: list[int]) -> int:
    """A lane free at `start`: a need's lane first (a branch continues where its transcript ran), else the
    lowest free one, else a new one."""
    for lane in [*preferred, *range(len(lane_ends))]:
        if lane_ends[lane] <= start:
            return lane
    lane_ends.append(start)
    return len(lane_ends) - 1


def timeline_bars(records: Sequence[StepRecord]) -> list[TimelineBar]:
    """One workflow's steps laid out as a graph, in start order: two steps share a lane only if one ended
    before the other began, so concurrent branches sit side by side. The critical path is the one the
    runner recorded (`critical_path.critical_path`), recomputed from the same records."""
    on_path = set(critical_path(records).steps)
    origin = min((record.start_offset_ms for record in records), default=0.0)
    lane_ends: list[float] = []
    lane_of: dict[int, int] = {}
    bars = []
    for record in sorted(records, key=lambda r: (r.start_offset_ms, r.step_index)):
        needs = tuple(record.needs or ())
        lane = _lane(lane_ends, record.start_offset_ms, [lane_of[n] for n in needs if n in lane_of])
        lane_ends[lane] = _end_ms(record)
        lane_of[record.step_index] = lane
        bars.append(
            TimelineBar(
                step_index=record.step_index,
                name=record.node or record.step_id,
                kind=record.kind,
                lane=lane,
                start_ms=record.start_offset_ms - origin,
                end_ms=_end_ms(record) - origin,
                needs=needs,
                critical=record.step_index in on_path,
            )
        )
    return bars


def _draw_workflow(axis: Any, title: str, bars: list[TimelineBar]) -> None:
    by_index = {bar.step_index: bar for bar in bars}
    makespan = max(bar.end_ms for bar in bars)
    for bar in bars:
        for need in (by_index[n] for n in bar.needs if n in by_index):
            axis.plot([need.end_ms, bar.start_ms], [need.lane, bar.lane], color="#999999", lw=0.7, zorder=1)
        axis.barh(
            bar.lane,
            bar.end_ms - bar.start_ms,
            left=bar.start_ms,
            height=0.6,
            color=KIND_COLOURS.get(bar.kind, COLOURS[7]),
            edgecolor="black" if bar.critical else "none",
            linewidth=1.8 if bar.critical else 0.0,
            zorder=2,
        )
        if bar.end_ms - bar.start_ms >= LABELLED_BAR_SHARE * makespan:
            axis.text(
                (bar.start_ms + bar.end_ms) / 2, bar.lane, bar.name, ha="center", va="center", fontsize=7
            )
    lanes = max(bar.lane for bar in bars) + 1
    axis.set_yticks(range(lanes), [f"branch {lane + 1}" for lane in range(lanes)])
    axis.set_ylim(lanes - 0.5, -0.5)
    axis.set_title(title, fontsize=9, loc="left")
    axis.grid(alpha=0.3, axis="x")


def workflow_graphs(workflows: Sequence[tuple[str, Sequence[StepRecord]]]) -> bytes | None:
    """Each given workflow drawn as a graph on its own time axis: one lane per concurrently running
    branch, a bar per step coloured by kind, grey lines from each need to the step that waited for it,
    the critical path outlined. Needs records that say what each step waited for (schema 3 on)."""
    shown = [(label, records) for label, records in workflows if any(r.needs is not None for r in records)]
    if not shown:
        return None
    import matplotlib.patches as mpatches

    layouts = [(label, timeline_bars(records)) for label, records in shown]
    heights = [max(bar.lane for bar in bars) + 2 for _, bars in layouts]
    figure, axes = new_figure(len(layouts), 1, size=(10.0, min(16.0, 0.9 + 0.4 * sum(heights))))
    for axis, (label, bars) in zip(axes[:, 0], layouts, strict=True):
        _draw_workflow(axis, label, bars)
    axes[-1][0].set_xlabel("ms since the workflow's first step was submitted")
    handles = [mpatches.Patch(color=colour, label=kind) for kind, colour in KIND_COLOURS.items()]
    handles.append(mpatches.Patch(facecolor="white", edgecolor="black", linewidth=1.8, label="critical path"))
    axes[0][0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=4)
    return to_png(figure)


def turn_depth(turns: Sequence[DepthGroup]) -> bytes | None:
    """TTFT p50/p95 and the prefix-cache hit ratio against turn depth (with the mean prompt length the
    depth has reached): how an agent's first token behaves as its transcript grows."""
    if len(turns) < 2:
        return None
    from matplotlib.ticker import MaxNLocator

    figure, axes = new_figure(1, 2, size=(11.0, 3.6))
    depths = [turn.depth for turn in turns]
    ttft, cache = axes[0][0], axes[0][1]
    for name, colour in (("p50", COLOURS[0]), ("p95", COLOURS[3])):
        values = [getattr(turn.ttft_ms, name) for turn in turns]
        ttft.plot(
            depths, [np.nan if v is None else v for v in values], "o-", color=colour, label=f"TTFT {name}"
        )
    ttft.set(title="time to first token by turn depth", xlabel="turn depth", ylabel="ms")
    ttft.legend()
    ratios = [
        np.nan if turn.cached_prompt_ratio is None else turn.cached_prompt_ratio * 100 for turn in turns
    ]
    cache.bar(depths, ratios, color=COLOURS[2], label="cached prompt tokens")
    cache.set(title="prefix-cache hits by turn depth", xlabel="turn depth", ylabel="% of prompt tokens")
    cache.set_ylim(0, 100)
    tokens = cache.twinx()
    means = [np.nan if turn.prompt_tokens_mean is None else turn.prompt_tokens_mean for turn in turns]
    tokens.plot(depths, means, "k.--", label="mean prompt tokens")
    tokens.set_ylabel("prompt tokens")
    tokens.set_ylim(bottom=0)
    cache.legend(loc="lower left", fontsize=8)
    tokens.legend(loc="lower right", fontsize=8)
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    return to_png(figure)


def ttft_by_prompt_length(llm_steps: pd.DataFrame, buckets: Sequence[PromptLengthGroup]) -> bytes | None:
    """TTFT of every ok LLM step against its prompt length, coloured by the share of its prompt served
    from the prefix cache, with each power-of-two bucket's p50 and p95."""
    if llm_steps.empty:
        return None
    points = llm_steps.dropna(subset=["ttft_ms", "prompt_tokens"])
    points = points[points["prompt_tokens"] > 0]
    if points.empty:
        return None
    figure, axes = new_figure(size=(9.0, 3.8))
    axis = axes[0][0]
    hit = (points["cached_prompt_tokens"].fillna(0) / points["prompt_tokens"]).to_numpy(float)
    scatter = axis.scatter(
        points["prompt_tokens"], points["ttft_ms"], c=hit * 100, cmap="viridis", vmin=0, vmax=100, s=12
    )
    figure.colorbar(scatter, ax=axis, label="% of prompt cached")
    shortest = float(points["prompt_tokens"].min())
    for name, colour in (("p50", COLOURS[1]), ("p95", COLOURS[3])):
        for bucket in buckets:
            value = getattr(bucket.ttft_ms, name)
            if value is not None:
                low = max(bucket.prompt_tokens_from, shortest)
                axis.hlines(value, low, bucket.prompt_tokens_below, color=colour, lw=2)
        axis.plot([], [], color=colour, lw=2, label=f"bucket {name}")
    axis.set_xscale("log", base=2)
    axis.set(title="TTFT by prompt length", xlabel="prompt tokens", ylabel="TTFT, ms")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return to_png(figure)
