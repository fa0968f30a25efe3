"""What `bench ab` shows: the verdict table (terminal, plain when piped) and the HTML page, drawn from
ab.json's content alone, so a page can be made from any ab directory, finished or not.

The page's point is the drift: per metric, each arm's block values over the session's time (a machine
getting slower shows as both arms' values climbing together) beside the per-pair differences over the same
time (flat around the verdict's estimate when drift cancels, as it should)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console

from flowperf.outputs.compare import engine_state_rows, print_comparison, print_engine_state
from flowperf.outputs.report import data_uri, fmt, render_page

MODE_TEXT = {
    "shared_engine": "one engine served both arms (the arms differ only in what they ask of it)",
    "two_engines": "one engine per arm, both up for the whole session",
}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def result_rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The verdict table, as the terminal and the HTML page both show it."""
    alpha = document["analysis"]["alpha"]
    header = ["metric", "pairs", "A (median block)", "B (median block)", "B vs A", f"{1 - alpha:.0%} CI",
              "p", "p Holm", "verdict", "gated", "note"]  # fmt: skip
    rows = [
        [
            r["metric"],
            str(r["pairs"]),
            fmt(r["a_median"], 2),
            fmt(r["b_median"], 2),
            _pct(r["change_pct"]),
            "-" if r["ci_low_pct"] is None else f"[{_pct(r['ci_low_pct'])}, {_pct(r['ci_high_pct'])}]",
            _p(r["p_value"]),
            _p(r["p_holm"]),
            r["verdict"],
            "yes" if r["gated"] else "",
            r["note"],
        ]
        for r in document["analysis"]["metrics"]
    ]
    return header, rows


def title(document: dict[str, Any]) -> str:
    analysis = document["analysis"]
    done = sum(block["status"] == "complete" for block in document["blocks"])
    return (
        f"bench ab {document['ab_id']}: B vs A over block pairs ({done} of {len(document['blocks'])} "
        f"blocks of {document['block_workflows']} workflows; {MODE_TEXT[document['mode']]}); alpha "
        f"{analysis['alpha']:g}, Holm over gated metrics, threshold {analysis['threshold_pct']:g}%"
    )


def print_ab(console: Console, document: dict[str, Any]) -> None:
    header, rows = result_rows(document)
    print_comparison(console, title(document), header, rows)
    engine = document.get("engine_state") or {}
    print_engine_state(console, ENGINE_TITLE, engine.get("A", []), engine.get("B", []), ("A", "B"))


ENGINE_TITLE = "engine state per server, each arm's windows (report only, never gated)"


def _block_series(document: dict[str, Any], metric: str, arm: str) -> tuple[np.ndarray, np.ndarray]:
    """(block mid-time in s, value) of one arm's completed blocks that have the metric."""
    points = [
        ((block["start_s"] + block["end_s"]) / 2.0, block["metrics"][metric])
        for block in document["blocks"]
        if block["arm"] == arm and block["status"] == "complete" and block["metrics"].get(metric) is not None
    ]
    return np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)


def _pair_times(document: dict[str, Any], metric: str) -> np.ndarray:
    """Mid-time of each pair the analysis used, in pair order (the order of `differences_pct`)."""
    times: dict[int, list[float]] = {}
    for block in document["blocks"]:
        if block["status"] == "complete" and block["metrics"].get(metric) is not None:
            times.setdefault(block["pair"], []).extend([block["start_s"], block["end_s"]])
    return np.array([np.mean(times[pair]) for pair in sorted(times) if len(times[pair]) == 4], dtype=float)


def drift_figure(document: dict[str, Any], result: dict[str, Any]) -> bytes | None:
    """Left: both arms' block values over time (the drift). Right: the per-pair differences over time,
    with the estimate, its interval and the threshold (the drift cancelled, or not)."""
    from flowperf.outputs import plots

    metric = result["metric"]
    differences = np.array(result["differences_pct"], dtype=float)
    pair_times = _pair_times(document, metric)
    if not len(differences) or len(pair_times) != len(differences):
        return None
    figure, axes = plots.new_figure(1, 2, size=(11.0, 3.6))
    left, right = axes[0]
    for arm, colour in (("A", plots.COLOURS[0]), ("B", plots.COLOURS[1])):
        times, values = _block_series(document, metric, arm)
        left.plot(times, values, "o-", color=colour, label=f"arm {arm}", markersize=4)
    left.set(xlabel="time in session (s)", ylabel=metric, title=f"{metric}: block values")
    left.legend()
    right.axhline(0.0, color="black", linewidth=0.8)
    threshold = document["analysis"]["threshold_pct"]
    for level in (threshold, -threshold):
        right.axhline(level, color="grey", linestyle="--", linewidth=0.8)
    if result["ci_low_pct"] is not None:
        right.axhspan(result["ci_low_pct"], result["ci_high_pct"], color=plots.COLOURS[2], alpha=0.2)
    right.axhline(
        result["change_pct"], color=plots.COLOURS[2], label=f"estimate {result['change_pct']:+.1f}%"
    )
    right.plot(pair_times, differences, "o", color=plots.COLOURS[3], label="pair: B/A - 1")
    right.set(
        xlabel="time in session (s)", ylabel="%", title=f"{metric}: paired difference ({result['verdict']})"
    )
    right.legend()
    return plots.to_png(figure)


def ab_html(document: dict[str, Any]) -> str:
    header, rows = result_rows(document)
    arms = document["arms"]
    sections = [
        {
            "title": "Session",
            "rows": [
                (
                    "arms",
                    f"A: {arms['A']['options'] or '(common options)'}; B: "
                    f"{arms['B']['options'] or '(common options)'}",
                ),
                ("run directories", f"{arms['A']['run_dir']}, {arms['B']['run_dir']}"),
                ("engines", MODE_TEXT[document["mode"]]),
                ("settings that differ", "; ".join(document["setting_differences"]) or "none"),
                ("order of pairs", " ".join(document["order"])),
                ("status", document["status"]),
            ],
        },
        {"title": "Verdicts", "note": title(document), "header": header, "rows": rows},
    ]
    engine = document.get("engine_state") or {}
    engine_header, engine_rows = engine_state_rows(engine.get("A", []), engine.get("B", []), ("A", "B"))
    if engine_rows:
        sections.append({"title": ENGINE_TITLE, "header": engine_header, "rows": engine_rows})
    figures = []
    for result in document["analysis"]["metrics"]:
        if result["gated"] or result["metric"].startswith("step_"):
            uri = data_uri(drift_figure(document, result))
            if uri is not None:
                figures.append((f"{result['metric']}: drift and paired differences", uri))
    return render_page(f"flowperf ab: {document['ab_id']}", sections, figures)
