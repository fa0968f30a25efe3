"""A sweep shown: the per-level table (terminal and HTML), its answers (knee, max sustainable load), and
two plots: latency against achieved throughput (p50 line, p50-p95 band) and goodput against offered load.

Everything comes from sweep.json's document (`sweep.sweep_document`), itself built from the level rows.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from flowperf.modes.sweep.levels import LevelRow
from flowperf.outputs.plots import new_figure, to_png
from flowperf.outputs.report import data_uri, fmt, render_page
from flowperf.outputs.tables import TableSpec, print_table

HEADER = ("level", "offered", "achieved/s", "p50 ms", "p95 ms", "ttft p50", "ttft p95", "attain", "goodput/s",
          "most missed", "status")  # fmt: skip


def rows_of(document: dict[str, Any]) -> list[LevelRow]:
    return [LevelRow.model_validate(level) for level in document["levels"]]


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _status(row: LevelRow) -> str:
    if row.stopped_early and row.stopped_early.startswith("saturated"):
        return "stopped: saturated"
    return row.status + (f", {row.abandoned} abandoned" if row.abandoned else "")


def table_rows(document: dict[str, Any]) -> list[list[str]]:
    knee = document.get("knee")
    rows = []
    for row in rows_of(document):
        missed = (
            "-" if row.failing_objective is None else f"{row.failing_objective} ({_share(row.failing_share)})"
        )
        rows.append([
            row.name + (" (knee)" if row.name == knee else ""), row.offered, fmt(row.achieved_per_s, 3),
            fmt(row.latency_p50_ms), fmt(row.latency_p95_ms), fmt(row.ttft_p50_ms), fmt(row.ttft_p95_ms),
            _share(row.attainment), fmt(row.goodput_per_s, 3), missed, _status(row),
        ])  # fmt: skip
    return rows


ENGINE_HEADER = ("level", "offered", "p50 ms", "waiting mean", "waiting max", "KV max", "preemptions")


def engine_rows(document: dict[str, Any]) -> list[list[str]]:
    """Per level what filled up in the engines (their own metrics), beside the latency it explains;
    empty when no level has any (engine metrics off, or an engine without them)."""
    rows = rows_of(document)
    if all(row.engine_waiting_max is None and row.engine_kv_usage_max is None for row in rows):
        return []
    return [
        [row.name, row.offered, fmt(row.latency_p50_ms), fmt(row.engine_waiting_mean),
         fmt(row.engine_waiting_max), _share(row.engine_kv_usage_max), fmt(row.engine_preemptions)]
        for row in rows
    ]  # fmt: skip


def answer_lines(document: dict[str, Any]) -> list[str]:
    """The sweep's answers in words: the knee, the max sustainable load and how sure it is, early stops."""
    spec = document["spec"]
    lines = [f"knee (highest achieved rate / p50 latency): {document.get('knee') or '-'}"]
    found = document.get("max_sustainable")
    if found is not None:
        low, high = found["bracket"]
        unit, target = found["unit"], spec["slo_target"]
        if low is None:
            lines.append(
                f"max sustainable load: none measured meets {target:.0%} attainment of {spec['slo']}"
            )
        else:
            how = "searched" if found["searched"] else "among the levels run, not searched"
            within = "within" if found["resolved"] else "NOT within"
            lines.append(
                f"max sustainable load: {low:g} {unit} at >= {target:.0%} attainment of {spec['slo']} "
                f"({how}; next failing load {'-' if high is None else f'{high:g}'}, {within} tolerance "
                f"{found['tolerance']:g})"
            )
    lines += [
        f"{row.name}: stopped early: {row.stopped_early}" for row in rows_of(document) if row.stopped_early
    ]
    return lines


def print_sweep(console: Console, document: dict[str, Any]) -> None:
    title = f"sweep {document['sweep_id']} ({document['status']})"
    left = ("level", "most missed", "status")
    print_table(console, TableSpec(title, HEADER, table_rows(document), left=left))
    if engine := engine_rows(document):
        title = "engine state per level (the engines' own metrics)"
        print_table(console, TableSpec(title, ENGINE_HEADER, engine, left=("level",)))
    for line in answer_lines(document):
        console.print(line, highlight=False)


def latency_curve(rows: list[LevelRow], knee: str | None) -> bytes | None:
    """Workflow latency against achieved throughput: p50 line, band to p95, the knee marked."""
    points = sorted(
        (r for r in rows if r.achieved_per_s and r.latency_p50_ms), key=lambda r: r.achieved_per_s
    )
    if not points:
        return None
    figure, axes = new_figure(size=(8.0, 4.0))
    axis = axes[0][0]
    x = [r.achieved_per_s for r in points]
    p50 = [r.latency_p50_ms for r in points]
    axis.fill_between(x, p50, [r.latency_p95_ms or r.latency_p50_ms for r in points], alpha=0.25,
                      label="p50-p95")  # fmt: skip
    axis.plot(x, p50, marker="o", label="p50")
    for row in points:
        if row.name == knee:
            axis.scatter([row.achieved_per_s], [row.latency_p50_ms], s=160, marker="*", color="red", zorder=5,
                         label=f"knee ({row.offered})")  # fmt: skip
    axis.set_xlabel("achieved workflows/s")
    axis.set_ylabel("workflow latency (ms)")
    axis.legend()
    return to_png(figure)


def goodput_curve(rows: list[LevelRow], found: dict[str, Any] | None, unit: str) -> bytes | None:
    """Achieved rate and goodput against offered load (rate, or concurrency), the max sustainable load
    marked; closed-loop levels of a rate sweep sit at their achieved rate."""
    by_concurrency = unit == "concurrency"

    def offered(row: LevelRow) -> float | None:
        return row.load if by_concurrency or row.mode == "open_loop" else row.achieved_per_s

    points = sorted((r for r in rows if offered(r) is not None), key=lambda r: offered(r) or 0.0)
    if not points:
        return None
    figure, axes = new_figure(size=(8.0, 4.0))
    axis = axes[0][0]
    x = [offered(r) for r in points]
    axis.plot(x, [r.achieved_per_s or 0 for r in points], marker="o", label="achieved workflows/s")
    if any(r.goodput_per_s is not None for r in points):
        axis.plot(x, [r.goodput_per_s or 0 for r in points], marker="s", label="goodput (workflows/s in SLO)")
    if not by_concurrency:
        axis.plot(x, x, linestyle=":", color="grey", label="offered")
    if found is not None and found.get("load") is not None:
        axis.axvline(found["load"], color="red", linestyle="--", label=f"max sustainable {found['load']:g}")
    axis.set_xlabel("offered concurrency" if by_concurrency else "offered workflows/s")
    axis.set_ylabel("workflows/s")
    axis.legend()
    return to_png(figure)


def sweep_html(document: dict[str, Any]) -> str:
    rows = rows_of(document)
    found = document.get("max_sustainable")
    unit = "concurrency" if document["spec"]["levels"] == "concurrency" else "workflows/s"
    figures = []
    for title, png in (
        ("latency against throughput", latency_curve(rows, document.get("knee"))),
        ("goodput against offered load", goodput_curve(rows, found, unit)),
    ):
        if (uri := data_uri(png)) is not None:
            figures.append((title, uri))
    sections = [
        {"title": "Levels", "header": list(HEADER), "rows": table_rows(document)},
        {"title": "Answers", "note": " | ".join(answer_lines(document))},
    ]
    if engine := engine_rows(document):
        sections.insert(1, {"title": "Engine state per level", "header": list(ENGINE_HEADER), "rows": engine})
    return render_page(f"flowperf sweep: {document['sweep_id']}", sections, figures)
