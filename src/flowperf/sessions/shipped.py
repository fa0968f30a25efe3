"""Session traces shipped with flowperf (data/sessions/, all synthetic: see its README.md), by name, so
`bench trace stats coding-agent` and `bench replay coding-agent` work without a file of one's own."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flowperf.errors import UserError

SHIPPED_SESSIONS = {
    "coding-agent": "coding_agent.sessions.jsonl",
    "coding-agent-weka": "coding_agent.weka.jsonl",
    "coding-agent-otel": "coding_agent.otlp.json",
}


def shipped_session_trace(name: str) -> Path:
    """Path of a shipped session trace; an unknown name is a UserError listing the known ones."""
    if name not in SHIPPED_SESSIONS:
        raise UserError(
            f"{name}: no shipped session trace of that name (known: {', '.join(SHIPPED_SESSIONS)})"
        )
    return Path(str(resources.files("flowperf") / "data" / "sessions" / SHIPPED_SESSIONS[name]))


def session_trace_path(source: str | Path) -> Path:
    """A shipped trace's path for its name, else the path given."""
    return (
        shipped_session_trace(source)
        if isinstance(source, str) and source in SHIPPED_SESSIONS
        else Path(source)
    )
