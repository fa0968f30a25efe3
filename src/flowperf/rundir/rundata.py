"""A run directory read back into tables: what summaries, reports and comparisons are computed from.

Only what a directory proves is counted, by the rule resume uses (`store.counted_workflows`): a workflow
once it has its row in workflows.csv and every step that row accounts for, its steps only from the session
that completed it. `live_summary` applies the same functions to the lines it tails.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowperf.errors import UserError
from flowperf.rundir.durable import iter_complete_lines
from flowperf.rundir.records import (
    EngineMetricRecord,
    MetricRecord,
    StepRecord,
    WorkflowRecord,
    check_schema_version,
    column_kinds,
)
from flowperf.rundir.store import CONFIG, STEPS, SUMMARY, RunStore, StepKey, counted_workflows

READ_BATCH_LINES = 10_000
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


class StepTable:
    """Step lines tabled once, batch by batch, with their keys: how both a run directory read whole
    (`read_tables`) and the live summary's tailed lines become the steps of counted workflows."""

    def __init__(self) -> None:
        self._chunks: list[pd.DataFrame] = []
        self._keys: list[np.ndarray] = []  # per chunk: flow_index, session, step_index (n x 3)
        self.key_set: set[StepKey] = set()  # what `counted_workflows` checks rows against

    def add(self, lines: list[str]) -> None:
        parsed = [row for row in map(parse_step_line, lines) if row is not None]
        if parsed:
            keys, rows, gaps = zip(*parsed, strict=True)
            self._chunks.append(step_table(list(rows), list(gaps)))
            self._keys.append(np.asarray(keys, dtype=np.int64).reshape(-1, 3))
            self.key_set.update(keys)

    def frame(self, counted: pd.DataFrame) -> pd.DataFrame:
        """Steps of counted workflows, from the session that completed each, the first line of each step."""
        if counted.empty:
            return pd.DataFrame()
        if len(self._chunks) > 1:  # merged once, so each summary concatenates only what is new
            self._chunks = [pd.concat(self._chunks, ignore_index=True)]
            self._keys = [np.concatenate(self._keys)]
        if not self._chunks:
            return step_table([], [])
        keys = self._keys[0]
        wanted = pd.MultiIndex.from_arrays([counted["flow_index"], counted["session"]])
        counted_rows = np.flatnonzero(pd.MultiIndex.from_arrays([keys[:, 0], keys[:, 1]]).isin(wanted))
        first = ~pd.DataFrame(keys[counted_rows][:, [0, 2]]).duplicated(keep="first").to_numpy()
        chosen = counted_rows[first]
        if chosen.size == 0:
            return step_table([], [])
        return self._chunks[0].iloc[chosen].reset_index(drop=True)


def step_frame(store: RunStore, counted: pd.DataFrame) -> pd.DataFrame:
    """Steps of counted workflows (`StepTable.frame`) from the whole of steps.jsonl."""
    return read_steps(store).frame(counted)


def read_steps(store: RunStore) -> StepTable:
    """steps.jsonl tabled, a batch of lines at a time: each line is cut down to its table fields as it
    is read, so the memory this takes is a small fraction of the file (a summary is recomputed during
    long runs, and must not make the harness grow with them)."""
    table = StepTable()
    batch: list[str] = []
    for line in iter_complete_lines(store.path(STEPS)):
        batch.append(line)
        if len(batch) == READ_BATCH_LINES:
            table.add(batch)
            batch = []
    table.add(batch)
    return table


def read_tables(store: RunStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The counted workflows and their steps, steps.jsonl read once."""
    steps = read_steps(store)
    workflows = counted_frame(store.read_workflows(), steps.key_set)
    return workflows, steps.frame(workflows)


@dataclass(frozen=True)
class RunData:
    """Everything a run directory holds, read once."""

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None
    workflows: pd.DataFrame
    steps: pd.DataFrame
    metrics: list[MetricRecord]
    engine_metrics: list[EngineMetricRecord] = field(default_factory=list)

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
    workflows, steps = read_tables(store)
    return RunData(
        run_dir=run_dir,
        config=config,
        summary=summary,
        workflows=workflows,
        steps=steps,
        metrics=store.read_metrics(),
        engine_metrics=store.read_engine_metrics(),
    )
