"""The coordinator of client workers: it shares the window out, opens it, and takes the records in.

It stands where the Runner stands for a single process (`run`, `request_stop`): the run directory, the
progress bar, periodic summaries and the timing log see the same records either way. Worker processes
write their own records and report each workflow; Ray actors hand every record over and the pool writes
them. A worker that fails stops the others and fails the run with its reason (an EngineError).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from flowperf.config import ClientConfig
from flowperf.engines.base import EngineError
from flowperf.engines.openai_http import OpenAIHttpEngine
from flowperf.flows.expand import ExpandedFlow
from flowperf.flows.source import WorkflowSource
from flowperf.run.runner import Runner, WindowListener
from flowperf.run.sinks import MeasuredSink
from flowperf.run.timing import TimingLog
from flowperf.rundir.records import WorkflowRecord
from flowperf.rundir.store import RunStore
from flowperf.workers.clock import ClockAlignment
from flowperf.workers.plan import share_out
from flowperf.workers.session import WorkerSpec, worker_specs

WINDOW_LEAD_S = 0.05  # the window opens this long after the order to open it, so every worker has it


class WorkerGroup(Protocol):
    """How workers are hosted (processes here, Ray actors): the pool's only view of them."""

    writes_records: bool
    alignments: list[ClockAlignment]

    async def start(self, specs: list[WorkerSpec]) -> None: ...

    async def go(self, window_start: float) -> None: ...

    def request_stop(self) -> None: ...

    async def next_message(self) -> tuple[str, int, Any]: ...

    async def close(self) -> None: ...


def worker_group(client: ClientConfig) -> WorkerGroup:
    if client.executor == "ray":
        from flowperf.workers.ray_actors import RayWorkers

        return RayWorkers(client.ray_address)
    from flowperf.workers.processes import ProcessWorkers

    return ProcessWorkers()


class WorkerPool:
    """Runs a measured window on `client.workers` workers instead of in this process."""

    def __init__(
        self,
        client: ClientConfig,
        runner: Runner,
        engine: OpenAIHttpEngine,
        store: RunStore,
        timing: TimingLog,
    ) -> None:
        self.client = client
        self.runner = runner
        self.engine = engine
        self.store = store
        self.timing = timing
        self.group = worker_group(client)
        self._stopping = False
        self._started: int | None = None  # workers started, once `start` has run
        self.window_start: float | None = None  # perf_counter, once the window opens (telemetry reads it)
        self._arrivals: np.ndarray | None = None
        self.window_opened: WindowListener | None = None

    @property
    def flows(self) -> WorkflowSource:
        return self.runner.flows

    def request_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self.group.request_stop()

    async def start(self, workflows: Iterable[ExpandedFlow]) -> None:
        """Start every worker with its share and wait until each has reached the server: before the
        window opens, so that a sweep's --duration counts from the window, not from Ray's start-up."""
        todo = list(workflows)
        config = self.runner.config
        arrivals = self._arrivals = self.runner.arrivals(todo) if self.runner.open_loop else None
        shares = share_out(todo, arrivals, self.client.workers, config.concurrency)
        run_dir = self.store.run_dir if self.group.writes_records else None
        http = replace(self.engine.settings, model=self.engine.model)  # as started: its URLs, its model
        specs = worker_specs(shares, http, config, self.flows, run_dir)
        if self.group.writes_records:
            self.store.write_workflow_header()
        started = time.perf_counter()
        try:
            await self.group.start(specs)
        except BaseException:
            await self.group.close()
            raise
        self._started = len(specs)
        self._report_start(len(specs), started)

    async def run(self, workflows: Iterable[ExpandedFlow], sink: MeasuredSink) -> bool:
        """Every workflow run once by the worker that owns it; whether the window was stopped early."""
        if self._started is None:
            await self.start(workflows)
        assert self._started is not None
        try:
            if self._stopping:
                return True
            self.window_start = time.perf_counter() + WINDOW_LEAD_S
            await self.group.go(self.window_start)
            if self.window_opened is not None:
                self.window_opened(self.window_start, self._arrivals)
            return await self._take_records(self._started, sink) or self._stopping
        finally:
            await self.group.close()

    def _report_start(self, workers: int, started: float) -> None:
        worst = max((alignment.error_s for alignment in self.group.alignments), default=0.0)
        self.timing.emit(
            "workers_start_ms",
            (time.perf_counter() - started) * 1000.0,
            workers=workers,
            executor=self.client.executor,
            clock_error_ms=round(worst * 1000.0, 3),
        )

    async def _take_records(self, workers: int, sink: MeasuredSink) -> bool:
        """Pass each worker's records on until every worker has finished; whether any was stopped."""
        finished, stopped = 0, False
        while finished < workers:
            kind, worker, payload = await self.group.next_message()
            if kind == "step":
                sink.step(payload)
            elif kind == "workflow":
                self._workflow(payload, sink)
            elif kind == "done":
                finished, stopped = finished + 1, stopped or bool(payload)
            elif kind == "failed":
                self.request_stop()
                raise EngineError(
                    f"client worker {worker} failed: {payload}; the records so far are kept: continue with "
                    f"`bench run --resume {self.store.run_dir}`"
                )
        return stopped

    def _workflow(self, record: WorkflowRecord, sink: MeasuredSink) -> None:
        if self.group.writes_records:
            sink.workflow_recorded(record, steps_elsewhere=record.steps_ok + record.steps_failed)
        else:
            sink.workflow(record)
        if record.status != "ok" and self.runner.config.fail_fast:
            self.request_stop()
