"""The session-trace format (version 1): what `bench record` writes, what importers produce, what
`bench replay` and `bench stress --sessions` read.

JSON Lines, so a recorder can append one answered request at a time and a killed recorder loses nothing
already written: the first line is a `header`, every later line one `request`. A session is the set of
requests that share a `session` id; its shape (which request waits for which, how long the agent paused
before each) is kept as `needs` and `think_ms`, not as nesting, so sub-agents, parallel tool calls and
plain chains are one structure. The JSON Schema is `docs/session-trace.schema.json` (written from these
models by `schema_document`, and checked against them in the tests).

Times are milliseconds. `start_ms`/`end_ms` count from the trace's first request on the recorder's clock;
`think_ms` is the pause the agent took between the end of the last of its `needs` (or the session's start,
for a request with none) and this request's start: replay honours it, scaled or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flowperf.errors import UserError
from flowperf.rundir.durable import DurableLog
from flowperf.validation import describe_validation_error

FORMAT_NAME = "flowperf-sessions"
FORMAT_VERSION = 1


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TraceHeader(_Line):
    """The first line: how to read the hash ids, and where the trace came from."""

    type: Literal["header"] = "header"
    format: Literal["flowperf-sessions"] = FORMAT_NAME
    version: Literal[1] = FORMAT_VERSION
    block_size: int = Field(gt=0, description="prompt tokens per hash id (the last block may be partial)")
    hash_scope: Literal["global", "local"] = Field(
        "global",
        description="global: equal hash ids are the same tokens in any session; local: only within one",
    )
    source: str = Field(description="recorded, weka, otel, mooncake, azure, synthetic, ...")
    synthetic: bool = False
    model: str | None = None
    created: str | None = None
    notes: str | None = None


class RequestText(_Line):
    """What was said, kept only when the recorder was asked to (`--keep-text`) or the source had it."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    output: str | None = None


class TraceRequest(_Line):
    """One LLM call of one session."""

    type: Literal["request"] = "request"
    session: str = Field(min_length=1)
    id: str = Field(min_length=1, description="unique in the trace")
    needs: list[str] = Field(default_factory=list, description="requests of this session it waits for")
    start_ms: float = Field(ge=0)
    end_ms: float | None = Field(None, ge=0)
    think_ms: float = Field(0.0, ge=0)
    prompt_tokens: int = Field(ge=1)
    output_tokens: int = Field(ge=1)
    hash_ids: list[int] = Field(default_factory=list)
    ttft_ms: float | None = Field(None, ge=0)
    latency_ms: float | None = Field(None, ge=0)
    api: Literal["chat", "completions"] | None = None
    streaming: bool | None = None
    agent: str = Field("", description="sub-agent path: '' for the main agent, 'explore', 'explore/grep'")
    model: str | None = None
    text: RequestText | None = None

    @model_validator(mode="after")
    def _times_in_order(self) -> TraceRequest:
        if self.end_ms is not None and self.end_ms < self.start_ms:
            raise ValueError("end_ms is before start_ms")
        if self.id in self.needs:
            raise ValueError("a request cannot need itself")
        return self


@dataclass
class Session:
    """One session's requests in recorded start order."""

    id: str
    requests: list[TraceRequest] = field(default_factory=list)

    @property
    def start_ms(self) -> float:
        return self.requests[0].start_ms


@dataclass
class SessionTrace:
    header: TraceHeader
    sessions: list[Session]

    def requests(self) -> Iterator[TraceRequest]:
        for session in self.sessions:
            yield from session.requests

    @property
    def request_count(self) -> int:
        return sum(len(session.requests) for session in self.sessions)


def blocks_for(prompt_tokens: int, block_size: int) -> int:
    """How many hash ids cover a prompt of this length (the last block may be partial)."""
    return math.ceil(prompt_tokens / block_size)


def check_hash_ids(request: TraceRequest, block_size: int) -> str | None:
    """Why a request's hash ids cannot cover its prompt, or None (no hash ids: every block is unique)."""
    if not request.hash_ids:
        return None
    expected = blocks_for(request.prompt_tokens, block_size)
    if len(request.hash_ids) != expected:
        return (
            f"hash_ids: {len(request.hash_ids)} blocks for {request.prompt_tokens} prompt tokens "
            f"(block_size {block_size} needs {expected})"
        )
    return None


def _problem(path: Path, line: int, message: str) -> UserError:
    return UserError(f"{path}:{line}: {message}")


