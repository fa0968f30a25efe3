"""What one client worker runs, wherever it is hosted (a process on this host, or a Ray actor).

A worker is an ordinary Runner over an HTTP engine of its own (its own event loop and connection pool),
given its share of the sessions and the coordinator's window start, and a sink that forwards what it
records. Nothing here knows how the worker is hosted: `forward` is the only way out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine
from flowperf.flows.source import WorkflowSource
from flowperf.run.runner import ExecutionConfig, MeasuredWindow, Runner
from flowperf.run.sinks import ForwardingSink
from flowperf.rundir.store import RunStore
from flowperf.workers.plan import Share

Forward = Callable[[str, Any], None]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable: sent once when it starts.

    `run_dir` is set when the worker can write the run directory itself (a process on the coordinator's
    host); a Ray actor, possibly on another machine, forwards every record instead.
    """

    worker: int
    http: HttpClientConfig
    execution: ExecutionConfig
    flows: WorkflowSource
    share: Share
    run_dir: str | None


def worker_specs(
    shares: list[Share],
    http: HttpClientConfig,
    execution: ExecutionConfig,
    flows: WorkflowSource,
    run_dir: Path | None,
) -> list[WorkerSpec]:
    """One spec per share: each worker's pool sized for its own share of the connections in flight."""
    pool = -(-http.concurrency // len(shares))
    return [
        WorkerSpec(
            worker=share.worker,
            http=replace(http, concurrency=max(1, pool)),
            execution=replace(execution, concurrency=share.concurrency),
            flows=flows,
            share=share,
            run_dir=None if run_dir is None else str(run_dir),
        )
        for share in shares
    ]


class WorkerSession:
    """One worker's engine, runner and sink; `start`, then `run` once, then `close`."""

    def __init__(self, spec: WorkerSpec, forward: Forward) -> None:
        self.spec = spec
        self.engine = OpenAIHttpEngine(spec.http)
        self.runner = Runner(spec.flows, self.engine, spec.execution)
        self.store = None if spec.run_dir is None else RunStore(Path(spec.run_dir))
        self.sink = ForwardingSink(forward, self.store)

    async def start(self) -> None:
        """Connect (and check the server) before the window opens, so no measured request pays for it."""
        await self.engine.start()
        self.spec.flows.compile_templates()

    async def run(self, window_start: float) -> bool:
        """This worker's share of the window from `window_start` (its own clock); whether it was stopped."""
        share = self.spec.share
        arrivals = share.arrivals_s if share.arrivals_s is not None else np.zeros(0)
        return await self.runner.run(share.flows, self.sink, MeasuredWindow(window_start, arrivals))

    def request_stop(self) -> None:
        self.runner.request_stop()

    async def close(self) -> None:
        try:
            await self.engine.shutdown()
        finally:
            if self.store is not None:
                self.store.close()
