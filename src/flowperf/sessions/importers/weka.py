"""Weka agentic-coding traces (the kv-cache-tester capture format AIPerf replays) as session traces.

A Weka trace is one JSON object per recorded conversation: `id`, `block_size` (tokens per KV block, 64
in the published captures), `hash_id_scope`, and `requests`, an ordered list mixing API calls (`type`
"n" normal, "s" streaming: `t` start in seconds from the conversation's start, `in`/`out` tokens,
`hash_ids`, `api_time` and `ttft` in seconds, `think_time`) with `type: "subagent"` entries that carry
their own `requests`. A file holds one such object, a JSON array of them, or one per line; a directory
holds one per `*.json` file.

Mapping (docs/session-trace.md says the same for users):
- session = one conversation (its `id`); `agent` = the path of sub-agent `agent_id`s ('' for the root).
- Each agent's calls form a chain: a call needs the agent's previous call.
- A sub-agent's first call needs the call that launched it (the agent's last call before the entry).
- A sub-agent with `status: "async_launched"` runs beside its parent: nothing of the parent waits for
  it. Any other status (`completed`, or a failure the parent still waited for) blocks: the parent's next
  call needs the sub-agent's last calls (the calls its own completion waited for, nested sub-agents
  included) instead of the parent's previous call, which those already needed.
- `local` hash scope stays local (ids are per session); a file mixing scopes is made global by moving
  each local conversation's ids into a range of its own, which keeps their meaning.
- Times: `start_ms` = `t` in ms (a sub-agent call's `t` before its entry's `t` is relative to the spawn,
  as older captures wrote it), shifted so the file's earliest call is 0; conversations share no clock, so
  they all start near 0 and replay load decides when each begins. `think_ms` = start minus the latest end
  (`t + api_time`) of its needs; the recorded `think_time` where an end is unknown.

The models below are this importer's input contract and are private to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowperf.errors import UserError
from flowperf.sessions.format import TraceHeader, TraceRequest
from flowperf.sessions.importers._common import (
    FreshIds,
    covering,
    json_documents,
    located,
    validation_problem,
)

_TAGS = frozenset({"n", "s", "subagent"})


class _Model(BaseModel):
    # fields this importer does not use (input_types, stop, totals, ...) are accepted and ignored, so a
    # newer capture with more fields still imports
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Call(_Model):
    t: float = Field(allow_inf_nan=False)
    type: Literal["n", "s"]
    model: str | None = None
    input_length: int = Field(alias="in", ge=1)
    output_length: int = Field(alias="out", ge=1)
    hash_ids: list[int] = Field(default_factory=list)
    api_time: float | None = Field(None, ge=0, allow_inf_nan=False)
    think_time: float | None = Field(None, ge=0, allow_inf_nan=False)
    ttft: float | None = Field(None, ge=0, allow_inf_nan=False)


class _Subagent(_Model):
    t: float = Field(allow_inf_nan=False)
    type: Literal["subagent"]
    agent_id: str = Field(min_length=1)
    subagent_type: str | None = None
    status: str
    # nested sub-agents are an extension of the published format (AIPerf's loader takes calls only here)
    requests: list[Annotated[_Call | _Subagent, Field(discriminator="type")]] = Field(default_factory=list)


_Subagent.model_rebuild()


class _Trace(_Model):
    id: str = Field(min_length=1)
    block_size: int = Field(gt=0)
    hash_id_scope: Literal["local", "global"] = "local"
    requests: list[Annotated[_Call | _Subagent, Field(discriminator="type")]]


@dataclass
class _Placed:
    """A call placed in its session: ids, needs and absolute times worked out."""

    call: _Call
    id: str
    agent: str
    needs: list[str]
    start_s: float

    @property
    def end_s(self) -> float | None:
        return None if self.call.api_time is None else self.start_s + self.call.api_time


@dataclass
class _Walk:
    """Walking one conversation: the calls placed so far, numbered in the order met."""

    session: str
    placed: list[_Placed] = field(default_factory=list)

    def place(self, call: _Call, agent: str, needs: list[str], start_s: float) -> str:
        request_id = f"{self.session}:{len(self.placed)}"
        self.placed.append(_Placed(call, request_id, agent, needs, start_s))
        return request_id

    def agent(
        self, entries: list[Any], path: str, entry_needs: list[str], spawn_s: float | None
    ) -> list[str]:
        """Place one agent's calls and sub-agents; returns what a call waiting for this agent needs."""
        last_own: list[str] = []
        blocking: list[str] = []
        for entry in entries:
            if isinstance(entry, _Call):
                start = entry.t if spawn_s is None or entry.t >= spawn_s else spawn_s + entry.t
                needs = blocking or last_own or entry_needs
                last_own, blocking = [self.place(entry, path, needs, start)], []
                continue
            launch = last_own or entry_needs
            child = f"{path}/{entry.agent_id}" if path else entry.agent_id
            spawn = entry.t if spawn_s is None or entry.t >= spawn_s else spawn_s + entry.t
            tail = self.agent(entry.requests, child, launch, spawn)
            if entry.status != "async_launched" and tail != launch:
                blocking = _merged(blocking, tail)
        return blocking or last_own or entry_needs


def _merged(first: list[str], second: list[str]) -> list[str]:
    return first + [item for item in second if item not in first]


