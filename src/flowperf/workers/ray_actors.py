"""Client workers as Ray actors (`--executor ray [--ray-address HOST:PORT]`).

An actor may run on another machine, so it writes nothing itself: it keeps its records until the
coordinator drains them (every `DRAIN_INTERVAL_S`), and the coordinator, which owns the run directory,
writes them in the order each actor recorded them (a workflow's steps before its row, so exactly-once
holds as for a single process). Clocks: the actor's monotonic clock is aligned to the coordinator's at
start (`clock.align`, several exchanges, the tightest kept); the window start is handed to each actor on
its own clock, so every offset it records is from the same instant, to within the stated error.

Imported only when Ray is asked for: Ray is an optional dependency and slow to import.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from typing import Any

from flowperf.engines.base import EngineError
from flowperf.workers.clock import ClockAlignment, align
from flowperf.workers.ray_cluster import connected
from flowperf.workers.session import WorkerSession, WorkerSpec

DRAIN_INTERVAL_S = 0.02
CLOCK_EXCHANGES = 9
Message = tuple[str, int, Any]


class WorkerActor:
    """One worker inside a Ray actor (made remote by `RayWorkers.start`)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.worker = spec.worker
        self.session = WorkerSession(spec, self._keep)
        self.outbox: list[Message] = []
        self.running: asyncio.Task[None] | None = None
        self.stop_requested = False

    def _keep(self, kind: str, record: Any) -> None:
        self.outbox.append((kind, self.worker, record))

    async def start(self) -> None:
        await self.session.start()

    async def clock(self) -> float:
        return time.perf_counter()

    async def go(self, window_start: float) -> None:
        self.running = asyncio.create_task(self._run(window_start))

    async def _run(self, window_start: float) -> None:
        """Run, close, and only then say how it ended: the coordinator may kill the actor once told."""
        outcome: Message
        try:
            outcome = ("done", self.worker, self.stop_requested or await self.session.run(window_start))
        except Exception as error:
            outcome = ("failed", self.worker, f"{type(error).__name__}: {error}")
        await self.session.close()
        self.outbox.append(outcome)

    async def request_stop(self) -> None:
        self.stop_requested = True
        if self.running is not None:
            self.session.request_stop()

    async def drain(self) -> list[Message]:
        drained, self.outbox = self.outbox, []
        return drained


class RayWorkers:
    """The coordinator's side of worker actors: connect to Ray, start them, align clocks, drain them."""

    writes_records = False

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.alignments: list[ClockAlignment] = []
        self._exit = ExitStack()
        self._ray: Any = None
        self._actors: list[Any] = []
        self._inbox: list[Message] = []
        self._finished: set[int] = set()

    async def start(self, specs: list[WorkerSpec]) -> None:
        self._ray = self._exit.enter_context(connected(self.address, len(specs)))
        actor = self._ray.remote(num_cpus=1)(WorkerActor)
        self._actors = [actor.remote(spec) for spec in specs]
        try:
            await asyncio.gather(*(handle.start.remote() for handle in self._actors))
        except self._ray.exceptions.RayError as error:
            raise EngineError(f"a client worker actor could not start: {error}") from None
        self.alignments = [await self._align(handle) for handle in self._actors]

    async def _align(self, handle: Any) -> ClockAlignment:
        exchanges = []
        for _ in range(CLOCK_EXCHANGES):
            sent = time.perf_counter()
            theirs = await handle.clock.remote()
            exchanges.append((sent, theirs, time.perf_counter()))
        return align(exchanges)

    async def go(self, window_start: float) -> None:
        await asyncio.gather(
            *(
                handle.go.remote(alignment.to_worker(window_start))
                for handle, alignment in zip(self._actors, self.alignments, strict=True)
            )
        )

    def request_stop(self) -> None:
        for handle in self._actors:
            handle.request_stop.remote()

    async def next_message(self) -> Message:
        while not self._inbox:
            await self._drain()
            if not self._inbox:
                await asyncio.sleep(DRAIN_INTERVAL_S)
        message = self._inbox.pop(0)
        if message[0] in ("done", "failed"):
            self._finished.add(message[1])
        return message

    async def _drain(self) -> None:
        for worker, handle in enumerate(self._actors):
            if worker in self._finished:
                continue
            try:
                self._inbox += await handle.drain.remote()
            except self._ray.exceptions.RayError as error:
                self._inbox.append(("failed", worker, f"the actor died ({type(error).__name__})"))

    async def close(self) -> None:
        try:
            for handle in self._actors:
                self._ray.kill(handle)
        finally:
            self._exit.close()
