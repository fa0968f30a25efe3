"""An exclusive lock between processes, for read-modify-write of small shared files.

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