def read_weka(path: Path) -> tuple[TraceHeader, list[TraceRequest]]:
    """The conversations of a Weka file (or directory of files) as one session trace."""
    traces = [(where, trace) for where, trace in _traces(path)]
    if not traces:
        raise UserError(f"{path}: no Weka conversation in it")
    block_sizes = {trace.block_size for _, trace in traces}
    if len(block_sizes) > 1:
        (where, line), trace = next((w, t) for w, t in traces if t.block_size != traces[0][1].block_size)
        raise located(where, line, f"$.block_size: {trace.block_size}, but an earlier conversation has "
                      f"{traces[0][1].block_size} (one trace has one block size)")  # fmt: skip
    seen: dict[str, tuple[Path, int | None]] = {}
    for (where, line), trace in traces:
        if trace.id in seen:
            raise located(where, line, f"$.id: {trace.id!r} is repeated (first at {_place(*seen[trace.id])})")
        seen[trace.id] = (where, line)
    scopes = {trace.hash_id_scope for _, trace in traces}
    scope: Literal["local", "global"] = "local" if scopes == {"local"} else "global"
    block_size = block_sizes.pop()
    walks = [_walk(trace) for _, trace in traces]
    shifts = _id_shifts(traces, walks, scope)
    origin = min(call.start_s for walk in walks for call in walk.placed)
    fresh = FreshIds(max((max(c.call.hash_ids, default=-1) + shifts[i] for i, w in enumerate(walks)
                          for c in w.placed), default=-1))  # fmt: skip
    requests = []
    for ((where, line), _), walk, shift in zip(traces, walks, shifts, strict=True):
        ends = {call.id: call.end_s for call in walk.placed}
        first = min(call.start_s for call in walk.placed)
        for call in walk.placed:
            ids = covering([h + shift for h in call.call.hash_ids], call.call.input_length, block_size, fresh)
            if isinstance(ids, str):
                raise located(where, line, f"request {call.id}: hash_ids: {ids}")
            requests.append(_request(call, ids, origin, _think_s(call, ends, first)))
    models = {request.model for request in requests}
    header = TraceHeader(
        block_size=block_size, hash_scope=scope, source="weka",
        model=models.pop() if len(models) == 1 else None,
        notes=f"imported from {path.name} ({len(traces)} conversations)",
    )  # fmt: skip
    return header, requests


def _place(path: Path, line: int | None) -> str:
    return f"{path} line {line}" if line is not None else str(path)


def _traces(path: Path) -> list[tuple[tuple[Path, int | None], _Trace]]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    found = []
    for file in files:
        for line, document in json_documents(file):
            items = document if isinstance(document, list) else [document]
            for index, item in enumerate(items):
                prefix = [index] if isinstance(document, list) else []
                if not isinstance(item, dict):
                    raise located(
                        file, line, f"$: expected a Weka conversation object, got {type(item).__name__}"
                    )
                try:
                    found.append(((file, line), _Trace.model_validate(item)))
                except ValidationError as error:
                    raise validation_problem(file, line, error, prefix, _TAGS) from None
    return found


def _walk(trace: _Trace) -> _Walk:
    walk = _Walk(trace.id)
    walk.agent(trace.requests, "", [], None)
    if not walk.placed:
        raise UserError(f"Weka conversation {trace.id!r} has no API call")
    return walk


def _id_shifts(traces: list[Any], walks: list[_Walk], scope: str) -> list[int]:
    """How much to add to each conversation's hash ids: 0, except local conversations in a global trace,
    each moved into a range of its own above every id in use."""
    if scope == "local":
        return [0] * len(walks)
    top = max((h for walk in walks for call in walk.placed for h in call.call.hash_ids), default=-1) + 1
    shifts = []
    for (_, trace), walk in zip(traces, walks, strict=True):
        if trace.hash_id_scope == "global":
            shifts.append(0)
            continue
        shifts.append(top)
        top += max((h for call in walk.placed for h in call.call.hash_ids), default=-1) + 1
    return shifts


def _think_s(call: _Placed, ends: dict[str, float | None], session_start: float) -> float:
    if not call.needs:
        return max(0.0, call.start_s - session_start)
    need_ends = [ends[need] for need in call.needs]
    if any(end is None for end in need_ends):
        return call.call.think_time or 0.0
    return max(0.0, call.start_s - max(need_ends))  # type: ignore[type-var]


def _request(call: _Placed, hash_ids: list[int], origin: float, think_s: float) -> TraceRequest:
    source = call.call
    start_ms = round((call.start_s - origin) * 1000.0, 3)  # to the microsecond: no float dust
    latency = None if source.api_time is None else round(source.api_time * 1000.0, 3)
    return TraceRequest(
        session=call.id.rsplit(":", 1)[0], id=call.id, needs=call.needs,
        start_ms=start_ms, end_ms=None if latency is None else start_ms + latency,
        think_ms=round(think_s * 1000.0, 3),
        prompt_tokens=source.input_length, output_tokens=source.output_length, hash_ids=hash_ids,
        ttft_ms=None if source.ttft is None else source.ttft * 1000.0, latency_ms=latency,
        streaming=source.type == "s", agent=call.agent, model=source.model,
    )  # fmt: skip
