"""Fault injection around the real engine: fail, stall or break chosen requests, pass the rest through."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from flowperf.engines.base import EngineError, EngineInfo, GenerationParams, StepResult


def flow_index_of(request_id: str) -> int:
    """Request ids end in `<flow name>-<index:06d>-<step id>`."""
    return int(request_id.rsplit("-", 2)[-2])


@dataclass
class FaultyEngine:
    inner: object
    fail_flows: set[int] = field(default_factory=set)
    fail_step: str | None = None
    stall_flows: set[int] = field(default_factory=set)
    stall_s: float = 5.0
    delay_s: float = 0.0
    calls: int = 0

    @property
    def started(self) -> bool:
        return self.inner.started

    async def start(self) -> None:
        await self.inner.start()

    async def generate(self, prompt: str, params: GenerationParams, request_id: str) -> StepResult:
        self.calls += 1
        flow = flow_index_of(request_id)
        step = request_id.rsplit("-", 1)[-1]
        if flow in self.fail_flows and (self.fail_step is None or step == self.fail_step):
            raise EngineError(f"injected failure in flow {flow} step {step}")
        if flow in self.stall_flows:
            await asyncio.sleep(self.stall_s)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slower engine: every step pays it before its first token
        return await self.inner.generate(prompt, params, request_id)

    async def reset_prefix_cache(self) -> bool:
        return await self.inner.reset_prefix_cache()

    def info(self) -> EngineInfo:
        return self.inner.info()

    async def shutdown(self) -> None:
        """The session engine outlives every test: never shut it down from here."""
