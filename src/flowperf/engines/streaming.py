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
    """

    def __init__(self) -> None:
        self.submitted = time.perf_counter()
        self.connect_wait_ms: float | None = None
        self._first: float | None = None
        self._last: float | None = None
        self.gaps_ms: list[float] = []
        self.output_tokens = 0

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
        )
