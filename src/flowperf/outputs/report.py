"""`bench report`: a run directory as people read it (terminal), as a page (HTML) and as data (JSON).

Every figure is recomputed from the directory's files, so a report of an interrupted or crashed run is
as exact as one of a finished run, and says in its header that the run is partial.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from rich.console import Console

from flowperf.outputs import engine_state as engine_view
from flowperf.outputs import plots
from flowperf.outputs.session_report import sessions_text, think_gap_rows
from flowperf.outputs.tables import TableSpec, print_parts, print_table
from flowperf.rundir.durable import iter_complete_lines
from flowperf.rundir.records import StepRecord
from flowperf.rundir.rundata import RunData, parse_step_line
from flowperf.rundir.store import STEPS, RunStore
from flowperf.rundir.summary import SummaryContext, llm_steps, summarize_run
from flowperf.rundir.summary_schema import (
    CachePosition,
    GpusUnavailable,
    RunInfo,
    RunSummary,
    Timings,
    TurnGroup,
)

PERCENTILES = ("p50", "p95", "p99")
LATENCIES = ("step_ms", "ttft_ms", "itl_ms", "tpot_ms")
TURN_COLUMNS = ("steps", "mean prompt tokens", "cache hit", "ttft p50", "ttft p95", "tpot p50")
TIMELINE_FIRST = 4  # workflows drawn as graphs: the first few, and the slowest
STATUS_NOTES = {
    "complete": "complete",
    "stopped_on_failure": "stopped at the first failure (--fail-fast)",
    "interrupted": "interrupted (Ctrl-C); resumable with bench run --resume",
    "partial": "partial: the run did not finish (crash or still running); resumable with bench run --resume",
}


def report_summary(run: RunData) -> RunSummary:
    """The summary, recomputed from the files; metadata (engine, timings) from what the run wrote."""
    saved = run.summary or {}
    status = saved.get("status", "partial")
    if status == "running":
        status = "partial"
    timings = Timings.model_validate(saved.get("timing") or {})
    settings = run.config.get("config", {})
    run_info = RunInfo.model_validate(
        saved.get("run")
        or {
            "run_id": run.config.get("run_id"),
            "flow": run.config.get("flow", {}).get("name"),
            "mode": "open_loop" if settings.get("rate") else "closed_loop",
            "concurrency": settings.get("concurrency"),
            "rate_per_s": settings.get("rate"),
        }
    )
    context = SummaryContext(
        planned_workflows=int(settings.get("num_flows", len(run.workflows))),
        run=run_info,
        timings=timings,
        engine=saved.get("engine") or run.config.get("engine"),
    )
    return summarize_run(
        run.workflows, run.steps, run.metrics, status, context, engine_records=run.engine_metrics
    )


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for people: thousands separators, fixed decimals, '-' for no value."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def header_rows(run: RunData, summary: RunSummary) -> list[tuple[str, str]]:
    engine = summary.engine or {}
    info, counts = summary.run, summary.counts
    load = (
        f"open loop, {info.rate_per_s} workflows/s, cap {info.concurrency or 'none'}"
        if info.mode == "open_loop"
        else f"closed loop, concurrency {info.concurrency}"
    )
    model = run.config.get("model", {})
    tiny = " (embedded tiny model)" if model.get("tiny") else ""
    return [
        ("run", f"{info.run_id} ({run.run_dir})"),
        ("status", STATUS_NOTES.get(summary.status, summary.status)),
        (
            "flow",
            f"{info.flow}: {counts.workflows_done} of {counts.workflows_planned} workflows "
            f"done, {counts.sessions} session(s)",
        ),
        ("model", f"{model.get('name') or model.get('path')}{tiny}"),
        (
            "engine",
            f"{engine.get('engine', '-')} {engine.get('engine_version', '')} on {engine.get('device', '-')}",
        ),
        ("CUDA graphs", f"{engine.get('cuda_graph_mode', '-')} ({engine.get('cuda_graph_note', '')})"),
        ("KV cache", kv_cache_text(engine.get("details") or {})),
        ("CPU placement", (engine.get("details") or {}).get("harness_placement") or "-"),
        ("load", load),
        ("created", str(run.config.get("created_at", "-"))),
        ("git commit", str(run.config.get("git_commit") or "-")),
    ]


def kv_cache_text(details: dict[str, Any]) -> str:
    tokens = details.get("kv_cache_tokens")
    if tokens is None:
        return "-"
    blocks = details.get("num_kv_blocks")
    layout = f" ({blocks:,} blocks of {details.get('block_size')})" if blocks is not None else ""
    return f"{tokens:,} tokens{layout}"


def timing_rows(summary: RunSummary) -> list[tuple[str, str]]:
    timing = summary.timing
    warmup = summary.resources.phases_ms.get("warmup")
    rows = [
        ("flow expansion", timing.flow_expansion_ms, f"source: {timing.expansion_source or '-'}"),
        ("engine start-up", timing.engine_init_ms, ""),
        ("warm-up", warmup.total_ms if warmup else None, ""),
        ("measured window", timing.measured_window_ms, "sum over sessions"),
    ]
    known = [value for _, value, _ in rows if value is not None]
    rows.append(("total of the above", sum(known) if known else None, ""))
    return [(name, f"{fmt(value)} ms", note) for name, value, note in rows]


def step_rows(summary: RunSummary) -> list[list[str]]:
    rows = []
    for step_id, block in summary.latency_by_step.items():
        row = [step_id, str(block.step_ms.count)]
        for metric in LATENCIES:
            distribution = getattr(block, metric)
            row += [fmt(getattr(distribution, p)) for p in PERCENTILES]
        rows.append(row)
    return rows


def cache_row(row: CachePosition) -> list[str]:
    hit = row.hit_ratio
    return [
        str(row.step_index + 1),
        row.step_id,
        f"{row.prompt_tokens:,}",
        f"{row.cached_prompt_tokens:,}",
        "-" if hit is None else f"{hit:.1%}",
    ]


def _turn_cells(group: TurnGroup) -> list[str]:
    ratio = group.cached_prompt_ratio
    return [
        str(group.steps),
        fmt(group.prompt_tokens_mean, 0),
        "-" if ratio is None else f"{ratio:.1%}",
        fmt(group.ttft_ms.p50),
        fmt(group.ttft_ms.p95),
        fmt(group.tpot_ms.p50, 2),
    ]


def turn_rows(summary: RunSummary) -> list[list[str]]:
    """LLM steps by turn depth; none when the run has one depth (a single call, or a schema-1/2 run)."""
    if len(summary.turns) < 2:
        return []
    return [[str(turn.depth), *_turn_cells(turn)] for turn in summary.turns]


def prompt_length_rows(summary: RunSummary) -> list[list[str]]:
    """LLM steps by prompt-length bucket; none when every prompt falls in one bucket."""
    if len(summary.by_prompt_length) < 2:
        return []
    return [
        [f"{group.prompt_tokens_from:,}-{group.prompt_tokens_below - 1:,}", *_turn_cells(group)]
        for group in summary.by_prompt_length
    ]


def time_split_text(summary: RunSummary) -> str | None:
    """Where an ok workflow's time went, as means that add up: the makespan is its critical path's LLM
    calls (the engine's queueing inside them) and tool/think pauses, plus the harness's hand-overs; the
    wait for a slot (open loop) comes before the makespan. None before schema 3."""
    split = summary.workflow_breakdown
    if split is None:
        return None
    slot = split.slot_wait_ms
    return (
        f"mean per workflow (critical path, {split.workflows} ok workflows): makespan "
        f"{fmt(split.makespan_ms.mean)} ms = LLM {fmt(split.llm_ms.mean)} ms "
        f"(of which engine queue {fmt(split.engine_queue_ms.mean, 2)} ms) + tools/think "
        f"{fmt(split.tool_ms.mean)} ms + scheduling {fmt(split.scheduling_gap_ms.mean, 2)} ms; "
        f"slot wait {fmt(slot.mean) + ' ms' if slot is not None else '- (closed loop)'}"
    )


def metric_samples(run: RunData) -> dict[str, np.ndarray]:
    """The samples behind each latency statistic: one per workflow, per LLM step, per token gap."""
    ok_workflows, ok_steps = run.ok_workflows, llm_steps(run.ok_steps)
    empty = np.array([], dtype=float)
    if ok_steps.empty:
        return {"workflow_ms": empty, "step_ms": empty, "ttft_ms": empty, "itl_ms": empty, "tpot_ms": empty}
    return {
        "workflow_ms": ok_workflows["workflow_ms"].to_numpy(float),
        "step_ms": ok_steps["step_ms"].to_numpy(float),
        "ttft_ms": ok_steps["ttft_ms"].dropna().to_numpy(float),
        "itl_ms": ok_steps["itl_ms"].explode().dropna().to_numpy(float),
        "tpot_ms": ok_steps["tpot_ms"].dropna().to_numpy(float),
    }


def failure_rows(run: RunData) -> list[tuple[str, int, str]]:
    failed = run.workflows[run.workflows["status"] != "ok"] if not run.workflows.empty else run.workflows
    rows = []
    for error_type, group in failed.groupby("error_type", sort=True) if not failed.empty else []:
        rows.append((str(error_type), len(group), str(group["error_message"].iloc[0])))
    return rows


def resource_rows(summary: RunSummary) -> list[tuple[str, str]]:
    resources = summary.resources
    gpus = resources.gpus
    if isinstance(gpus, GpusUnavailable):
        gpu_text = f"not measured: {gpus.reason}"
    else:
        gpu_text = "; ".join(
            f"GPU {index}: util mean {fmt(g.util_percent_mean)}% peak {fmt(g.util_percent_peak)}%, "
            f"memory mean {fmt(g.mem_used_mb_mean, 0)} MB peak {fmt(g.mem_used_mb_peak, 0)} MB"
            for index, g in gpus.items()
        )
    return [
        ("peak RSS", f"harness {fmt(resources.peak_rss_mb, 0)} MB, engine processes "
                     f"{fmt(resources.peak_engine_rss_mb, 0)} MB"),
        ("mean CPU", f"harness {fmt(resources.cpu_percent_mean)}%, engine processes "
                     f"{fmt(resources.engine_cpu_percent_mean)}% (of one core)"),
        ("RSS growth", f"harness {fmt(resources.rss_growth_mb_per_100_steps, 2)} MB, engine "
                       f"{fmt(resources.engine_rss_growth_mb_per_100_steps, 2)} MB per 100 steps "
                       "(- = run too short to fit)"),
        ("GPU", gpu_text),
        *(("sampling stopped", error) for error in resources.monitor_errors),
    ]  # fmt: skip


def throughput_text(summary: RunSummary) -> str:
    throughput = summary.throughput
    concurrency, requests = summary.load.achieved_concurrency, summary.load.request_concurrency
    return (
        f"{fmt(throughput.output_tokens_per_s)} output tokens/s, "
        f"{fmt(throughput.steps_per_s, 2)} LLM steps/s, "
        f"{fmt(throughput.workflows_per_s, 3)} workflows/s; "
        f"workflows (sessions) in flight: mean {fmt(concurrency.mean, 2)}, max {fmt(concurrency.max)}; "
        f"LLM requests in flight: mean {fmt(requests.mean, 2)}, max {fmt(requests.max)}"
    )


def _percentiles(distribution: Any) -> str:
    return "/".join(fmt(getattr(distribution, p)) for p in PERCENTILES)


def workflow_text(summary: RunSummary) -> str:
    """Workflow latency; open loop also from each workflow's scheduled arrival, and the part of it spent
    waiting to start (for a --concurrency slot), so queueing cannot hide behind a short makespan."""
    latency = summary.latency
    text = f"p50/p95/p99 {_percentiles(latency.workflow_ms)} ms first step to last"
    delay = summary.load.start_delay_ms
    if summary.run.mode == "open_loop" and delay is not None:
        text += (
            f"; from scheduled arrival {_percentiles(latency.workflow_latency_ms)} ms, "
            f"of which waiting to start {_percentiles(delay)} ms"
        )
    return text


def beyond_engine_text(summary: RunSummary) -> str | None:
    """Where the engine reports its own TTFT: how much of the client's TTFT it does not see (its front
    end, tokenising, transport, the client), so a slow first token can be placed."""
    beyond = summary.latency.ttft_beyond_engine_ms
    if not beyond.count:
        return None
    return f"p50/p95/p99 {_percentiles(beyond)} ms of TTFT outside the engine (front end, transport, client)"


CONNECT_WAIT_MATERIAL = 0.1  # of the TTFT p50: the client's pool then moves what users see


def connect_wait_warning(summary: RunSummary) -> str | None:
    """A line when requests waited for a client connection long enough to matter (p95 at least a tenth
    of the TTFT p50, and 1 ms): that wait is outside TTFT and step time, so without this line client-side
    pool queueing (an uncapped open loop beyond the pool's connections) would be invisible."""
    wait, ttft = summary.latency.connect_wait_ms, summary.latency.ttft_ms
    if not wait.count or wait.p95 is None or wait.p95 < max(1.0, CONNECT_WAIT_MATERIAL * (ttft.p50 or 0.0)):
        return None
    return (
        f"requests waited for a client connection before they were sent: p50/p95/p99/max "
        f"{_percentiles(wait)}/{fmt(wait.max)} ms, outside TTFT and step time (the client's pool, "
        f"not the server; lower the load per client or use --workers)"
    )


def _table(title: str, columns: tuple[str, ...], rows: list[Any], right: tuple[str, ...] = ()) -> TableSpec:
    return TableSpec(title, columns, rows, left=tuple(column for column in columns if column not in right))


def _grid(title: str, rows: list[tuple[str, str]]) -> TableSpec:
    return TableSpec(title, None, rows, boxed=True)


def _agentic_parts(summary: RunSummary) -> list[Any]:
    """The turn-depth and prompt-length tables and where the time went, for runs that have them."""
    parts: list[Any] = []
    for title, first, rows in (
        ("LLM steps by turn depth (ms)", "depth", turn_rows(summary)),
        ("LLM steps by prompt length (ms)", "prompt tokens", prompt_length_rows(summary)),
    ):
        if rows:
            columns = (first, *TURN_COLUMNS)
            parts.append(_table(title, columns, rows, right=columns))
    if (text := time_split_text(summary)) is not None:
        parts.append(f"[bold]where the time went[/] {text}")
    if (text := sessions_text(summary)) is not None and summary.sessions is not None:
        parts.append(f"[bold]sessions[/] {text}")
        columns = ("think before", *TURN_COLUMNS)
        rows = think_gap_rows(summary.sessions, _turn_cells)
        parts.append(_table("LLM requests by the think gap before them (ms)", columns, rows, right=columns))
    return parts


def _engine_parts(summary: RunSummary) -> list[Any]:
    """The engine's own view, where its metrics were read: the per-server table and notes."""
    if not summary.engine_state:
        return []
    parts: list[Any] = [
        _table(
            "engine state (server's own metrics; ms)",
            engine_view.COLUMNS,
            engine_view.state_rows(summary),
            right=engine_view.COLUMNS[1:],
        )
    ]
    for text in (engine_view.burst_text(summary), engine_view.missing_text(summary)):
        if text is not None:
            parts.append(f"[bold]engine[/] {text}")
    return parts


def _engine_sections(summary: RunSummary) -> list[dict[str, Any]]:
    if not summary.engine_state:
        return []
    notes = [text for text in (engine_view.burst_text(summary), engine_view.missing_text(summary)) if text]
    section = {"title": "Engine state (server's own metrics; ms)", "header": list(engine_view.COLUMNS)}
    return [
        section | {"rows": engine_view.state_rows(summary)},
        *({"title": "Engine", "note": n} for n in notes),
    ]


def print_report(run: RunData, summary: RunSummary, console: Console) -> None:
    print_table(console, _grid("flowperf run", header_rows(run, summary)))
    step_columns = ("step", "n", *(f"{m.removesuffix('_ms')} {p}" for m in LATENCIES for p in PERCENTILES))
    cache_columns = ("position", "step", "prompt tokens", "cached", "hit ratio")
    parts: list[Any] = [
        _table("timing", ("phase", "time", "note"), timing_rows(summary), right=("time",)),
        _table("latency by step (ms)", step_columns, step_rows(summary), right=step_columns[1:]),
        *_agentic_parts(summary),
        f"[bold]workflows[/] {workflow_text(summary)}",
        *([f"[bold]TTFT[/] {text}"] if (text := beyond_engine_text(summary)) else []),
        *([f"[bold yellow]warning[/] {text}"] if (text := connect_wait_warning(summary)) else []),
        f"[bold]throughput[/] {throughput_text(summary)}",
        _table(
            "prefix cache by step position",
            cache_columns,
            [cache_row(row) for row in summary.prefix_cache],
            right=tuple(c for c in cache_columns if c != "step"),
        ),
        _grid("resources", resource_rows(summary)),
        *_engine_parts(summary),
    ]
    failures = [(kind, str(count), message) for kind, count, message in failure_rows(run)]
    if failures:
        parts.append(_table("failures", ("error type", "workflows", "first message"), failures))
    print_parts(console, parts)


def json_report(run: RunData, summary: RunSummary) -> dict[str, Any]:
    """The summary plus derived tables, for other tools."""
    columns = ["step", "n"] + [f"{m}_{p}" for m in LATENCIES for p in PERCENTILES]
    turn_columns = [column.replace(" ", "_") for column in TURN_COLUMNS]
    return summary.to_json() | {
        "tables": {
            "per_step": [dict(zip(columns, row, strict=True)) for row in step_rows(summary)],
            "by_turn_depth": [
                dict(zip(["depth", *turn_columns], row, strict=True)) for row in turn_rows(summary)
            ],
            "by_prompt_length": [
                dict(zip(["prompt_tokens", *turn_columns], row, strict=True))
                for row in prompt_length_rows(summary)
            ],
            "failures": [
                {"error_type": t, "workflows": n, "first_message": m} for t, n, m in failure_rows(run)
            ],
            "workflows": run.workflows.to_dict(orient="records"),
        }
    }


def data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def timeline_workflows(run: RunData, first: int = TIMELINE_FIRST) -> list[tuple[str, list[StepRecord]]]:
    """(label, step records) of the workflows drawn as graphs: the first `first` ok workflows and the
    slowest. Whole records (the tables leave out each step's needs), read from the session that
    completed each workflow, one per step as the tables count them."""
    ok = run.ok_workflows
    if ok.empty:
        return []
    chosen = ok.sort_values("flow_index").head(first)
    slowest = ok.loc[[ok["workflow_ms"].idxmax()]]
    chosen = pd.concat([chosen, slowest]).drop_duplicates(subset=["flow_index"])
    keys = {(int(row.flow_index), int(row.session)): row for row in chosen.itertuples()}
    records: dict[tuple[int, int], dict[int, StepRecord]] = {key: {} for key in keys}
    for line in iter_complete_lines(RunStore(run.run_dir).path(STEPS)):
        parsed = parse_step_line(line)
        if parsed is not None and parsed[0][:2] in records:
            records[parsed[0][:2]].setdefault(parsed[0][2], StepRecord.model_validate_json(line))
    slowest_index = int(slowest["flow_index"].iloc[0])
    shown = []
    for (flow, session), row in keys.items():
        tag = " (slowest)" if flow == slowest_index else ""
        if records[(flow, session)]:
            label = f"{row.flow_id}{tag}: makespan {row.workflow_ms:,.0f} ms"
            shown.append((label, list(records[(flow, session)].values())))
    return shown


def run_figures(run: RunData, summary: RunSummary) -> list[tuple[str, str]]:
    """(title, data URI) of every plot the run has data for."""
    ok_workflows, ok_steps = run.ok_workflows, run.ok_steps
    samples = metric_samples(run)
    candidates = [
        ("Workflow latency", plots.distribution({"workflow": samples["workflow_ms"]}, "workflow latency")),
        ("Step latency by step", plots.step_boxplots(ok_steps)),
        ("Time to first token", plots.distribution({"TTFT": samples["ttft_ms"]}, "TTFT")),
        ("Inter-token latency", plots.distribution({"ITL": samples["itl_ms"]}, "ITL")),
        ("Timeline", plots.gantt(ok_workflows, ok_steps)),
        ("Workflow graphs (first workflows and the slowest)", plots.workflow_graphs(timeline_workflows(run))),
        ("TTFT and prefix-cache hits by turn depth", plots.turn_depth(summary.turns)),
        ("TTFT by prompt length", plots.ttft_by_prompt_length(llm_steps(ok_steps), summary.by_prompt_length)),
        ("Resources", plots.resources(run.metrics)),
        ("Prefix-cache hits", plots.cache_hits(summary.prefix_cache)),
        ("Engine state and client load", engine_view.timeline(run.engine_metrics, llm_steps(ok_steps))),
    ]
    return [(title, uri) for title, png in candidates if (uri := data_uri(png)) is not None]


@functools.cache
def page_template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flowperf.outputs", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2")


