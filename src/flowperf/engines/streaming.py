"""Turning a stream of token events into a StepResult, the same way for every engine."""

from __future__ import annotations

import time

from flowperf.engines.base import StepResult


class StreamTimer:
    """Records when token events arrive, relative to the submission of one request.

    The timer starts when it is created; an engine that must first wait for a connection calls
    `request_sent` when the request actually leaves, which restarts it there and keeps the wait apart.

    The output token count is the sum over events unless the engine reports its own (`output_tokens`).

    An event may carry several tokens when the client falls behind the engine; as in vLLM's own
    benchmarks, the first event with a token gives TTFT and each later event one inter-token gap. Events
    that arrived in one network read share that read's time (`at`): they did arrive together, and taking
    the clock once per read keeps parsing time out of the gaps.

    Delivery: the tokens of each read (events with the same `at`; in process every event is its own)
    are counted, so a step says how many reads carried tokens and the largest share of its tokens one
    read held. A step is burst-delivered when one read after the first held more than half of its
    tokens: the stream was held back and arrived at once, so its TTFT and gaps describe the delivery,
    not the engine (seen with vLLM's API server on CPU, docs in ENGINE_NOTES).
    """

    def __init__(self) -> None:
        self.submitted = time.perf_counter()
        self.connect_wait_ms: float | None = None
        self._first: float | None = None
        self._last: float | None = None
        self.gaps_ms: list[float] = []
        self.output_tokens = 0
        self._read_at: float | None = None
        self.read_tokens: list[int] = []

    def request_sent(self) -> None:
        now = time.perf_counter()
        self.connect_wait_ms = (now - self.submitted) * 1000.0
        self.submitted = now

    def tokens_arrived(self, count: int, at: float | None = None) -> None:
        if count <= 0:
            return
        now = time.perf_counter() if at is None else at
        if self._first is None:
            self._first = now
        else:
            assert self._last is not None
            self.gaps_ms.append((now - self._last) * 1000.0)
        self._last = now
        self.output_tokens += count
        if at is None or at != self._read_at or not self.read_tokens:
            self.read_tokens.append(count)
        else:
            self.read_tokens[-1] += count
        self._read_at = at

    def result(
        self,
        *,
        text: str,
        prompt_tokens: int,
        cached_prompt_tokens: int | None,
        output_tokens: int | None = None,
        finish_reason: str | None,
        engine_queue_ms: float | None = None,
        engine_ttft_ms: float | None = None,
    ) -> StepResult:
        finished = time.perf_counter()
        return StepResult(
            text=text,
            prompt_tokens=prompt_tokens,
            output_tokens=self.output_tokens if output_tokens is None else output_tokens,
            cached_prompt_tokens=cached_prompt_tokens,
            ttft_ms=None if self._first is None else (self._first - self.submitted) * 1000.0,
            e2e_ms=(finished - self.submitted) * 1000.0,
            itl_ms=self.gaps_ms,
            finish_reason=finish_reason,
            engine_queue_ms=engine_queue_ms,
            engine_ttft_ms=engine_ttft_ms,
            connect_wait_ms=self.connect_wait_ms,
            **delivery(self.read_tokens),
        )


BURST_SHARE = 0.5


def delivery(read_tokens: list[int]) -> dict[str, object]:
    """token_reads, max_read_share and burst_delivered of a stream whose reads carried these tokens."""
    total = sum(read_tokens)
    if total <= 0:
        return {}
    later = max(read_tokens[1:], default=0)
    return {
        "token_reads": len(read_tokens),
        "max_read_share": round(max(read_tokens) / total, 4),
        "burst_delivered": later / total > BURST_SHARE,
    }
