"""Azure LLM inference traces (CSV: TIMESTAMP, ContextTokens, GeneratedTokens) as session traces of one
request each, read by flowperf's one loader of them (stress/traces.py). They carry no prefix information,
so every prompt block is unique. BurstGPT's CSV, which the same loader reads, comes in the same way."""

from __future__ import annotations

from pathlib import Path

from flowperf.sessions.format import TraceHeader, TraceRequest
from flowperf.sessions.importers._one_request import one_request_sessions


def read_azure(path: Path) -> tuple[TraceHeader, list[TraceRequest]]:
    return one_request_sessions(path, "azure")


def read_burstgpt(path: Path) -> tuple[TraceHeader, list[TraceRequest]]:
    return one_request_sessions(path, "burstgpt")
