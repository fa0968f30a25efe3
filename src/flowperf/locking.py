"""Locks between processes: an exclusive one for read-modify-write of small shared files, and leases.

Several flowperf processes (two `bench run`s, a run and `bench server`) update the same small index files:
the expansion cache's index, the persistent servers' state. Each update reads the file, changes it and
writes it back; without a lock two processes interleave and one's change is lost. An atomic write alone
keeps the file whole, not the update: it is the read-modify-write as a whole that must be serialised.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (created if missing) for the duration of the block.

    The lock lives on a sidecar file rather than on the data file, because the data file is replaced by
    rename and a lock on the old inode would not exclude a process that opens the new one. The sidecar is
    opened in append mode so that taking the lock never truncates or rewrites it; the kernel drops the
    lock when the file is closed, including when the process dies.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


class Lease:
    """A shared `flock` on `path`, held from construction until `release` (or this process's death).

    Any number of holders may share it; `unused` proves that none holds it. The kernel drops the lock when
    the holder's file is closed, so a run killed with SIGKILL leaves no stale lease behind, which a lease
    recorded in a file would. The file is opened close-on-exec, so a process this one spawns never
    inherits (and so never prolongs) the lease.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(path, "a")  # noqa: SIM115 - closed in release()
        fcntl.flock(self._file, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextlib.contextmanager
def unused(path: Path) -> Iterator[bool]:
    """Whether nobody holds a `Lease` on `path`; while the block runs, nobody can take one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
