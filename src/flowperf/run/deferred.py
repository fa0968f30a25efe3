"""Records made before their destination exists, kept in order and forwarded once it does.

A run directory is created only after every input has been checked, but timing lines and phase records
start with flow expansion, before that; a DeferredSink holds them until the directory exists. The run
also holds the lines it shows on stdout this way, so a run refused for bad input prints none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class DeferredSink(Generic[T]):
    """Callable sink: holds items until `attach(target)`, then forwards held and later items in order."""

    def __init__(self) -> None:
        self._held: list[T] = []
        self._target: Callable[[T], None] | None = None
        self._lock = threading.Lock()

    def __call__(self, item: T) -> None:
        with self._lock:
            if self._target is None:
                self._held.append(item)
                return
            target = self._target
        target(item)

    def attach(self, target: Callable[[T], None]) -> None:
        with self._lock:
            for item in self._held:
                target(item)
            self._held.clear()
            self._target = target
