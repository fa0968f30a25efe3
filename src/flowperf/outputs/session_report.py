"""A session replay's job-level results in words and rows, for the terminal and HTML reports
(`summary.sessions`; the per-session time split and the turn-depth table are the report's own)."""

from __future__ import annotations

from typing import Any

from flowperf.rundir.summary_schema import RunSummary, SessionResults, ThinkGapGroup


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _seconds(ms: float | None) -> str:
    return "" if ms is None else f"{ms / 1000.0:g}"


def think_gap_label(group: ThinkGapGroup) -> str:
    """`0-1 s`, `30+ s`: the bucket of pauses before the requests."""
    if group.think_below_ms is None:
        return f"{_seconds(group.think_from_ms)}+ s"
    return f"{_seconds(group.think_from_ms)}-{_seconds(group.think_below_ms)} s"


def think_gap_rows(sessions: SessionResults, turn_cells: Any) -> list[list[str]]:
    """Requests by the pause before them, with the report's turn columns (`turn_cells`)."""
    return [[think_gap_label(group), *turn_cells(group)] for group in sessions.by_think_gap]


def sessions_text(summary: RunSummary) -> str | None:
    """Sessions, requests, session latency percentiles and goodput in one line; None for other runs."""
    sessions = summary.sessions
    if sessions is None:
        return None
    latency = sessions.session_latency_ms
    text = (
        f"{sessions.sessions_ok}/{sessions.sessions} sessions ok, {sessions.requests} requests "
        f"({_fmt(sessions.requests_per_session.mean)} per session); session latency p50/p95/p99 "
        f"{_fmt(latency.p50)} / {_fmt(latency.p95)} / {_fmt(latency.p99)} ms; think time mean "
        f"{_fmt(sessions.think_ms.mean)} ms"
    )
    goodput = sessions.goodput
    if goodput is not None:
        share = "-" if goodput.attainment is None else f"{goodput.attainment:.1%}"
        missed = ", ".join(f"{o.name} missed by {o.missed}" for o in goodput.objectives if o.missed)
        text += (
            f"; goodput {goodput.good}/{goodput.sessions} sessions ({share}) meet {goodput.slo}, "
            f"{_fmt(goodput.goodput_per_s, 2)} good sessions/s" + (f" ({missed})" if missed else "")
        )
    return text
