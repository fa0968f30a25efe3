"""OpenTelemetry GenAI spans, exported as OTLP JSON, as session traces.

The file is an OTLP export (`{"resourceSpans": [{"scopeSpans": [{"spans": [...]}]}]}`), whole or one
export per line as the collector's file exporter writes it. Attributes are OTLP key/value lists.

Mapping (docs/session-trace.md says the same for users):
- session = trace id. An LLM call is a span whose `gen_ai.operation.name` is chat, text_completion or
  generate_content (or, without an operation name, one that carries `gen_ai.usage.input_tokens`); an LLM
  span inside another (a framework span around the client library's span) is the same call, counted once
  as the outer one. Tokens: `gen_ai.usage.input_tokens`/`output_tokens` (the older `prompt_tokens`/
  `completion_tokens` too); model: `gen_ai.request.model`, else `gen_ai.response.model`.
- Agents are `invoke_agent` spans; a call belongs to its nearest agent span (the trace itself when none);
  `agent` is the path of agent names (`gen_ai.agent.name`, else the span name) below the outermost agent.
- Needs, from time order under one agent: among the agent's calls and direct sub-agent spans, an item that
  starts after another ended needs it (only the latest such items, the rest are implied); items that
  overlap run in parallel. Needing a sub-agent means needing its last calls; a sub-agent's first calls
  need what the sub-agent span itself needs. A sub-agent that ends before the parent's next call is read
  as awaited: timing alone cannot tell it from one that merely finished early.
- Times: start/end from the span's nanosecond stamps, in ms from the file's earliest LLM call; think_ms
  = start minus the latest end among its needs (minus the session's first call for a call with none).
- Hash ids: none (every block unique), unless the span carries its prompt's token ids as an integer array
  attribute `flowperf.prompt_token_ids`: then chained hashes of 64-token blocks, shared across sessions.

The models below are this importer's input contract and are private to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowperf.errors import UserError
from flowperf.sessions.format import TraceHeader, TraceRequest
from flowperf.sessions.importers._common import (
    FreshIds,
    chained_block_hashes,
    covering,
    json_documents,
    validation_problem,
)

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
AGENT_OPERATION = "invoke_agent"
TOKEN_IDS = "flowperf.prompt_token_ids"
BLOCK_SIZE = 64
_INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Value(_Model):
    string_value: str | None = Field(None, alias="stringValue")
    bool_value: bool | None = Field(None, alias="boolValue")
    int_value: int | None = Field(None, alias="intValue")  # OTLP JSON writes 64-bit ints as strings
    double_value: float | None = Field(None, alias="doubleValue")
    array_value: _Array | None = Field(None, alias="arrayValue")

    def plain(self) -> Any:
        if self.array_value is not None:
            return [value.plain() for value in self.array_value.values]
        for value in (self.string_value, self.bool_value, self.int_value, self.double_value):
            if value is not None:
                return value
        return None


class _Array(_Model):
    values: list[_Value] = Field(default_factory=list)


_Value.model_rebuild()


class _KeyValue(_Model):
    key: str
    value: _Value


class _Span(_Model):
    trace_id: str = Field(alias="traceId", min_length=1)
    span_id: str = Field(alias="spanId", min_length=1)
    parent_span_id: str = Field("", alias="parentSpanId")
    name: str = ""
    start: int = Field(alias="startTimeUnixNano", ge=0)
    end: int = Field(alias="endTimeUnixNano", ge=0)
    attributes: list[_KeyValue] = Field(default_factory=list)


class _ScopeSpans(_Model):
    spans: list[_Span] = Field(default_factory=list)


class _ResourceSpans(_Model):
    scope_spans: list[_ScopeSpans] = Field(default_factory=list, alias="scopeSpans")


class _Export(_Model):
    resource_spans: list[_ResourceSpans] = Field(alias="resourceSpans")


@dataclass
class _Node:
    """A span of interest: an LLM call or an agent, with where it came from (for error messages)."""

    span: _Span
    attrs: dict[str, Any]
    where: str
    is_agent: bool
    items: list[_Node] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    terminals: list[str] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.span.start

    @property
    def end(self) -> int:
        return self.span.end


def read_otel(path: Path) -> tuple[TraceHeader, list[TraceRequest]]:
    """The LLM calls of an OTLP JSON export as one session trace (one session per trace id)."""
    spans = _spans(path)
    traces: dict[str, list[tuple[_Span, str]]] = {}
    for span, where in spans:
        traces.setdefault(span.trace_id, []).append((span, where))
    calls: list[tuple[_Node, str]] = []
    for trace_spans in traces.values():
        calls.extend(_trace_calls(path, trace_spans))
    if not calls:
        raise UserError(f"{path}: no LLM span (gen_ai.operation.name chat/text_completion/...) in it")
    origin = min(node.start for node, _ in calls)
    by_id = {node.span.span_id: node for node, _ in calls}
    first = {}
    for node, _ in calls:
        first[node.span.trace_id] = min(first.get(node.span.trace_id, node.start), node.start)
    fresh = FreshIds(-1)
    requests = [_request(path, node, agent, origin, by_id, first, fresh) for node, agent in calls]
    models = {request.model for request in requests}
    header = TraceHeader(
        block_size=BLOCK_SIZE, hash_scope="global", source="otel",
        model=models.pop() if len(models) == 1 else None,
        notes=f"imported from {path.name} ({len(traces)} traces)",
    )  # fmt: skip
    return header, requests


def _spans(path: Path) -> list[tuple[_Span, str]]:
    found = []
    seen: set[tuple[str, str]] = set()
    for line, document in json_documents(path):
        try:
            export = _Export.model_validate(document)
        except ValidationError as error:
            raise validation_problem(path, line, error) from None
        prefix = f"line {line}: " if line is not None else ""
        for r, resource in enumerate(export.resource_spans):
            for s, scope in enumerate(resource.scope_spans):
                for k, span in enumerate(scope.spans):
                    where = f"{prefix}$.resourceSpans[{r}].scopeSpans[{s}].spans[{k}]"
                    if span.end < span.start:
                        raise UserError(f"{path}: {where}.endTimeUnixNano: before startTimeUnixNano")
                    if (span.trace_id, span.span_id) in seen:
                        raise UserError(f"{path}: {where}.spanId: {span.span_id!r} is repeated in its trace")
                    seen.add((span.trace_id, span.span_id))
                    found.append((span, where))
    return found


def _trace_calls(path: Path, spans: list[tuple[_Span, str]]) -> list[tuple[_Node, str]]:
    """The trace's LLM calls with their needs worked out, each with its agent path."""
    by_id = {span.span_id: (span, where) for span, where in spans}
    nodes: dict[str, _Node] = {}
    for span, where in spans:
        attrs = {kv.key: kv.value.plain() for kv in span.attributes}
        operation = attrs.get("gen_ai.operation.name")
        is_llm = operation in LLM_OPERATIONS or (operation is None and _INPUT_KEYS[0] in attrs)
        if is_llm or operation == AGENT_OPERATION:
            nodes[span.span_id] = _Node(span, attrs, where, is_agent=not is_llm)
    root = _Node(spans[0][0], {}, "", is_agent=True)
    paths: dict[int, str] = {id(root): ""}
    calls: list[tuple[_Node, str]] = []
    for node in sorted(nodes.values(), key=lambda n: _depth(n.span, by_id)):  # owners before their items
        ancestors = _ancestors(node.span, by_id, nodes)
        if not node.is_agent and any(not a.is_agent for a in ancestors):
            continue  # the same call seen again by an inner instrumentation
        outer = [a for a in ancestors if a.is_agent]
        owner = outer[0] if outer else root
        owner.items.append(node)
        if not node.is_agent:
            calls.append((node, paths[id(owner)]))
        elif outer:  # below the outermost agent: its path names every agent but the outermost
            paths[id(node)] = "/".join([_agent_name(a) for a in reversed(outer[:-1])] + [_agent_name(node)])
        else:
            paths[id(node)] = ""
    _place_needs(root, [])
    return calls


