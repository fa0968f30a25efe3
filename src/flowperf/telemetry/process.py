"""The HTTP servers' metrics read in a process of its own, so that parsing them never holds the GIL of the
process that stamps tokens.

On a 2-core host a scraper thread inside the measuring process cost it about 4% of its CPU and raised the
client's TTFT p99 far past the noise between runs (docs/PERFORMANCE.md): every page parsed holds the GIL
the measuring event loop wants. Here a child process reads the pages, parses them with prometheus_client,
turns them into interval records (`scraper.Rounds`) and appends them to engine_metrics.jsonl itself (one
write(2) per line to an O_APPEND descriptor, as client workers append to shared logs; `AppendLog`). The
measuring process only sends it three short messages: `go` as the window is about to open, the window's
start once known, and `stop`; it answers with its statistics as it ends.

Samples are stamped with `perf_counter` in the child: on Linux that is CLOCK_MONOTONIC, one clock for every
process on the host, so the child's stamps and the parent's window start subtract directly (a test checks
it). The child is started before the warm-up, so its start-up (about 0.3 s of CPU for the interpreter,
pydantic and prometheus_client) is paid outside the measured window. It dies with the process that spawned
it (PR_SET_PDEATHSIG, as client workers do: a SIGKILLed run leaves nothing appending to its directory),
ignores SIGINT and SIGTERM (the run stops it in order), and ends by itself when its pipe closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from flowperf.rundir.records import engine_metric_line
from flowperf.telemetry.scraper import Rounds, ScrapeStats, Source, next_round_at

SRC_DIR = str(Path(__file__).resolve().parents[2])  # where `flowperf` is imported from
CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from flowperf.telemetry.process import main; main()"
PR_SET_PDEATHSIG = 1
ORIGIN_POLL_S = 0.02
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (workers/processes.py does the same)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class AppendLog:
    """engine_metrics.jsonl as the scraper process appends to it: each line one write(2) to an O_APPEND
    descriptor (a SIGKILL loses nothing written; the measuring process's lines never interleave with its
    own), forced to disk once, at the end. Not every 0.1 s as the run's own logs are (DurableLog): each
    fsync during the window also flushed the file system's journal under the client's step writes, and
    measured so it raised the client's TTFT p99 by ~20 ms on a 2-core host (docs/PERFORMANCE.md). A
    machine crash may lose this telemetry's tail, never a step."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:  # a regular file takes it in one write unless the disk fills
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


class _Child:
    """The child's side: wait for `go`, then a round every period until `stop` (or the pipe closes)."""

    def __init__(self, rounds: Rounds, interval_s: float, path: str, pipe: Connection) -> None:
        self.rounds, self.interval_s, self.pipe = rounds, interval_s, pipe
        self.log = AppendLog(Path(path))
        self.origin: float | None = None
        self.going = self.stopping = False
        self.write_error: str | None = None

    def receive(self, wait_s: float) -> None:
        """Take every message that arrives within `wait_s` (stops waiting at `stop`)."""
        deadline = time.perf_counter() + wait_s
        while not self.stopping:
            try:
                if not self.pipe.poll(max(0.0, deadline - time.perf_counter())):
                    return
                kind, value = self.pipe.recv()
            except (EOFError, OSError):  # the run is gone: end as if told to stop
                kind, value = "stop", None
            self.going = self.going or kind == "go"
            self.origin = value if value is not None else self.origin
            self.stopping = kind == "stop"
            if kind == "go":
                self.rounds.started = time.perf_counter()
                return

    def serve(self) -> None:
        while not self.going and not self.stopping:
            self.receive(3600.0)
        next_round = time.perf_counter()
        window_cpu = time.process_time()
        while self.going:
            stopping = self.stopping
            self.rounds.scrape_all()
            self.write(self.rounds.flush(self.origin, final=stopping))
            if stopping:
                break
            next_round = next_round_at(next_round, self.interval_s)
            self.receive(next_round - time.perf_counter())
        self.rounds.stats.window_cpu_ms = (time.process_time() - window_cpu) * 1000.0
        self.log.close()

    def write(self, records: list) -> None:
        for record in records:
            if self.write_error is not None:
                return
            try:
                self.log.append(engine_metric_line(record))
            except Exception as error:  # a full disk: stop writing these, say so at the end
                self.write_error = f"{type(error).__name__}: {error}"


