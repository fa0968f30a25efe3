"""summary.json during a run, computed in another process so that it cannot disturb what is measured.

Recomputing a summary in the measuring process meant re-reading and JSON-parsing every step line while
holding the GIL (token timestamps wait behind it), and every re-read was of the whole file: quadratic over
a long run. Here a worker process, spawned when the run starts (before its measured window), keeps the
run's tables and reads only what was appended since its last look, so each line is parsed once; the
measuring process only sends it a message. The worker builds the same tables `rundata` builds from the
files and hands them to the same `summary.summarize_run`, so a summary it writes says exactly what
`summary.build_summary` would say of the directory at that moment. The final summary is still computed
from the files by the run itself.

The worker is the harness's helper, never a risk to the run: a failure in it is a warning, a worker
that hangs is killed when the run ends, and one whose run died exits when its pipe closes. It ignores
SIGINT (Ctrl-C reaches the whole process group; the run stops it in order). It imports pandas and the
summary code only, never vLLM or torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from multiprocessing.connection import Connection
from pathlib import Path

import pandas as pd

from flowperf.rundir.records import ENGINE_METRIC_RECORD, METRIC_RECORD, EngineMetricRecord, MetricRecord
from flowperf.rundir.rundata import StepTable, counted_frame
from flowperf.rundir.store import (
    ENGINE_METRICS,
    METRICS,
    STEPS,
    SUMMARY,
    WORKFLOWS,
    RunStore,
    StepKey,
    complete_rows,
    parse_records,
)
from flowperf.rundir.summary import SummaryContext, summarize_run
from flowperf.rundir.summary_schema import RunStatus, RunSummary

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0  # a summary in progress when the run ends may take this long before it is killed
SPAWN = multiprocessing.get_context("spawn")  # vLLM's process model: no fork of a threaded process


def _warn_on_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class TailedFile:
    """The complete lines appended to a file since the last call, each byte read once.

    A file replaced or cut short (a resume rewrites steps.jsonl, cuts torn tails) is read again from its
    start, and the caller told to forget what it had (`restarted`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bytes_read = 0
        self._offset = 0
        self._inode: int | None = None

    def new_lines(self) -> tuple[list[str], bool]:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            restarted = self._offset > 0
            self._offset, self._inode = 0, None
            return [], restarted
        with handle:
            status = os.fstat(handle.fileno())
            restarted = (self._inode not in (None, status.st_ino)) or status.st_size < self._offset
            if restarted:
                self._offset = 0
            self._inode = status.st_ino
            handle.seek(self._offset)
            data = handle.read()
        self.bytes_read += len(data)
        complete = data.rfind(b"\n") + 1  # a torn last line stays unread until its newline arrives
        self._offset += complete
        text = data[:complete].decode("utf-8", errors="replace")
        return [line for line in text.split("\n") if line], restarted


class WorkflowTable:
    """Every complete workflows.csv row read so far."""

    def __init__(self) -> None:
        self._header: list[str] | None = None
        self._rows: list[dict[str, str]] = []

    def add(self, lines: list[str]) -> None:
        if self._header is None and lines:
            self._header, lines = next(csv.reader(lines[:1])), lines[1:]
        self._rows += complete_rows(csv.DictReader(lines, fieldnames=self._header))

    def frame(self, step_keys: Collection[StepKey]) -> pd.DataFrame:
        """Counted workflows, as `rundata.workflow_frame` returns them: the same rule, on these rows."""
        return counted_frame(self._rows, step_keys)


class RunTables:
    """A run directory's tables, brought up to date by reading only what was appended since last time."""

    def __init__(self, store: RunStore) -> None:
        self._files = {
            name: TailedFile(store.path(name)) for name in (WORKFLOWS, STEPS, METRICS, ENGINE_METRICS)
        }
        self._workflows = WorkflowTable()
        self._steps = StepTable()
        self._metrics: list[MetricRecord] = []
        self._engine_metrics: list[EngineMetricRecord] = []

    @property
    def bytes_read(self) -> int:
        return sum(tailed.bytes_read for tailed in self._files.values())

    def refresh(self) -> None:
        lines, restarted = self._files[WORKFLOWS].new_lines()
        if restarted:
            self._workflows = WorkflowTable()
        self._workflows.add(lines)
        lines, restarted = self._files[STEPS].new_lines()
        if restarted:
            self._steps = StepTable()
        self._steps.add(lines)
        lines, restarted = self._files[METRICS].new_lines()
        if restarted:
            self._metrics = []
        self._metrics.extend(parse_records(lines, METRIC_RECORD.validate_json))
        lines, restarted = self._files[ENGINE_METRICS].new_lines()
        if restarted:
            self._engine_metrics = []
        self._engine_metrics.extend(parse_records(lines, ENGINE_METRIC_RECORD.validate_json))

    def summary(self, status: RunStatus, context: SummaryContext) -> RunSummary:
        """What `summary.build_summary` computes from the directory now."""
        self.refresh()
        workflows = self._workflows.frame(self._steps.key_set)
        steps = self._steps.frame(workflows)
        return summarize_run(
            workflows, steps, list(self._metrics), status, context, list(self._engine_metrics)
        )


def serve(run_dir: str, requests: Connection, replies: Connection) -> None:
    """The worker: one summary.json per request, a reply for each (None, or what went wrong); it ends
    on None or when the run's end of the pipe closes (the run is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = RunStore(Path(run_dir))
    tables = RunTables(store)
    try:
        replies.send(None)  # started: its imports are done, so none of their CPU lands in a measurement
    except OSError:
        return
    while True:
        try:
            context = requests.recv()
        except (EOFError, OSError):
            return
        if context is None:
            return
        try:
            store.write_json(SUMMARY, tables.summary("running", context).to_json())
            failure = None
        except Exception as error:  # any failure is the run's warning, never the end of the worker
            failure = f"{type(error).__name__}: {error}"
        try:
            replies.send(failure)
        except OSError:
            return


class SummaryWorker:
    """The run's end of the worker: start, ask for a summary, hear how it went, stop."""

    def __init__(self, run_dir: Path, warn: Callable[[str], None]) -> None:
        self._warn = warn
        child_requests, self._requests = SPAWN.Pipe(duplex=False)
        self._replies, child_replies = SPAWN.Pipe(duplex=False)
        self.process = SPAWN.Process(
            target=serve, args=(str(run_dir), child_requests, child_replies), name="flowperf-summary",
            daemon=True,
        )  # fmt: skip
        self.process.start()
        child_requests.close()  # the worker's ends live in the worker only, so each side sees EOF
        child_replies.close()
        self._outstanding = True  # until the worker says it has started
        self.alive = True

    def ready(self) -> bool:
        """Whether a request may be sent now: the last one answered (its failure warned about) and the
        worker still there."""
        self._collect()
        return self.alive and not self._outstanding

    def request(self, context: SummaryContext) -> None:
        try:
            self._requests.send(context)
        except Exception as error:  # a request that cannot be sent must not end the run
            self._gone(f"cannot send it a request: {type(error).__name__}: {error}")
            return
        self._outstanding = True

    def _collect(self, stopping: bool = False) -> None:
        try:
            while self.alive and self._replies.poll():
                failure = self._replies.recv()
                self._outstanding = False
                if failure is not None:
                    self._warn(f"a periodic summary.json was not written: {failure}")
        except (EOFError, OSError):
            if stopping:
                self.alive = False
            else:
                self._gone(f"exit code {self.process.exitcode}")

    def _gone(self, why: str) -> None:
        self.alive = False
        self._warn(f"the periodic summary worker ended ({why}); summary.json is written at the end only")

    def stop(self, timeout_s: float) -> None:
        """Let a summary in progress finish, then end the worker; kill it if it takes over `timeout_s`."""
        if self.alive:
            with contextlib.suppress(OSError):
                self._requests.send(None)
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
            self._warn(f"the periodic summary worker did not stop within {timeout_s:g}s and was killed")
        else:
            self._collect(stopping=True)
        self._requests.close()
        self._replies.close()


class PeriodicSummaries:
    """summary.json during a run: after every `every` workflows, at most once per `interval_s`, written
    by a worker process (see the module's docstring). `finish()` must be awaited on every way out of the
    run once this exists: it ends the worker, so that the final summary is written last."""

    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        store: RunStore,
        every: int,
        interval_s: float,
        context: SummaryContext,
        warn: Callable[[str], None] = _warn_on_stderr,
    ) -> None:
        self._every = every
        self._interval_s = interval_s
        self._context = context
        self._done = 0
        self._last = time.perf_counter()
        self._worker: SummaryWorker | None = None
        if context.planned_workflows >= every:  # else no summary can fall due: no worker to start
            try:
                self._worker = SummaryWorker(store.run_dir, warn)
            except OSError as error:
                warn(f"cannot start the periodic summary worker ({error})")

    async def started(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until the worker has imported what it needs (about a second of CPU on a small machine),
        so that cost is paid before the warm-up and the measured window, never inside them; a worker
        slower than `timeout_s` is simply not waited for."""
        deadline = time.perf_counter() + timeout_s
        while self._worker is not None and not self._worker.ready() and time.perf_counter() < deadline:
            if not self._worker.alive:
                return
            await asyncio.sleep(0.02)

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id (not an engine process, for whoever accounts for processes)."""
        return self._worker.process.pid if self._worker is not None else None

    def workflow_done(self) -> None:
        self._done += 1
        now = time.perf_counter()
        if self._done % self._every or now - self._last < self._interval_s:
            return
        if self._worker is None or not self._worker.ready():
            return
        self._last = now
        self._worker.request(self._context)

    async def finish(self) -> None:
        """Wait for a summary being written, then end the worker (never raises, never hangs)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.stop, self.stop_timeout_s)