def _agent_name(node: _Node) -> str:
    return str(node.attrs.get("gen_ai.agent.name") or node.span.name or node.span.span_id)


def _depth(span: _Span, by_id: dict[str, tuple[_Span, str]]) -> int:
    depth = 0
    while span.parent_span_id in by_id and depth < len(by_id):
        span, depth = by_id[span.parent_span_id][0], depth + 1
    return depth


def _ancestors(span: _Span, by_id: dict[str, tuple[_Span, str]], nodes: dict[str, _Node]) -> list[_Node]:
    """The LLM and agent spans above `span`, nearest first (spans of other kinds are passed through)."""
    found = []
    for _ in range(len(by_id)):
        if span.parent_span_id not in by_id:
            break
        span = by_id[span.parent_span_id][0]
        if span.span_id in nodes:
            found.append(nodes[span.span_id])
    return found


def _place_needs(agent: _Node, entry: list[str]) -> None:
    """Needs of the agent's items from their time order; the agent's terminals are what a later item
    waiting for the whole agent needs."""
    items = sorted(agent.items, key=lambda n: (n.start, n.end))
    needed: set[int] = set()
    for item in items:
        ended = [other for other in items if other is not item and other.end <= item.start]
        frontier = [a for a in ended if not any(c is not a and c.start >= a.end for c in ended)]
        needed.update(id(a) for a in frontier)
        needs: list[str] = []
        for a in frontier:
            needs += [t for t in a.terminals if t not in needs]
        item.needs = needs if frontier else list(entry)
        if item.is_agent:
            _place_needs(item, item.needs)
        else:
            item.terminals = [item.span.span_id]
    sinks = [item for item in items if id(item) not in needed]
    terminals: list[str] = []
    for sink in sinks:
        terminals += [t for t in sink.terminals if t not in terminals]
    agent.terminals = terminals or list(entry)


