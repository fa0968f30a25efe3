"""`bench replay`: a request trace as the run's workflows, one single-step workflow per request.

Prompts are token ids, so a trace's structure survives the replay: each Mooncake hash id is a prefix
block of `block_tokens` ids drawn from a generator seeded by the id alone, so requests that share hash
ids share a prompt prefix exactly and the engine's prefix cache sees the reuse the trace recorded.
Tokens past the blocks (a prompt longer than its blocks) and every prompt of a trace without hash ids
(Azure, BurstGPT) are unique to their request. Every request generates exactly its trace output length
(`ignore_eos`). Arrivals are the trace's own timestamps divided by `time_scale`, unless the run gives a
Poisson `rate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flowperf.config import RunConfig, TraceConfig
from flowperf.engines.base import TokenPrompt
from flowperf.engines.presets import PRESETS
from flowperf.engines.tiny import ARCHITECTURE as TINY_ARCHITECTURE
from flowperf.errors import UserError
from flowperf.flows.expand import ExpandedFlow
from flowperf.flows.plan import PlannedNode, StepSpec
from flowperf.flows.source import TokenIdSource
from flowperf.stress.traces import SHIPPED, Trace, load_trace, shipped_path

STEP_ID = "request"
UNIQUE_SALT = 0x5EED
DEFAULT_VOCAB = 32_000


def token_range(vocab_size: int) -> tuple[int, int]:
    """The ids prompts are drawn from: the middle of the vocabulary, away from the special tokens that
    tokenizers put at either end."""
    return min(1000, vocab_size // 4), vocab_size * 3 // 4


def block_ids(hash_id: int, length: int, ids: tuple[int, int]) -> np.ndarray:
    """The token ids a prefix block stands for: the same for the same hash id, in every request."""
    return np.random.default_rng([int(hash_id), length]).integers(*ids, size=length)


def prompt_ids(trace: Trace, index: int, ids: tuple[int, int], seed: int) -> np.ndarray:
    """Request `index`'s prompt: its prefix blocks, then ids of its own up to its prompt length."""
    length = int(trace.prompt_tokens[index])
    blocks = [block_ids(h, trace.block_tokens, ids) for h in trace.hashes(index)]
    shared = np.concatenate(blocks)[:length] if blocks else np.zeros(0, np.int64)
    rest = np.random.default_rng([UNIQUE_SALT, seed, index]).integers(*ids, size=length - shared.size)
    return np.concatenate([shared, rest])


def vocab_size(config: RunConfig, model_dir: Path | None) -> int:
    """The vocabulary prompts draw from: a local model's config.json, a preset's, the embedded model's,
    or a common size for a remote model flowperf cannot read."""
    if model_dir is not None:
        return int(json.loads((Path(model_dir) / "config.json").read_text()).get("vocab_size", DEFAULT_VOCAB))
    if config.engine.model_preset is not None:
        return PRESETS[config.engine.model_preset].vocab
    if config.engine.kind != "openai":
        return int(TINY_ARCHITECTURE["vocab_size"])
    return DEFAULT_VOCAB


def trace_path(source: str) -> Path:
    path = shipped_path(source) if source in SHIPPED else Path(source)
    if not path.is_file():
        raise UserError(f"TRACE {source}: no such trace file (shipped: {', '.join(sorted(SHIPPED))})")
    return path


class TraceRequests(TokenIdSource):
    """The selected requests of a trace as a `flows.source.WorkflowSource`."""

    def __init__(self, settings: TraceConfig, trace: Trace, sha256: str, vocab_size: int, seed: int) -> None:
        self.settings = settings
        self.trace = trace
        self.name = Path(settings.source).stem if settings.source not in SHIPPED else settings.source
        self.template_sha256 = sha256
        self.fixture_sha256 = hashlib.sha256(settings.model_dump_json().encode()).hexdigest()
        self._ids = token_range(vocab_size)
        self._seed = seed

    @property
    def steps(self) -> list[StepSpec]:
        return [StepSpec(id=STEP_ID)]

    def __len__(self) -> int:
        return self.trace.size

    def parallel_width(self) -> int:
        return 1

    def arrival_s(self, flow: ExpandedFlow) -> float:
        return float(self.trace.arrival_s[flow.record_index])

    def plan(self, flow: ExpandedFlow, seed: int) -> tuple[PlannedNode, ...]:
        """One LLM call generating exactly the request's recorded output length."""
        output = int(self.trace.output_tokens[flow.record_index])
        step = StepSpec.model_construct(id=STEP_ID, kind="llm", max_tokens=output, ignore_eos=True)
        return (PlannedNode(index=0, step=step, name=STEP_ID, needs=(), transcript_from=None, depth=1),)

    def render(
        self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]
    ) -> TokenPrompt:
        ids = prompt_ids(self.trace, flow.record_index, self._ids, self._seed)
        return TokenPrompt(tuple(ids.tolist()))

    def render_result(
        self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]
    ) -> str:
        return ""


def load_requests(config: RunConfig, model_dir: Path | None) -> TraceRequests:
    """The requests `config.trace` selects, checked against the engine's context length; `model_dir` is
    the local `--model` directory, if any."""
    settings = config.trace
    assert settings is not None
    path = trace_path(settings.source)
    trace = load_trace(
        path,
        token_scale=settings.token_scale,
        max_requests=settings.max_requests,
        start_s=settings.start_s,
        duration_s=settings.duration_s,
    )
    if config.engine.kind != "openai":
        _check_context(trace, config.engine.max_model_len)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return TraceRequests(settings, trace, sha256, vocab_size(config, model_dir), config.seed)


def _check_context(trace: Trace, max_model_len: int) -> None:
    total = trace.prompt_tokens + trace.output_tokens
    over = int((total > max_model_len).sum())
    if over:
        raise UserError(
            f"--max-model-len {max_model_len}: {over} of {trace.size} requests need more (up to "
            f"{int(total.max()):,} tokens); lower --token-scale or raise --max-model-len"
        )
