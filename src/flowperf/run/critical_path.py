"""Where a workflow's time went: the critical path through the steps it ran.

The path is the one the run actually took: from the step that finished last, back through the need that
finished last (the one that held it up), to a step with no needs. Its steps' durations add to
`critical_path_ms`; the makespan minus that is time no step on the path was running (the harness's
scheduling, never more than a few ms per step). Along the path the time splits into LLM calls, of which
the engine's own queueing (its clock, a duration), and tool and think pauses. Pure: records in, numbers
out, so the same function reads a finished run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flowperf.rundir.records import StepRecord


@dataclass(frozen=True)
class CriticalPath:
    steps: tuple[int, ...]
    critical_path_ms: float
    llm_ms: float
    tool_ms: float
    engine_queue_ms: float | None

    def as_fields(self) -> dict[str, float | None]:
        """The WorkflowRecord fields it fills."""
        return {
            "critical_path_ms": self.critical_path_ms,
            "llm_ms": self.llm_ms,
            "tool_ms": self.tool_ms,
            "engine_queue_ms": self.engine_queue_ms,
        }


def _end(record: StepRecord) -> float:
    return (
        record.end_offset_ms if record.end_offset_ms is not None else record.start_offset_ms + record.step_ms
    )


def critical_path(records: Sequence[StepRecord]) -> CriticalPath:
    """The critical path of one workflow's step records (of one session)."""
    if not records:
        return CriticalPath((), 0.0, 0.0, 0.0, None)
    by_index = {record.step_index: record for record in records}
    current = max(records, key=_end)
    path = [current]
    while current.needs:
        held_by = [by_index[need] for need in current.needs if need in by_index]
        if not held_by:
            break
        current = max(held_by, key=_end)
        path.append(current)
    path.reverse()
    durations = [(record, _end(record) - record.start_offset_ms) for record in path]
    queues = [record.engine_queue_ms for record in path if record.kind == "llm"]
    known_queues = [queue for queue in queues if queue is not None]
    return CriticalPath(
        steps=tuple(record.step_index for record in path),
        critical_path_ms=round(sum(duration for _, duration in durations), 3),
        llm_ms=round(sum(duration for record, duration in durations if record.kind == "llm"), 3),
        tool_ms=round(sum(duration for record, duration in durations if record.kind != "llm"), 3),
        engine_queue_ms=round(sum(known_queues), 3)
        if known_queues and len(known_queues) == len(queues)
        else None,
    )
