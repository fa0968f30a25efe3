"""Ctrl-C and SIGTERM during a run: the first asks for a graceful stop, the second exits at once.

A graceful stop means: start no new workflow, let in-flight steps finish (or cancel them after a grace
period), write summary.json with status `interrupted`, shut the engine down, exit 130. A second signal
kills the engine's processes (they would otherwise outlive the harness) and exits immediately with
os._exit: every line already appended is complete on disk, and a torn last line, if the exit lands
mid-write, is detected and dropped on read and on resume.

Before there is anything to stop gracefully (flow expansion, model build, engine start-up) the first
signal aborts the run's own code where it is. Python-level handlers (not loop.add_signal_handler) are
used because those phases block the event loop (the in-process engine's start-up for tens of seconds);
a Python handler still runs then and raises RunInterrupted into that code. When the loop is instead
idle in `select` (waiting for a thread, a socket, a timer), raising there would tear the loop itself
down; the handler then cancels the run's task, which the run turns into the same interruption.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any, TypeVar

import psutil

from flowperf.errors import EXIT_INTERRUPTED

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABANDONED_THREAD_WAIT_S = 1.0


def kill_descendants() -> None:
    """SIGKILL every process this one started in its own session (the engine core and its workers).

    A persistent managed server runs in a session of its own and is meant to outlive the benchmark that
    started it; it is never killed here.
    """
    session = os.getsid(0)
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(child.pid) == session:
                child.kill()


class RunInterrupted(BaseException):
    """A signal arrived before there was anything to stop gracefully (e.g. during engine start-up).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way (an engine's
    start-up wraps its failures) turns an interruption into an error.
    """


class AbandoningExecutor(ThreadPoolExecutor):
    """The run loop's default executor (`asyncio.to_thread`), whose threads an interrupt may abandon.

    An await that an interrupt cancels leaves its thread running (a managed server's start-up polls for
    minutes); a normal pool would hold the process's exit until it ends. Each call gets a daemon thread,
    and shutting down waits for running ones only briefly.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # handed to the awaiting side, like a pool's worker does
                future.set_exception(error)

        thread = threading.Thread(target=work, name="flowperf-to-thread", daemon=True)
        self._threads = [alive for alive in self._threads if alive.is_alive()] + [thread]
        thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        deadline = time.monotonic() + (ABANDONED_THREAD_WAIT_S if wait else 0.0)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class InterruptController:
    """Installs the handlers for the duration of a run (main thread only) and restores the old ones."""

    def __init__(self) -> None:
        self.signals_received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._on_request: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signals_received > 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Call from the run's task: a signal that finds the loop idle cancels that task."""
        self._loop = loop
        self._task = asyncio.current_task(loop)
        loop.set_default_executor(AbandoningExecutor())
        for number in HANDLED_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def on_request(self, callback: Callable[[], None] | None) -> None:
        """What a first signal does from now on; None means: abort the run where it is."""
        self._on_request = callback

    def only_record(self) -> None:
        """From now on a first signal is only counted (`requested`): for the run's own closing steps,
        which are short and leave the directory consistent only if they finish."""
        self._on_request = _nothing

    def raise_if_requested(self) -> None:
        """Turn a signal that was only recorded into the interruption it asked for."""
        if self.requested:
            raise RunInterrupted("signal received")

    def interrupted_by(self, error: asyncio.CancelledError) -> bool:
        """Whether a cancellation of the run's task is this controller's doing (then it is un-cancelled,
        so the run can still await its clean-up)."""
        if not self.requested or self._task is None or self._task is not asyncio.current_task():
            return False
        self._task.uncancel()
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received > 1:
            kill_descendants()
            os._exit(EXIT_INTERRUPTED)
        name = signal.Signals(signum).name
        loop, task = self._loop, self._task
        if loop is not None and self._on_request is not None:
            loop.call_soon_threadsafe(self._on_request)
        elif loop is None or task is None or asyncio.current_task(loop) is task:
            raise RunInterrupted(name)  # the run's own code is running: abort it there
        else:
            loop.call_soon_threadsafe(task.cancel, name)


def _nothing() -> None:
    return None


T = TypeVar("T")


def run_with_interrupts(main: Callable[[InterruptController], Awaitable[T]]) -> T:
    """Run `main` on a new event loop with Ctrl-C owned by it for its duration: the first signal asks
    for a graceful stop (what that means is `main`'s to say, through the controller), the second exits."""
    interrupts = InterruptController()

    async def run_once() -> T:
        interrupts.install(asyncio.get_running_loop())
        try:
            return await main(interrupts)
        finally:
            interrupts.uninstall()

    return asyncio.run(run_once())


async def settle_session(
    work: Callable[[], Awaitable[str]],
    record_status: Callable[[str], None],
    close: Callable[[], Awaitable[None]],
) -> None:
    """How a multi-run session (A/B blocks, sweep levels) ended, recorded before it is closed: `work`'s
    own status; `interrupted` when a signal raised RunInterrupted into it; `failed` for any other error,
    which then goes on up. `close` (engines shut down, the document written) runs whatever happened."""
    status = "failed"
    try:
        status = await work()
    except RunInterrupted:
        status = "interrupted"
    finally:
        record_status(status)
        await close()
