"""Importers: other trace formats turned into the session-trace format (sessions/format.py).

`import_trace(path, format=None)` reads any supported file into a `SessionTrace`; `detect_format` tells
the format from the content (not from the file name), and a native flowperf-sessions file passes through
unchanged. Each importer module keeps its own private pydantic models as its input contract; a bad input
is one UserError naming the file, the line (JSON Lines) or JSON path, and the field.
May import: sessions.format, stress.traces (the request-trace loaders), errors, validation.
Must not import: cli, run, outputs, modes, workers, diagnostics, engines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowperf.errors import UserError
from flowperf.sessions.format import (
    FORMAT_NAME,
    SessionTrace,
    TraceHeader,
    TraceRequest,
    read_trace,
    trace_of,
)
from flowperf.sessions.format import write_trace as _write_trace

Reader = Callable[[Path], tuple[TraceHeader, list[TraceRequest]]]


def _readers() -> dict[str, Reader]:
    from flowperf.sessions.importers.azure import read_azure, read_burstgpt
    from flowperf.sessions.importers.mooncake import read_mooncake
    from flowperf.sessions.importers.otel import read_otel
    from flowperf.sessions.importers.weka import read_weka

    return {"weka": read_weka, "otel": read_otel, "mooncake": read_mooncake, "azure": read_azure,
            "burstgpt": read_burstgpt}  # fmt: skip


FORMATS = (FORMAT_NAME, "weka", "otel", "mooncake", "azure", "burstgpt")


def detect_format(path: Path) -> str:
    """The format of a trace file from its content: its first JSON document's keys, or its CSV header."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.json")):
            return "weka"
        raise UserError(f"{path}: a directory without *.json files is no trace")
    if not path.is_file():
        raise UserError(f"{path}: no such trace file")
    first = _first_line(path)
    document = _first_document(path, first)
    if document is None:
        columns = {name.strip() for name in first.split(",")}
        if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= columns:
            return "azure"
        if {"Request tokens", "Response tokens"} <= columns:
            return "burstgpt"
    else:
        kind = _kind_of(document[0] if isinstance(document, list) and document else document)
        if kind:
            return kind
    raise UserError(
        f"{path}: cannot tell the trace format from its content; pass --format ({', '.join(FORMATS)})"
    )


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as handle:
            return next((line.strip() for line in handle if line.strip()), "")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so no trace format flowperf reads") from None


def _first_document(path: Path, first: str) -> Any:
    """The first line as JSON, else the whole file when it looks like one JSON document, else None."""
    try:
        return json.loads(first)
    except json.JSONDecodeError:
        pass
    if first[:1] in ("{", "["):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: line {error.lineno}: not JSON ({error.msg})") from None
    return None


def _kind_of(document: Any) -> str | None:
    if not isinstance(document, dict):
        return None
    if document.get("format") == FORMAT_NAME:
        return FORMAT_NAME
    if "resourceSpans" in document:
        return "otel"
    if "requests" in document and "block_size" in document:
        return "weka"
    if {"timestamp", "input_length", "output_length"} <= document.keys():
        return "mooncake"
    return None


def import_trace(path: Path, format: str | None = None) -> SessionTrace:
    """Any supported trace file as a session trace; `format` overrides detection."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise UserError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if not path.exists():
        raise UserError(f"{path}: no such trace file")
    kind = format or detect_format(path)
    if kind == FORMAT_NAME:
        return read_trace(path)
    header, requests = _readers()[kind](path)
    return trace_of(header, requests)


def convert_trace(source: Path, out: Path, format: str | None = None) -> SessionTrace:
    """Import `source` and write it as a flowperf-sessions file at `out`. The whole input is read and
    checked first and the file appears complete or not at all (written beside it, then renamed)."""
    trace = import_trace(source, format)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)  # the writer appends: never to a leftover of an earlier attempt
    try:
        _write_trace(partial, trace.header, trace.requests())
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return trace
