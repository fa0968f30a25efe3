"""Ctrl-C and SIGTERM during a run: the first asks for a graceful stop, the second exits at once.

A graceful stop means: start no new workflow, let in-flight steps finish (or cancel them after a grace
period), write summary.json with status `interrupted`, shut the engine down, exit 130. A second signal
kills the engine's processes (they would otherwise outlive the harness) and exits immediately with
os._exit: every line already appended is complete on disk, and a torn last line, if the exit lands
mid-write, is detected and dropped on read and on resume.

Python-level handlers (not loop.add_signal_handler) are used because the engine's start-up blocks the
event loop for tens of seconds; a Python handler still runs then, and aborts the start-up instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import psutil

EXIT_INTERRUPTED = 130
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def kill_descendants() -> None:
    """SIGKILL every process this one started, directly or not (the engine core and its workers)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


class RunInterrupted(Exception):
    """A signal arrived before there was anything to stop gracefully (e.g. during engine start-up)."""


class InterruptController:
    """Installs the handlers for the duration of a run (main thread only) and restores the old ones."""

    def __init__(self) -> None:
        self.signals_received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_request: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signals_received > 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for number in HANDLED_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def on_request(self, callback: Callable[[], None] | None) -> None:
        """What a first signal does from now on; None means: raise RunInterrupted where the code is."""
        self._on_request = callback

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received > 1:
            kill_descendants()
            os._exit(EXIT_INTERRUPTED)
        if self._on_request is None or self._loop is None:
            raise RunInterrupted(signal.Signals(signum).name)
        self._loop.call_soon_threadsafe(self._on_request)
