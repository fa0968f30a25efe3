"""Mooncake request traces (JSONL: timestamp in ms, input_length, output_length, hash_ids of 512-token
blocks) as session traces of one request each, read by flowperf's one Mooncake loader (stress/traces.py).
The hash ids are kept, global in scope: requests with equal leading ids share a prompt prefix."""

from __future__ import annotations

from pathlib import Path

from flowperf.sessions.format import TraceHeader, TraceRequest
from flowperf.sessions.importers._one_request import one_request_sessions


def read_mooncake(path: Path) -> tuple[TraceHeader, list[TraceRequest]]:
    return one_request_sessions(path, "mooncake")
