"""Keeping the measuring process off the cores a CPU engine computes on.

vLLM's CPU backend binds each of its compute (OpenMP) threads to one core (VLLM_CPU_OMP_THREADS_BIND,
`auto` by default: every core but one it reserves for the rest), but nothing keeps the measuring
process's own threads (the event loop stamping tokens, vLLM's front end in it) off those cores. On a
2-core host the kernel put them there in about half the runs: replays of one load ran at one of two
engine speeds, a median decode step of 1.25-1.4 ms or 1.75-2.45 ms, whatever the load. With this
process's threads, and the engine's own threads that are not compute threads, moved to the cores the
engine left free, 1.39-1.48 ms in 4 of 4 (docs/PERFORMANCE.md, "One engine speed on CPU"). A GPU engine
binds no thread to a core, so nothing moves there.

Linux only (per-thread affinity through /proc); elsewhere nothing is done and the run says so.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Placement:
    """Where the engine computes and where this process was moved (empty: not moved, `reason` says why)."""

    engine_cores: tuple[int, ...]
    harness_cores: tuple[int, ...]
    reason: str = ""

    def describe(self) -> str:
        if not self.harness_cores:
            return f"harness threads not moved: {self.reason}"
        return (
            f"engine compute threads on cores {list(self.engine_cores)}; "
            f"harness threads moved to cores {list(self.harness_cores)}"
        )


def _threads(pid: int) -> list[int]:
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, PermissionError):
        return []


def engine_cores(pids: list[int]) -> set[int]:
    """The cores the engine processes' threads are bound to one each (vLLM's CPU compute threads)."""
    cores: set[int] = set()
    for pid in pids:
        for tid in _threads(pid):
            bound = _affinity(tid)
            if len(bound) == 1:
                cores |= bound
    return cores


def keep_harness_off_engine() -> Placement:
    """Move every thread of this process (and so every thread and process it starts later), and the
    engine processes' threads that are not bound to a core (vLLM's scheduler loop and I/O threads), to
    the allowed cores the engine's compute threads are not bound to: the compute threads then have their
    cores to themselves."""
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/self/task").is_dir():
        return Placement((), (), "no per-thread CPU affinity on this platform")
    children = [child.pid for child in psutil.Process().children(recursive=True)]
    busy = engine_cores(children)
    allowed = os.sched_getaffinity(0)
    free = allowed - busy
    if not busy:
        return Placement((), (), "the engine binds no thread to a core (a GPU engine, or binding off)")
    if not free:
        return Placement(tuple(sorted(busy)), (), "the engine's compute threads hold every allowed core")
    for tid in _threads(os.getpid()):
        _move(tid, free)
    for pid in children:
        for tid in _threads(pid):
            if len(_affinity(tid)) > 1:
                _move(tid, free)
    return Placement(tuple(sorted(busy)), tuple(sorted(free)))


def _affinity(tid: int) -> set[int]:
    try:
        return os.sched_getaffinity(tid)
    except OSError:  # the thread ended meanwhile
        return set()


def _move(tid: int, cores: set[int]) -> None:
    with contextlib.suppress(OSError):  # the thread ended meanwhile
        os.sched_setaffinity(tid, cores)