def _parse_line(path: Path, number: int, text: str, model: type[_Line]) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _problem(path, number, f"not JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise _problem(path, number, "expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _problem(path, number, describe_validation_error(error)) from None


def _check_needs(path: Path, sessions: dict[str, Session], lines: dict[str, int]) -> None:
    """Needs name requests of the same session, and no request waits (transitively) for itself."""
    for session in sessions.values():
        known = {request.id for request in session.requests}
        for request in session.requests:
            for need in request.needs:
                if need not in known:
                    raise _problem(
                        path, lines[request.id], f"needs: {need!r} is not a request of session {session.id!r}"
                    )
        _check_acyclic(path, session, lines)


def _check_acyclic(path: Path, session: Session, lines: dict[str, int]) -> None:
    needs = {request.id: request.needs for request in session.requests}
    state: dict[str, int] = {}
    for root in needs:
        stack = [(root, iter(needs[root]))]
        state[root] = state.get(root, 0) or 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                raise _problem(
                    path, lines[child], f"needs: session {session.id!r} has a cycle through {child!r}"
                )
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(needs[child])))


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Complete lines with their line numbers; a torn last line (a writer killed mid-line) is left out."""
    with path.open(encoding="utf-8", errors="replace", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                return
            yield number, line[:-1]


def read_trace(path: Path) -> SessionTrace:
    """Read and check a session trace; any problem is one line naming the file, line and field."""
    if not path.is_file():
        raise UserError(f"{path}: no such session trace")
    header: TraceHeader | None = None
    sessions: dict[str, Session] = {}
    line_of: dict[str, int] = {}
    for number, text in _numbered_lines(path):
        if not text.strip():
            continue
        if header is None:
            header = _parse_line(path, number, text, TraceHeader)
            continue
        request: TraceRequest = _parse_line(path, number, text, TraceRequest)
        if request.id in line_of:
            raise _problem(path, number, f"id: {request.id!r} already used on line {line_of[request.id]}")
        problem = check_hash_ids(request, header.block_size)
        if problem:
            raise _problem(path, number, problem)
        line_of[request.id] = number
        sessions.setdefault(request.session, Session(request.session)).requests.append(request)
    if header is None:
        raise UserError(f"{path}: empty session trace (expected a header line)")
    if not sessions:
        raise UserError(f"{path}: the trace has a header but no requests")
    _check_needs(path, sessions, line_of)
    ordered = sorted(sessions.values(), key=lambda s: (min(r.start_ms for r in s.requests), s.id))
    for session in ordered:
        session.requests.sort(key=lambda r: (r.start_ms, line_of[r.id]))
    return SessionTrace(header=header, sessions=ordered)


def is_session_trace(path: Path) -> bool:
    """Whether the file's first line is this format's header (used by importers' auto-detection)."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
        data = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def dump_line(line: _Line) -> str:
    return json.dumps(line.model_dump(mode="json", exclude_none=True), separators=(",", ":")) + "\n"


class TraceWriter:
    """Appends a trace line by line: each line reaches the OS at once and the disk within a moment, so a
    killed writer loses nothing it already wrote (the reader drops a torn last line)."""

    def __init__(self, path: Path, header: TraceHeader) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._log = DurableLog(path)
        self._log.append(dump_line(header))

    def write(self, request: TraceRequest) -> None:
        self._log.append(dump_line(request))

    def close(self) -> None:
        self._log.close()


def write_trace(path: Path, header: TraceHeader, requests: Iterable[TraceRequest]) -> None:
    """Write a whole trace (importers, sample generators)."""
    writer = TraceWriter(path, header)
    try:
        for request in requests:
            writer.write(request)
    finally:
        writer.close()


def schema_document() -> dict[str, Any]:
    """The JSON Schema of one trace line (either kind), as published in docs/session-trace.schema.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{FORMAT_NAME} version {FORMAT_VERSION}: one line of a session trace",
        "oneOf": [{"$ref": "#/$defs/TraceHeader"}, {"$ref": "#/$defs/TraceRequest"}],
        "$defs": {
            "TraceHeader": TraceHeader.model_json_schema(),
            "TraceRequest": _request_schema(),
        },
    }


def _request_schema() -> dict[str, Any]:
    return TraceRequest.model_json_schema(ref_template="#/$defs/TraceRequest/$defs/{model}")


def trace_of(header: TraceHeader, requests: Iterable[TraceRequest]) -> SessionTrace:
    """Requests already in memory (an importer's output) grouped into sessions, ordered as `read_trace`
    orders a file's: sessions by their first start, requests by start then by the order given."""
    sessions: dict[str, Session] = {}
    for request in requests:
        sessions.setdefault(request.session, Session(request.session)).requests.append(request)
    for session in sessions.values():
        session.requests.sort(key=lambda r: r.start_ms)
    ordered = sorted(sessions.values(), key=lambda s: (s.start_ms, s.id))
    return SessionTrace(header=header, sessions=ordered)
