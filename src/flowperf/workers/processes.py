"""Client workers as processes on this host (`--executor process`).

Each worker is a spawned Python process with its own event loop and HTTP pool. It writes its records to
the run directory itself (one O_APPEND write per line, so workers never tear each other's lines) and
sends the coordinator one message per workflow for progress. Its monotonic clock is the coordinator's
(CLOCK_MONOTONIC is system-wide), so the coordinator's window start is used as it is.

A worker ignores SIGINT and SIGTERM: the terminal sends Ctrl-C to the whole process group, and the
coordinator alone decides how to stop (it tells each worker, then kills what is left). A worker dies with
its coordinator (PR_SET_PDEATHSIG), so a SIGKILLed run leaves no worker appending to a directory that a
resume is about to tidy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Any

from flowperf.engines.base import EngineError
from flowperf.workers.clock import ClockAlignment
from flowperf.workers.session import WorkerSession, WorkerSpec

PR_SET_PDEATHSIG = 1
EXIT_POLL_S = 0.1
DEATH_REPORT_DELAY_S = 0.5  # a dead worker's last messages may still be on their way
JOIN_TIMEOUT_S = 10.0
Message = tuple[str, int, Any]


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the coordinator died before the request took effect
        os._exit(1)


def worker_main(spec: WorkerSpec, outbox: Queue[Message | None], control: Queue[Any], parent: int) -> None:
    """The worker process: serve the spec, reporting through `outbox`, taking orders from `control`."""
    _die_with_parent(parent)
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, signal.SIG_IGN)
    asyncio.run(_serve(spec, outbox, control))


async def _serve(spec: WorkerSpec, outbox: Queue[Message | None], control: Queue[Any]) -> None:
    loop = asyncio.get_running_loop()
    window_start: asyncio.Future[float] = loop.create_future()
    session = WorkerSession(spec, lambda kind, record: outbox.put((kind, spec.worker, record)))
    stop_requested = threading.Event()

    def obey() -> None:
        while True:
            order = control.get()
            if order[0] == "go":
                loop.call_soon_threadsafe(_settle, window_start, order[1])
            elif order[0] == "stop":
                stop_requested.set()
                loop.call_soon_threadsafe(_stop, session, window_start)
                return

    threading.Thread(target=obey, name="worker-control", daemon=True).start()
    try:
        await session.start()
        outbox.put(("ready", spec.worker, None))
        start = await window_start
        stopped = stop_requested.is_set() or await session.run(start)
        outbox.put(("done", spec.worker, stopped))
    except asyncio.CancelledError:
        outbox.put(("done", spec.worker, True))
    except Exception as error:
        outbox.put(("failed", spec.worker, f"{type(error).__name__}: {error}"))
    finally:
        await session.close()


def _settle(future: asyncio.Future[float], value: float) -> None:
    if not future.done():
        future.set_result(value)


def _stop(session: WorkerSession, window_start: asyncio.Future[float]) -> None:
    """Stop before the window opened (cancel the wait for it) or inside it (the runner's graceful stop)."""
    if not window_start.done():
        window_start.cancel()
    else:
        session.request_stop()


class ProcessWorkers:
    """The coordinator's side of worker processes: start them, open the window, pass their messages on."""

    writes_records = True

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._outbox: Queue[Message | None] = self._context.Queue()
        self._controls: list[Queue[Any]] = []
        self._processes: list[BaseProcess] = []
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._finished: set[int] = set()
        self._reader: threading.Thread | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.alignments: list[ClockAlignment] = []

    async def start(self, specs: list[WorkerSpec]) -> None:
        """Spawn every worker and wait until each has connected to the server."""
        loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read, args=(loop,), name="worker-outbox", daemon=True)
        self._reader.start()
        for spec in specs:
            control: Queue[Any] = self._context.Queue()
            process = self._context.Process(
                target=worker_main,
                args=(spec, self._outbox, control, os.getpid()),
                name=f"flowperf-worker-{spec.worker}",
                daemon=True,
            )
            process.start()
            self._controls.append(control)
            self._processes.append(process)
        self._watcher = asyncio.create_task(self._watch_exits())
        self.alignments = [ClockAlignment(0.0, 0.0) for _ in specs]  # one host, one monotonic clock
        await self._await_ready(len(specs))

    async def _await_ready(self, count: int) -> None:
        ready = 0
        while ready < count:
            kind, worker, payload = await self._inbox.get()
            if kind == "failed":
                raise EngineError(f"client worker {worker} could not start: {payload}")
            ready += kind == "ready"

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while (message := self._outbox.get()) is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                loop.call_soon_threadsafe(self._inbox.put_nowait, message)

    async def _watch_exits(self) -> None:
        """A worker that dies without saying so (killed, out of memory) is reported as failed."""
        reported: set[int] = set()
        while True:
            await asyncio.sleep(EXIT_POLL_S)
            for worker, process in enumerate(self._processes):
                if process.exitcode not in (None, 0) and worker not in reported:
                    reported.add(worker)
                    asyncio.get_running_loop().call_later(
                        DEATH_REPORT_DELAY_S, self._report_death, worker, process.exitcode
                    )

    def _report_death(self, worker: int, code: int) -> None:
        if worker not in self._finished:
            self._inbox.put_nowait(("failed", worker, f"the process died (exit code {code})"))

    async def go(self, window_start: float) -> None:
        for control in self._controls:
            control.put(("go", window_start))

    def request_stop(self) -> None:
        for control in self._controls:
            control.put(("stop",))

    async def next_message(self) -> Message:
        message = await self._inbox.get()
        if message[0] in ("done", "failed"):
            self._finished.add(message[1])
        return message

    async def close(self) -> None:
        """Let every worker exit (it closes its files first), then kill any that does not."""
        self.request_stop()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for process in self._processes:
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        if self._watcher is not None:
            self._watcher.cancel()
        self._outbox.put(None)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5.0)
