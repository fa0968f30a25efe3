"""File writes that survive a crash at any instant.

Two primitives cover every output flowperf writes: whole files replaced atomically (a reader sees the old
file or the new one, never half of one) and append-only logs whose every line is on disk before the call
returns (a crash loses at most the line being written, which readers detect as a torn tail).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` via a temp file in the same directory, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def append_durably(handle: IO[str], text: str) -> None:
    """Append `text` (one or more whole lines) to an open file and force it to disk."""
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())


class DurableLog:
    """An append-only log for hot paths: appends reach the OS at once, a thread forces them to disk.

    Every `append` is one write(2) to a descriptor opened with O_APPEND before it returns, so a killed
    process (even SIGKILL) loses nothing it appended, and several processes appending to the same file
    (client workers) never interleave inside each other's lines. The fsync that protects against a
    machine crash costs up to a millisecond under load (and a write to a file being fsync'd waits for
    it), so a background thread does it at most every `sync_interval_s`, instead of the caller: a machine
    crash can lose at most that much.
    """

    sync_interval_s = 0.1

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_forever, name=f"fsync-{Path(path).name}", daemon=True
        )
        self._syncer.start()

    def append(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        with self._lock:
            if self._fd is None:
                raise ValueError("append to a closed log")
            while data:  # a regular file takes it in one write unless the disk fills
                data = data[os.write(self._fd, data) :]
        self._pending.set()

    def _sync_forever(self) -> None:
        while not self._stop.is_set():
            self._pending.wait()
            self._pending.clear()
            if self._stop.is_set():
                return
            with contextlib.suppress(OSError):  # close() joins this thread before closing the file
                os.fsync(self._fd)  # type: ignore[arg-type]
            self._stop.wait(self.sync_interval_s)

    def close(self) -> None:
        self._stop.set()
        self._pending.set()
        self._syncer.join()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def iter_complete_lines(path: Path) -> Iterator[str]:
    """Lines of an append-only log, one at a time, without a torn last line left by a crash mid-write."""
    try:
        handle = open(path, encoding="utf-8", errors="replace", newline="\n")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            # every complete line ends with "\n"; a line without one is a torn tail
            if line.endswith("\n") and len(line) > 1:
                yield line[:-1]


def read_complete_lines(path: Path) -> list[str]:
    """All complete lines of an append-only log."""
    return list(iter_complete_lines(path))