def _tokens(path: Path, node: _Node, keys: tuple[str, ...]) -> int:
    value = next((node.attrs[key] for key in keys if key in node.attrs), None)
    if value is None:
        raise UserError(f"{path}: {node.where}.attributes: {keys[0]} is missing on an LLM span")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1 or value != int(value):
        raise UserError(
            f"{path}: {node.where}.attributes: {keys[0]} must be a whole number >= 1, got {value!r}"
        )
    return int(value)


def _request(
    path: Path, node: _Node, agent: str, origin: int, by_id: dict[str, _Node], first: dict[str, int],
    fresh: FreshIds,
) -> TraceRequest:  # fmt: skip
    prompt = _tokens(path, node, _INPUT_KEYS)
    hash_ids: list[int] = []
    token_ids = node.attrs.get(TOKEN_IDS)
    if token_ids is not None:
        if not isinstance(token_ids, list) or not all(isinstance(t, int) for t in token_ids):
            raise UserError(f"{path}: {node.where}.attributes: {TOKEN_IDS} must be an array of integers")
        covered = covering(chained_block_hashes(token_ids, BLOCK_SIZE), prompt, BLOCK_SIZE, fresh)
        if isinstance(covered, str):
            raise UserError(f"{path}: {node.where}.attributes: {TOKEN_IDS}: {covered}")
        hash_ids = covered
    need_end = max((by_id[need].end for need in node.needs), default=first[node.span.trace_id])
    operation = node.attrs.get("gen_ai.operation.name")
    model = node.attrs.get("gen_ai.request.model") or node.attrs.get("gen_ai.response.model")
    return TraceRequest(
        session=node.span.trace_id, id=node.span.span_id, needs=node.needs,
        start_ms=(node.start - origin) / 1e6, end_ms=(node.end - origin) / 1e6,
        think_ms=max(0, node.start - need_end) / 1e6, prompt_tokens=prompt,
        output_tokens=_tokens(path, node, _OUTPUT_KEYS), hash_ids=hash_ids,
        latency_ms=(node.end - node.start) / 1e6,
        api={"chat": "chat", "text_completion": "completions"}.get(str(operation)),
        agent=agent, model=str(model) if model else None,
    )  # fmt: skip
