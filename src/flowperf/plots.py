"""The report's plots, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes tables from a run directory and returns one figure, or None when the run holds no data
for it (a report never shows an empty chart as if it were a measurement).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flowperf.records import MetricRecord, ResourceSample
from flowperf.summary_schema import CachePosition

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _figure(rows: int = 1, columns: int = 1, size: tuple[float, float] = (9.0, 3.6)) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    return figure, axes


def _png(figure: Any) -> bytes:
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
    figure, axes = _figure(1, 2)
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
    return _png(figure)


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
    figure, axes = _figure()
    axis = axes[0][0]
    axis.boxplot([values for _, values in groups], showfliers=True)
    axis.set_xticks(range(1, len(groups) + 1), [step_id for step_id, _ in groups])
    axis.set(title=f"{metric} by step", ylabel="ms")
    axis.grid(alpha=0.3, axis="y")
    return _png(figure)


def gantt(workflows: pd.DataFrame, steps: pd.DataFrame) -> bytes | None:
    """Each workflow a row, each step a bar from its start to its end: concurrency at a glance."""
    if workflows.empty or steps.empty:
        return None
    session = workflows["session"].value_counts().idxmax()
    shown = steps[steps["session"] == session]
    order = {index: row for row, index in enumerate(sorted(shown["flow_index"].unique()))}
    step_ids = list(dict.fromkeys(shown.sort_values("step_index")["step_id"]))
    height = min(12.0, 1.5 + 0.12 * len(order))
    figure, axes = _figure(size=(9.0, height))
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
    return _png(figure)


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
    figure, axes = _figure(1, 3 if gpus else 2, size=(12.0 if gpus else 9.0, 3.4))
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
    return _png(figure)


def cache_hits(prefix_cache: Sequence[CachePosition]) -> bytes | None:
    rows = [row for row in prefix_cache if row.hit_ratio is not None]
    if not rows:
        return None
    figure, axes = _figure(size=(7.0, 3.2))
    axis = axes[0][0]
    labels = [f"{row.step_index + 1}: {row.step_id}" for row in rows]
    axis.bar(labels, [(row.hit_ratio or 0.0) * 100.0 for row in rows], color=COLOURS[2])
    axis.set(title="prompt tokens served from the prefix cache, by step position", ylabel="%", ylim=(0, 100))
    axis.grid(alpha=0.3, axis="y")
    return _png(figure)
