"""The engine protocol and the measurement of one LLM call (a step).

Every engine streams internally and returns a StepResult measured the same way, so the runner, the store
and the statistics never know which engine produced it. Harness times are `perf_counter` milliseconds
from submission; the engine's own timings, when it reports them, are kept separately in its own clock
domain and never subtracted from harness times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flowperf.stats import tpot_ms

ChatMessage = dict[str, str]
"""One message of a transcript: `role` (system, user, assistant, tool), `content`, and for a tool
result the `tool_call_id` it answers."""


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt given as token ids (a replayed trace's request): sent as they are, so requests that
    share leading ids share a cacheable prefix exactly."""

    ids: tuple[int, ...]


Prompt = str | tuple[ChatMessage, ...] | TokenPrompt
"""What a step sends: a completion prompt, a conversation's whole transcript, or token ids. An engine
renders a transcript with the model's chat template (in process) or sends it as chat messages (over
HTTP); token ids go to the engine directly (in process) or as a completion's token-id prompt (HTTP)."""


@dataclass(frozen=True)
class GenerationParams:
    """What to generate: fixed lengths by default (ignore_eos) so runs are comparable."""

    max_tokens: int
    temperature: float = 0.0
    ignore_eos: bool = True
    seed: int | None = None


@dataclass
class StepResult:
    """One streamed generation, timed by the harness from submission to the last token.

    Submission is the moment the request is written to the engine (over HTTP: its headers start to go out
    on a connection), so a wait for a pooled connection, or for a new one to open, is not mistaken for the
    engine's time to first token; that wait is `connect_wait_ms`, None where there is none to measure.
    """

    text: str
    prompt_tokens: int
    output_tokens: int
    cached_prompt_tokens: int | None
    ttft_ms: float | None
    e2e_ms: float
    itl_ms: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    engine_queue_ms: float | None = None
    engine_ttft_ms: float | None = None
    connect_wait_ms: float | None = None
    endpoint: int | None = None
    """Which of several replicas served it (its position in --base-url order), so a per-replica skew can
    be told from an engine-wide one; None where the engine has one endpoint."""
    engine_last_token_ms: float | None = None
    """Arrival in the engine core's queue to its last token, on the core's clock; None where unreported."""
    token_reads: int | None = None
    """Stream delivery (streaming.StreamTimer): reads that carried tokens, the largest share of the
    tokens in one read, and whether one read after the first held most of them."""
    max_read_share: float | None = None
    burst_delivered: bool | None = None

    @property
    def tpot_ms(self) -> float | None:
        """Mean time per output token after the first (`stats.tpot_ms`)."""
        return tpot_ms(self.e2e_ms, self.ttft_ms, self.output_tokens)


@dataclass(frozen=True)
class EngineInfo:
    """What the harness knows about the engine it measured; recorded in config.json and the summary."""

    engine: str
    engine_version: str
    model: str
    device: str
    cuda_graph_mode: str
    cuda_graph_note: str
    init_count: int
    reused: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "model": self.model,
            "device": self.device,
            "cuda_graph_mode": self.cuda_graph_mode,
            "cuda_graph_note": self.cuda_graph_note,
            "init_count": self.init_count,
            "reused": self.reused,
            "details": self.details,
        }


class EngineError(RuntimeError):
    """A generation that failed inside the engine or on the way to it; fails one step, not the run."""


class StreamError(EngineError):
    """The server reported an error inside a stream it had begun with HTTP 200 (the tokens so far are not
    an answer, so the step fails rather than recording a short success)."""


class TruncatedStream(EngineError):
    """The stream stopped early without saying why: no finish reason, or fewer tokens than a fixed-length
    request (ignore_eos) asked for."""


class Engine(Protocol):
    """Start once, generate many times (concurrently), describe itself, shut down once."""

    @property
    def started(self) -> bool:
        """True once the model is loaded (a later `start` is then free: the engine is reused)."""

    async def start(self) -> None:
        """Load the model so that the first measured request pays no start-up cost."""

    async def generate(self, prompt: Prompt, params: GenerationParams, request_id: str) -> StepResult:
        """Stream one completion (or chat completion, for a transcript) and measure it."""

    async def reset_prefix_cache(self) -> bool:
        """Empty the engine's prefix cache; False when the engine cannot."""

    def record_iterations(self, path: Path | None) -> None:
        """Append one line per engine iteration to `path` from now on (None: stop). Only the in-process
        engine sees its iterations; for any other this does nothing (`iteration_log.record_iterations`
        also accepts engines that lack the method)."""

    def info(self) -> EngineInfo:
        """Describe the engine as it is actually running."""

    async def shutdown(self) -> None:
        """Release the engine and any processes it started."""
