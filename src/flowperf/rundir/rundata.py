"""A run directory read back into tables: what summaries, reports and comparisons are computed from.

Only what a directory proves is counted, by the rule resume uses (`store.counted_workflows`): a workflow
once it has its row in workflows.csv and every step that row accounts for, its steps only from the session
that completed it. `live_summary` applies the same functions to the lines it tails.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowperf.errors import UserError
from flowperf.rundir.durable import iter_complete_lines
from flowperf.rundir.records import (
    MetricRecord,
    StepRecord,
    WorkflowRecord,
    check_schema_version,
    column_kinds,
)
from flowperf.rundir.store import CONFIG, STEPS, SUMMARY, RunStore, StepKey, counted_workflows

TEXT_FIELDS = {"prompt_text", "output_text"}  # kept in the file, never loaded into tables
KEY_COLUMNS = {"flow_index", "session", "step_index"}
WORKFLOW_KINDS = column_kinds(WorkflowRecord)
STEP_KINDS = {name: kind for name, kind in column_kinds(StepRecord).items() if name not in TEXT_FIELDS}


def typed(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """`frame` with one fixed dtype per record field: keys int64, other numbers float64 (a missing value
    is NaN, never 0), text as object; a field the file predates is added, all missing."""
    for column, kind in kinds.items():
        if column not in frame:
            frame[column] = float("nan") if kind in ("int", "float") else None
        elif column in KEY_COLUMNS:
            frame[column] = pd.to_numeric(frame[column]).astype("int64")
        elif kind in ("int", "float"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def workflow_frame(store: RunStore) -> pd.DataFrame:
    """Counted workflows: one row per flow_index (see `counted_frame`)."""
    return counted_frame(store.read_workflows(), store.step_keys())


def counted_frame(rows: list[dict[str, str]], step_keys: Collection[StepKey]) -> pd.DataFrame:
    """The rows `store.counted_workflows` counts (those whose steps are all in `step_keys`, the first of
    each flow_index), as a typed table: the one rule for resume, summaries, reports and compare."""
    counted = counted_workflows(rows, step_keys)
    return typed(pd.DataFrame(counted), WORKFLOW_KINDS) if counted else pd.DataFrame()


StepRow = tuple[StepKey, tuple[Any, ...], np.ndarray]


def parse_step_line(line: str) -> StepRow | None:
    """One steps.jsonl line cut down to its key, its STEP_KINDS fields and its gaps as a float array;
    None for a line that is not a step (damaged): the one reading of a step line for every table."""
    try:
        record = json.loads(line)
        key = (int(record["flow_index"]), int(record.get("session", 0)), int(record["step_index"]))
    except (ValueError, KeyError, TypeError):
        return None
    row = tuple(record.get(column) for column in STEP_KINDS)
    return key, row, np.asarray(record.get("itl_ms") or (), dtype=float)


def step_table(rows: list[tuple[Any, ...]], gaps: list[np.ndarray]) -> pd.DataFrame:
    """Parsed step lines as a table: fixed dtypes, one gap array per step."""
    frame = typed(pd.DataFrame.from_records(rows, columns=list(STEP_KINDS)), STEP_KINDS)
    frame["itl_ms"] = gaps
    return frame


def step_frame(store: RunStore, counted: pd.DataFrame) -> pd.DataFrame:
    """Steps of counted workflows, from the session that completed each: every StepRecord field but the
    texts, with the inter-token gaps as one float array per step.

    The file is read a line at a time and each record cut down at once, so the memory this takes is a
    small fraction of the file, whatever its length (a summary is recomputed during long runs, and must
    not make the harness grow with them).
    """
    if counted.empty:
        return pd.DataFrame()
    wanted = set(zip(counted["flow_index"], counted["session"], strict=True))
    seen: set[tuple[int, int]] = set()
    rows: list[tuple[Any, ...]] = []
    gaps: list[np.ndarray] = []
    for line in iter_complete_lines(store.path(STEPS)):
        parsed = parse_step_line(line)
        if parsed is None:
            continue
        (flow, session, step), row, step_gaps = parsed
        if (flow, session) not in wanted or (flow, step) in seen:
            continue
        seen.add((flow, step))
        rows.append(row)
        gaps.append(step_gaps)
    return step_table(rows, gaps)


@dataclass(frozen=True)
class RunData:
    """Everything a run directory holds, read once."""

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None
    workflows: pd.DataFrame
    steps: pd.DataFrame
    metrics: list[MetricRecord]

    @property
    def ok_workflows(self) -> pd.DataFrame:
        return (
            self.workflows[self.workflows["status"] == "ok"] if not self.workflows.empty else self.workflows
        )

    @property
    def ok_steps(self) -> pd.DataFrame:
        return self.steps[self.steps["status"] == "ok"] if not self.steps.empty else self.steps


def load_run(run_dir: Path, flag: str = "RUN_DIR") -> RunData:
    """Read a run directory (complete, interrupted or crashed); a UserError if it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{flag} {run_dir}: no such directory")
    store = RunStore(run_dir)
    if not store.path(CONFIG).is_file():
        raise UserError(f"{flag} {run_dir}: not a run directory (no {CONFIG})")
    config = store.read_json(CONFIG)
    check_schema_version(config, f"{flag} {run_dir}")
    summary = store.read_json(SUMMARY) if store.path(SUMMARY).is_file() else None
    workflows = workflow_frame(store)
    return RunData(
        run_dir=run_dir,
        config=config,
        summary=summary,
        workflows=workflows,
        steps=step_frame(store, workflows),
        metrics=store.read_metrics(),
    )
