"""Where the runner's records go: the run directory for measured workflows, the timing log alone for
warm-up. The runner builds the same records either way and never asks which window it is in; choosing
the sink is the caller's decision, made once per call.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from flowperf.flows.expand import ExpandedFlow
from flowperf.run.timing import TimingLog
from flowperf.rundir.records import StepRecord, WorkflowRecord
from flowperf.rundir.store import RunStore

PhaseTimer = Callable[..., AbstractContextManager[None]]


class RecordSink(Protocol):
    def workflow_scope(self, flow: ExpandedFlow) -> AbstractContextManager[None]:
        """Wraps one workflow from its first step to its last (resource phases)."""
        ...

    def step(self, record: StepRecord) -> None: ...

    def workflow(self, record: WorkflowRecord) -> None: ...


class WarmupSink:
    """Warm-up workflows: a `warmup_N_ms` timing line each, and nothing in any statistic.

    It remembers why the first failed warm-up workflow failed: a run that stops on it (fail-fast) has
    measured nothing and must say why, and one that goes on must at least warn.
    """

    def __init__(self, timing: TimingLog) -> None:
        self._timing = timing
        self.failure: str | None = None

    def workflow_scope(self, flow: ExpandedFlow) -> AbstractContextManager[None]:
        return nullcontext()

    def step(self, record: StepRecord) -> None:
        return None

    def workflow(self, record: WorkflowRecord) -> None:
        self._timing.emit(
            f"warmup_{record.flow_index}_ms", record.workflow_ms, steps=record.steps, status=record.status
        )
        if record.status != "ok" and self.failure is None:
            self.failure = (
                f"warm-up workflow {record.flow_index} failed at step {record.steps_ok + 1} of "
                f"{record.steps}: {record.error_type}: {record.error_message}"
            )


class ForwardingSink:
    """A client worker's measured workflows, each record handed to `forward` as it finishes.

    With `store` (a worker process on the coordinator's host) the worker makes its records durable in
    the run directory itself and forwards only each workflow's record, for progress; without (a Ray
    actor, possibly on another machine) it forwards every record and the coordinator writes them.
    """

    def __init__(self, forward: Callable[[str, Any], None], store: RunStore | None = None) -> None:
        self._forward = forward
        self._store = store

    def workflow_scope(self, flow: ExpandedFlow) -> AbstractContextManager[None]:
        return nullcontext()

    def step(self, record: StepRecord) -> None:
        if self._store is None:
            self._forward("step", record)
        else:
            self._store.append_step(record)

    def workflow(self, record: WorkflowRecord) -> None:
        if self._store is not None:
            self._store.append_workflow(record)
        self._forward("workflow", record)


class MeasuredSink:
    """Measured workflows: every record durable in the run directory as it arrives, a timing line per
    workflow, a `workflow` resource phase around each, and `on_workflow` told (progress, summaries)."""

    def __init__(
        self,
        store: RunStore,
        timing: TimingLog,
        phase: PhaseTimer,
        on_workflow: Callable[[WorkflowRecord], Any] = lambda record: None,
    ) -> None:
        self._store = store
        self._timing = timing
        self._phase = phase
        self._on_workflow = on_workflow
        self.steps_done = 0

    def workflow_scope(self, flow: ExpandedFlow) -> AbstractContextManager[None]:
        return self._phase("workflow", flow_index=flow.index)

    def step(self, record: StepRecord) -> None:
        self._store.append_step(record)
        self.steps_done += 1

    def workflow(self, record: WorkflowRecord) -> None:
        self._store.append_workflow(record)
        self.workflow_recorded(record)

    def workflow_recorded(self, record: WorkflowRecord, steps_elsewhere: int = 0) -> None:
        """The rest of a workflow's bookkeeping once its records are durable; a client worker process
        that wrote them itself (`steps_elsewhere` step lines) tells the coordinator through this."""
        self.steps_done += steps_elsewhere
        self._timing.emit(
            f"workflow_{record.flow_index}_ms", record.workflow_ms, steps=record.steps, status=record.status
        )
        self._on_workflow(record)
