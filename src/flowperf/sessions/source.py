"""`bench replay SESSIONS`: a session trace as the run's workflows, one workflow per session.

A session's plan is its requests as LLM nodes with their recorded needs, each preceded by a think node of
its recorded pause (`--think-time`, and `--time-scale` which also speeds the sessions' arrivals), so a
workflow's critical path splits into LLM time and think time exactly as a live agent's would, and
parallel sub-agent requests (requests whose needs are met together) run at once. Prompts are token ids
synthesized from the hash ids (`sessions.synthesis`), so the engine's prefix cache sees the reuse the
trace recorded; every request generates exactly its recorded output length (`ignore_eos`). Request
traces (Mooncake, Azure, BurstGPT) keep their own source, `flows.trace_source`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowperf.config import RunConfig, TraceConfig
from flowperf.engines.base import TokenPrompt
from flowperf.errors import UserError
from flowperf.flows.expand import ExpandedFlow
from flowperf.flows.plan import PlannedNode, StepSpec
from flowperf.flows.source import TokenIdSource, WorkflowSource
from flowperf.flows.trace_source import load_requests, token_range, vocab_size
from flowperf.sessions import shipped as shipped_sessions
from flowperf.sessions.format import Session, SessionTrace, TraceRequest, is_session_trace
from flowperf.sessions.importers import detect_format, import_trace
from flowperf.sessions.synthesis import block_keys, mix, prompt_tokens, unique_keys
from flowperf.stress.traces import SHIPPED

LLM_STEP = "request"
THINK_STEP = "think"


def think_factor(setting: str) -> float:
    """`recorded` 1, `zero` 0, `scale:F` F (the config's pattern has checked the text)."""
    if setting == "recorded":
        return 1.0
    if setting == "zero":
        return 0.0
    return float(setting.removeprefix("scale:"))


@dataclass(frozen=True)
class Lengths:
    """A request's lengths after `--token-scale`: the block size, the prompt and the output."""

    block_size: int
    prompt: int
    output: int


def scaled_lengths(request: TraceRequest, block_size: int, scale: float) -> Lengths:
    """Lengths times `scale`, keeping the number of blocks: every full block becomes a block of the scaled
    size and the partial last block shrinks in proportion, so hash ids still cover the prompt exactly."""
    output = max(1, round(request.output_tokens * scale))
    if scale == 1.0:
        return Lengths(block_size, request.prompt_tokens, output)
    size = max(1, round(block_size * scale))
    if not request.hash_ids:
        return Lengths(size, max(1, round(request.prompt_tokens * scale)), output)
    full = len(request.hash_ids) - 1
    last = request.prompt_tokens - full * block_size
    return Lengths(size, full * size + min(size, max(1, round(last * scale))), output)


def execution_order(session: Session) -> list[TraceRequest]:
    """The session's requests with each after its needs, otherwise in recorded start order."""
    placed: set[str] = set()
    ordered: list[TraceRequest] = []
    waiting = list(session.requests)
    while waiting:
        ready = [request for request in waiting if placed.issuperset(request.needs)]
        for request in ready:
            placed.add(request.id)
            ordered.append(request)
        waiting = [request for request in waiting if request.id not in placed]
    return ordered


class SessionSource(TokenIdSource):
    """The selected sessions of a session trace as a `flows.source.WorkflowSource`."""

    def __init__(
        self, settings: TraceConfig, trace: SessionTrace, sha256: str, vocab: int, seed: int
    ) -> None:
        self.settings = settings
        self.header = trace.header
        self.sessions = trace.sessions[: settings.max_sessions]
        self.name = Path(settings.source).stem
        self.template_sha256 = sha256
        self.fixture_sha256 = hashlib.sha256(settings.model_dump_json().encode()).hexdigest()
        self._ids = token_range(vocab)
        self._seed = seed
        self._think = think_factor(settings.think_time) / settings.time_scale
        self._where = {
            request.id: (index, position)
            for index, session in enumerate(self.sessions)
            for position, request in enumerate(session.requests)
        }

    @property
    def steps(self) -> list[StepSpec]:
        return [StepSpec(id=LLM_STEP), StepSpec(id=THINK_STEP, kind="think")]

    def __len__(self) -> int:
        return len(self.sessions)

    def flow_id(self, index: int) -> str:
        return f"{self.name}-{self.sessions[index].id}"

    def parallel_width(self) -> int:
        """The most requests of one session on the same level of its dependency graph."""
        widest = 1
        for session in self.sessions:
            level: dict[str, int] = {}
            for request in execution_order(session):
                level[request.id] = 1 + max((level[need] for need in request.needs), default=0)
            widest = max(widest, *np.bincount(list(level.values())).tolist())
        return widest

    def arrival_s(self, flow: ExpandedFlow) -> float:
        """The session's recorded start (the runner divides by --time-scale)."""
        return self.sessions[flow.record_index].start_ms / 1000.0

    def think_ms(self, request: TraceRequest) -> float:
        return round(request.think_ms * self._think, 3)

    def lengths(self, request: TraceRequest) -> Lengths:
        return scaled_lengths(request, self.header.block_size, self.settings.token_scale)

    def plan(self, flow: ExpandedFlow, seed: int) -> tuple[PlannedNode, ...]:
        """Per request: a think node of its pause (none for no pause) after its needs, then its LLM call."""
        nodes: list[PlannedNode] = []
        llm: dict[str, PlannedNode] = {}
        think_step = StepSpec.model_construct(id=THINK_STEP, kind="think")
        for request in execution_order(self.sessions[flow.record_index]):
            needs = tuple(llm[need].index for need in request.needs)
            pause = self.think_ms(request)
            if pause > 0:
                nodes.append(
                    PlannedNode(
                        len(nodes),
                        think_step,
                        f"think:{request.id}",
                        needs,
                        None,
                        0,
                        duration_ms=pause,
                        request_id=request.id,
                    )
                )
                needs = (nodes[-1].index,)
            depth = 1 + max((llm[need].depth for need in request.needs), default=0)
            step = StepSpec.model_construct(
                id=LLM_STEP, kind="llm", max_tokens=self.lengths(request).output, ignore_eos=True
            )
            node = PlannedNode(
                len(nodes), step, request.id, needs, None, depth, request_id=request.id, think_before_ms=pause
            )
            nodes.append(node)
            llm[request.id] = node
        return tuple(nodes)

    def prompt_ids(self, request_id: str) -> np.ndarray:
        """A request's prompt: its hash blocks (global or per-session keys), or blocks of its own."""
        index, position = self._where[request_id]
        request = self.sessions[index].requests[position]
        lengths = self.lengths(request)
        if request.hash_ids:
            scope = None if self.header.hash_scope == "global" else index
            keys = block_keys(request.hash_ids, scope)
        else:
            own = int(mix(mix(self._seed, index), position))
            keys = unique_keys(own, -(-lengths.prompt // lengths.block_size))
        return prompt_tokens(keys, lengths.block_size, lengths.prompt, self._ids)

    def render(
        self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]
    ) -> TokenPrompt:
        assert node.request_id is not None
        return TokenPrompt(tuple(self.prompt_ids(node.request_id).tolist()))

    def render_result(
        self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]
    ) -> str:
        return ""


SESSION_FORMATS = ("weka", "otel")


def session_trace_path(source: str) -> Path | None:
    """The session trace `source` names (a shipped sample's name, a flowperf-sessions file, or a Weka or
    OpenTelemetry trace that the importers read), or None for a request trace (Mooncake, Azure,
    BurstGPT: `flows.trace_source` replays those)."""
    path = shipped_sessions.session_trace_path(source)
    if not path.exists():
        return None
    if path.is_file() and is_session_trace(path):
        return path
    try:
        return path if detect_format(path) in SESSION_FORMATS else None
    except UserError:
        return None  # the request-trace loader names what is wrong with it


def require_session_trace(settings: TraceConfig, why: str) -> int:
    """How many sessions a load mode (`bench sweep`, `bench ab`) will replay from a session trace (after
    --max-sessions); a request trace is a UserError naming --trace and `why` it cannot be used."""
    path = session_trace_path(settings.source)
    if path is None:
        raise UserError(
            f"--trace {settings.source}: not a session trace (a flowperf-sessions, Weka or OpenTelemetry "
            f"file, or a shipped sample's name); {why}"
        )
    return len(import_trace(path).sessions[: settings.max_sessions])


def trace_sha256(path: Path) -> str:
    """A trace's content digest (a Weka directory's: its files' in name order), for resume checks."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load_sessions(config: RunConfig, path: Path, model_dir: Path | None) -> SessionSource:
    settings = config.trace
    assert settings is not None
    source = SessionSource(
        settings,
        import_trace(path),
        trace_sha256(path),
        vocab_size(config, model_dir),
        config.seed,
    )
    if config.engine.kind != "openai":
        check_context(source, config.engine.max_model_len)
    return source


def check_context(source: SessionSource, max_model_len: int) -> None:
    over = [
        request
        for session in source.sessions
        for request in session.requests
        if (lengths := source.lengths(request)).prompt + lengths.output > max_model_len
    ]
    if over:
        most = max(source.lengths(r).prompt + source.lengths(r).output for r in over)
        raise UserError(
            f"--max-model-len {max_model_len}: {len(over)} requests of the session trace need more (up to "
            f"{most:,} tokens); lower --token-scale or raise --max-model-len"
        )


def load_trace_workflows(config: RunConfig, model_dir: Path | None) -> WorkflowSource:
    """`bench replay`'s workflows: a session trace's sessions, or a request trace's requests."""
    assert config.trace is not None
    path = session_trace_path(config.trace.source)
    if path is not None:
        return load_sessions(config, path, model_dir)
    if config.trace.source not in SHIPPED and not Path(config.trace.source).exists():
        known = ", ".join(sorted([*SHIPPED, *shipped_sessions.SHIPPED_SESSIONS]))
        raise UserError(f"TRACE {config.trace.source}: no such trace file (shipped: {known})")
    if config.trace.sessions is not None or config.trace.max_sessions is not None:
        raise UserError(
            f"TRACE {config.trace.source}: --sessions and --max-sessions need a session trace; "
            "a request trace is replayed open loop (--concurrency caps it)"
        )
    return load_requests(config, model_dir)