def main() -> None:
    """The scraper process (`python -c CHILD SRC_DIR FD`): its settings come first on the connection,
    then it says it is ready, reads between `go` and `stop`, and sends its statistics back."""
    pipe = Connection(int(sys.argv[2]))
    sources, interval_s, session, path, parent = pipe.recv()
    _die_with_parent(parent)
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, signal.SIG_IGN)
    child = _Child(Rounds(sources, interval_s, session), interval_s, path, pipe)
    with contextlib.suppress(OSError):
        pipe.send(("ready", None))
    child.serve()
    child.rounds.stats.process_cpu_ms = time.process_time() * 1000.0
    with contextlib.suppress(OSError):
        pipe.send(("stats", (child.rounds.stats, child.write_error)))


class ProcessScraper:
    """The measuring process's end: spawn (before the warm-up), `start` at the window, `stop` after it."""

    def __init__(
        self,
        sources: list[Source],
        interval_s: float,
        session: int,
        path: Path,
        origin: Callable[[], float | None],
    ) -> None:
        self.servers = len(sources)
        self.timeout_s = Rounds(sources, interval_s, session).timeout_s
        self.origin = origin
        self.stats = ScrapeStats()
        self.write_error: str | None = None
        ours, theirs = socket.socketpair()
        # a plain interpreter, not multiprocessing's spawn: that would import the parent's __main__ (the
        # whole CLI) in the child, a second of CPU taken from the 2 cores the run measures on
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, SRC_DIR, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()  # the child's end lives in the child only, so each side sees EOF
        self._pipe = Connection(ours.detach())
        self._pipe.send((sources, interval_s, session, str(path), os.getpid()))
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = time.perf_counter()
        self._publisher = threading.Thread(target=self._publish_origin, name="flowperf-origin", daemon=True)

    def ready(self, timeout_s: float = 0.0) -> bool:
        """Whether the child has imported what it needs (waits up to `timeout_s`)."""
        try:
            return self._pipe.poll(timeout_s) and self._pipe.recv()[0] == "ready"
        except (EOFError, OSError, ValueError):
            return False

    def start(self) -> None:
        self._started = time.perf_counter()
        self._send(("go", None))
        self._publisher.start()

    def _send(self, message: tuple) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._pipe.send(message)

    def _publish_origin(self) -> None:
        """Tell the child the window's start once it is known: a glance at an attribute every 20 ms,
        the only cost the scraping leaves in the measuring process."""
        while not self._stopping.wait(ORIGIN_POLL_S):
            origin = self.origin()
            if origin is not None and origin >= self._started - 1.0:
                self._send(("origin", origin))
                return

    def stop(self) -> ScrapeStats:
        """One last round in the child, its statistics back; killed if it does not end in time.
        Blocking, so call it off the event loop."""
        self._stopping.set()
        origin = self.origin()
        self._send(("stop", origin if origin is not None and origin >= self._started - 1.0 else None))
        deadline = time.perf_counter() + self.timeout_s * (self.servers + 1) + STOP_GRACE_S
        self._collect(deadline)
        try:
            self.process.wait(max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.write_error = self.write_error or "the scraper process did not stop in time and was killed"
        self._pipe.close()
        return self.stats

    def _collect(self, deadline: float) -> None:
        try:
            while self._pipe.poll(max(0.0, deadline - time.perf_counter())):
                kind, value = self._pipe.recv()
                if kind == "stats":
                    self.stats, self.write_error = value
                    return
        except (EOFError, OSError):
            self.write_error = f"the scraper process ended early (exit code {self.process.poll()})"
