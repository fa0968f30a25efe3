"""`bench trace`: look at a session trace (`stats`) and convert other formats into one (`import`).

Both accept any format the importers read (auto-detected from the content, or `--format`) and the names
of the shipped samples (`coding-agent`, `coding-agent-weka`, `coding-agent-otel`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from flowperf.outputs.tables import TableSpec, print_table
from flowperf.sessions.importers import FORMATS, convert_trace, import_trace
from flowperf.sessions.shipped import session_trace_path
from flowperf.sessions.stats import trace_stats

trace_app = typer.Typer(help="Inspect session traces and import other trace formats into them.")

FormatOption = Annotated[
    str | None,
    typer.Option("--format", help=f"Input format, instead of detecting it: {', '.join(FORMATS)}."),
]


@trace_app.callback(invoke_without_command=True)
def _show_help(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        Console().print(ctx.get_help())
        raise typer.Exit(0)


@trace_app.command("stats")
def stats(
    trace: Annotated[str, typer.Argument(help="Trace file (any supported format) or shipped sample name.")],
    format: FormatOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Sessions, requests, turns per session, prompt growth, think times, sub-agents and block reuse
    of a session trace (see sessions/stats.py for what each figure counts)."""
    figures = trace_stats(import_trace(session_trace_path(trace), format))
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    print_stats(Console(highlight=False, soft_wrap=True), str(trace), figures)


@trace_app.command("import")
def import_(
    source: Annotated[str, typer.Argument(help="Trace file (any supported format) or shipped sample name.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the flowperf-sessions file.")],
    format: FormatOption = None,
) -> None:
    """Convert a trace into the flowperf-sessions format (written whole or not at all)."""
    trace = convert_trace(session_trace_path(source), out, format)
    print(f"{out}: {len(trace.sessions)} sessions, {trace.request_count} requests ({trace.header.source})")


def stat_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) lines of the stats table, every number written in full."""
    rows = [
        (
            "source",
            figures["source"]
            + (" (synthetic)" if figures["synthetic"] and figures["source"] != "synthetic" else ""),
        ),
        ("hash ids", f"block size {figures['block_size']}, {figures['hash_scope']} scope"),
        ("sessions", str(figures["sessions"])),
        ("requests", str(figures["requests"])),
    ]
    for key, label in (
        ("requests_per_session", "requests per session"),
        ("turns_per_session", "turns per session (main agent)"),
        ("prompt_tokens", "prompt tokens"),
        ("output_tokens", "output tokens"),
        ("prompt_growth_tokens", "prompt growth per turn (tokens)"),
        ("think_ms", "think time (ms)"),
    ):
        rows.append((label, _distribution(figures[key])))
    agents = figures["subagents"]
    share = "" if agents["parallel_share"] is None else f" ({_pct(agents['parallel_share'])})"
    rows.append(("sub-agents", f"{agents['count']} in {agents['sessions_with_subagents']} sessions, "
                 f"{agents['requests']} requests"))  # fmt: skip
    rows.append(("  beside their parent", f"{agents['beside_parent']}{share}"))
    rows.append(("  concurrent with any other", str(agents["concurrent"])))
    reuse = figures["block_reuse"]
    rows.append(("blocks", f"{reuse['blocks']} in {reuse['requests_with_hash_ids']} requests with hash ids"))
    rows.append(("block reuse within session", _pct(reuse["within_session_share"])))
    rows.append(("block reuse across sessions", _pct(reuse["across_sessions_share"])))
    rows.append(("  of first requests", _pct(reuse["first_request_across_share"])))
    return rows


def _distribution(values: dict[str, Any]) -> str:
    if not values["count"]:
        return "none"
    return "  ".join(f"{key} {_number(value)}" for key, value in values.items())


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def print_stats(console: Console, title: str, figures: dict[str, Any]) -> None:
    """A key/value grid: boxed on a terminal, plain lines elsewhere; never a figure cut."""
    print_table(console, TableSpec(title, None, stat_rows(figures), boxed=True))