def render_page(title: str, sections: list[dict[str, Any]], figures: list[tuple[str, str]]) -> str:
    """One self-contained page: inline CSS, images as data URIs, nothing fetched from anywhere."""
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return page_template().render(
        title=title,
        sections=sections,
        figures=figures,
        generated=generated,
        verdict_classes=("regression", "improvement"),
    )


def _agentic_sections(summary: RunSummary) -> list[dict[str, Any]]:
    sections: list[dict[str, Any]] = []
    for title, first, rows in (
        ("LLM steps by turn depth (ms)", "depth", turn_rows(summary)),
        ("LLM steps by prompt length (ms)", "prompt tokens", prompt_length_rows(summary)),
    ):
        if rows:
            sections.append({"title": title, "header": [first, *TURN_COLUMNS], "rows": rows})
    if (text := time_split_text(summary)) is not None:
        sections.append({"title": "Where the time went", "note": text})
    if (text := sessions_text(summary)) is not None and summary.sessions is not None:
        sections.append({"title": "Sessions", "note": text})
        sections.append(
            {
                "title": "LLM requests by the think gap before them (ms)",
                "header": ["think before", *TURN_COLUMNS],
                "rows": think_gap_rows(summary.sessions, _turn_cells),
            }
        )
    return sections


def html_report(run: RunData, summary: RunSummary) -> str:
    step_header = ["step", "n"] + [f"{m.removesuffix('_ms')} {p}" for m in LATENCIES for p in PERCENTILES]
    sections = [
        {"title": "Run", "rows": header_rows(run, summary)},
        {"title": "Timing", "header": ["phase", "time", "note"], "rows": timing_rows(summary)},
        {"title": "Latency by step (ms)", "header": step_header, "rows": step_rows(summary)},
        *_agentic_sections(summary),
        {"title": "Workflows", "note": workflow_text(summary)},
        *([{"title": "TTFT", "note": text}] if (text := beyond_engine_text(summary)) else []),
        {"title": "Throughput", "note": throughput_text(summary)},
        {
            "title": "Prefix cache by step position",
            "header": ["position", "step", "prompt tokens", "cached", "hit ratio"],
            "rows": [cache_row(row) for row in summary.prefix_cache],
        },
        {"title": "Resources", "rows": resource_rows(summary)},
        *_engine_sections(summary),
    ]
    failures = failure_rows(run)
    if failures:
        sections.append(
            {"title": "Failures", "header": ["error type", "workflows", "first message"], "rows": failures}
        )
    return render_page(f"flowperf report: {summary.run.run_id}", sections, run_figures(run, summary))


