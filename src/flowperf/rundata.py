"""A run directory read back into tables: what summaries, reports and comparisons are computed from.

Only what a directory proves is counted: a workflow once it has its row in workflows.csv (the first row,
should a damaged directory hold two), its steps only from the session that completed it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowperf.durable import iter_complete_lines
from flowperf.errors import UserError
from flowperf.store import CONFIG, STEPS, SUMMARY, RunStore

NUMERIC_WORKFLOW_COLUMNS = (
    "flow_index",
    "session",
    "workflow_ms",
    "step_ms_sum",
    "output_tokens",
    "prompt_tokens",
    "cached_prompt_tokens",
    "arrival_offset_ms",
    "start_offset_ms",
    "end_offset_ms",
)


def workflow_frame(store: RunStore) -> pd.DataFrame:
    """Counted workflows, numeric columns as numbers."""
    frame = pd.DataFrame(store.read_workflows())
    if frame.empty:
        return frame
    for column in NUMERIC_WORKFLOW_COLUMNS:
        # a column added after the directory was written reads as empty
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else float("nan")
    return frame.drop_duplicates(subset=["flow_index"], keep="first")


STEP_COLUMNS = (
    "flow_index",
    "session",
    "step_index",
    "step_id",
    "status",
    "error_type",
    "start_offset_ms",
    "step_ms",
    "ttft_ms",
    "tpot_ms",
    "prompt_tokens",
    "output_tokens",
    "cached_prompt_tokens",
    "engine_queue_ms",
    "engine_ttft_ms",
    "inflight_at_start",
)


def step_frame(store: RunStore, counted: pd.DataFrame) -> pd.DataFrame:
    """Steps of counted workflows, from the session that completed each: the fields statistics use.

    The file is read a line at a time and each record is cut down to STEP_COLUMNS plus its inter-token
    gaps as a float array, so the memory this takes is a small fraction of the file, whatever its length
    (a summary is recomputed during long runs, and must not make the harness grow with them).
    """
    if counted.empty:
        return pd.DataFrame()
    wanted = set(zip(counted["flow_index"].astype(int), counted["session"].astype(int), strict=True))
    seen: set[tuple[int, int]] = set()
    rows: list[tuple[Any, ...]] = []
    gaps: list[np.ndarray] = []
    for line in iter_complete_lines(store.path(STEPS)):
        try:
            record = json.loads(line)
            key = (int(record["flow_index"]), int(record["step_index"]))
            counted_key = (key[0], int(record.get("session", 0)))
        except (ValueError, KeyError, TypeError):
            continue
        if counted_key not in wanted or key in seen:
            continue
        seen.add(key)
        rows.append(tuple(record.get(column) for column in STEP_COLUMNS))
        gaps.append(np.asarray(record.get("itl_ms") or (), dtype=float))
    frame = pd.DataFrame.from_records(rows, columns=list(STEP_COLUMNS))
    frame["itl_ms"] = gaps
    return frame


@dataclass(frozen=True)
class RunData:
    """Everything a run directory holds, read once."""

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None
    workflows: pd.DataFrame
    steps: pd.DataFrame
    metrics: list[dict[str, Any]]

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