def write_html(path: Path, page: str) -> None:
    from flowperf.rundir.durable import atomic_write_text

    atomic_write_text(path, page)


def write_requested_html(html: str | None, default: Path, build: Callable[[], str]) -> Path | None:
    """The page `--html` asked for (`html`: its value, see `options.html_path`), built and written
    atomically; where it went, or None when none was asked for (then nothing is built)."""
    from flowperf.cli.options import html_path

    page = html_path(html, default)
    if page is not None:
        write_html(page, build())
    return page


def print_run_table(summary: RunSummary, console: Console) -> None:
    """The end-of-run table: per step latency, each request's output rate and cache hits, then the
    run's totals (throughput there is the engine's: all output tokens over the measured window)."""
    columns = ("step", "p50", "p95", "p99", "ttft p50", "ttft p95", "ttft p99", "req tok/s", "cache hit")
    hits = {row.step_id: row.hit_ratio for row in summary.prefix_cache}
    rows = []
    for step_id, block in summary.latency_by_step.items():
        hit = hits.get(step_id)
        rows.append(
            (
                step_id,
                *(fmt(getattr(block.step_ms, p)) for p in PERCENTILES),
                *(fmt(getattr(block.ttft_ms, p)) for p in PERCENTILES),
                fmt(block.request_output_tokens_per_s),
                "-" if hit is None else f"{hit:.0%}",
            )
        )
    print_table(console, _table("per step (ms unless noted)", columns, rows, right=columns[1:]))
    counts, resources = summary.counts, summary.resources
    console.print(
        f"{counts.workflows_ok}/{counts.workflows_planned} workflows ok, "
        f"{counts.workflows_failed} failed; {fmt(summary.throughput.output_tokens_per_s)} output tokens/s; "
        f"peak RSS {fmt(resources.peak_rss_mb, 0)} MB harness, "
        f"{fmt(resources.peak_engine_rss_mb, 0)} MB engine processes"
    )
    if (text := sessions_text(summary)) is not None:
        console.print(f"sessions: {text}")
