"""The run directory: the contract that reports, compare, resume and CI rely on (see DESIGN.md).

Results are appended as each step and workflow finishes, so a crash loses at most the line being
written; whole-file outputs (config.json, summary.json) are replaced atomically. Readers skip a torn last
line instead of failing on it, and reopening a directory to resume cuts such a line off before anything
is appended after it.

A workflow counts once it has its row in workflows.csv *and* every step that row accounts for is in
steps.jsonl, from the same session (`counted_workflows`). The row is appended after its steps, but the
two files reach the disk independently (each log is fsync'd by its own thread, and the kernel writes dirty
pages back in any order), so after a machine crash a row can outlive its steps. Such a row is no proof of
a finished workflow: on resume it is dropped with the workflow's other lines, and the workflow runs again
from its first step, exactly as one that was in flight. A SIGKILL loses nothing finished either way:
every append reaches the OS before the call returns.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any, TypeVar

from flowperf.errors import UserError
from flowperf.rundir.durable import DurableLog, atomic_write_text, read_complete_lines
from flowperf.rundir.records import (
    ENGINE_METRIC_RECORD,
    METRIC_RECORD,
    EngineMetricRecord,
    MetricRecord,
    StepRecord,
    WorkflowRecord,
    check_schema_version,
    engine_metric_line,
    metric_line,
)

CONFIG = "config.json"
STEPS = "steps.jsonl"
WORKFLOWS = "workflows.csv"
METRICS = "metrics.jsonl"
TIMING_LOG = "timing.log"
SUMMARY = "summary.json"
ENGINE_LOG = "engine.log"
ITERATIONS = "iterations.jsonl"  # the in-process engine's steps (engines/iteration_log.py)
ENGINE_METRICS = "engine_metrics.jsonl"  # the engines' own metrics over the window (telemetry/)

APPEND_ONLY_FILES = (STEPS, WORKFLOWS, METRICS, TIMING_LOG, ENGINE_METRICS)

WORKFLOW_COLUMNS = tuple(WorkflowRecord.model_fields)


class StoreWriteError(UserError):
    """The run directory cannot be written (disk full, permissions): what is already there stays valid."""


TAIL_CHUNK = 64 * 1024
T = TypeVar("T")
StepKey = tuple[int, int, int]
"""A step line's (flow_index, session, step_index)."""


def expected_steps(row: dict[str, str]) -> int:
    """How many step lines a workflow row accounts for: its ok steps and its failed ones (a chain, and
    every row before schema 3, stops at its one failed step)."""
    failed = row.get("steps_failed") or ("1" if row["status"] == "failed" else "0")
    return int(row["steps_ok"]) + int(failed)


def counted_workflows(rows: Iterable[dict[str, str]], step_keys: Collection[StepKey]) -> list[dict[str, str]]:
    """The workflow rows that prove a finished workflow: the first row of each flow_index with at least
    `expected_steps` distinct steps of the row's session in `step_keys` (a session runs a workflow once,
    so its steps are that run's). The one rule of what counts, for resume and for every reader of a run
    directory."""
    recorded = Counter((flow, session) for flow, session, _ in step_keys)
    counted: dict[int, dict[str, str]] = {}
    for row in rows:
        try:
            flow, session, expected = int(row["flow_index"]), int(row["session"]), expected_steps(row)
        except (KeyError, TypeError, ValueError):
            continue
        if flow in counted or expected < 1:
            continue
        if recorded[(flow, session)] >= expected:
            counted[flow] = row
    return list(counted.values())


def _cut_torn_tail(path: Path) -> None:
    """Truncate an append-only file after its last complete line, reading back from its end only as
    far as that line (the files of a long run are large)."""
    try:
        handle = path.open("r+b")
    except FileNotFoundError:
        return
    with handle:
        end = position = handle.seek(0, os.SEEK_END)
        complete = 0
        while position > 0:
            start = max(0, position - TAIL_CHUNK)
            handle.seek(start)
            newline = handle.read(position - start).rfind(b"\n")
            if newline >= 0:
                complete = start + newline + 1
                break
            position = start
        if complete != end:
            handle.truncate(complete)


def recorded_config(run_dir: Path) -> dict[str, Any]:
    """The settings a run directory was started with (config.json's `config`), read without touching
    anything in it, so a resume that is then refused leaves the directory exactly as it was."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"--resume {run_dir}: not a run directory (no {CONFIG})")
    document = RunStore(run_dir).read_json(CONFIG)
    check_schema_version(document, f"--resume {run_dir}")
    settings = document.get("config")
    if not isinstance(settings, dict):
        raise UserError(f"--resume {run_dir / CONFIG}: no `config` object in it")
    return settings


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._logs: dict[str, DurableLog] = {}
        self._workflow_columns: tuple[str, ...] | None = None

    @classmethod
    def create(cls, out_dir: Path, run_id: str) -> RunStore:
        """Make a new, empty run directory; refuses to reuse an existing one."""
        run_dir = Path(out_dir) / run_id
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            run_dir.mkdir()
        except FileExistsError:
            raise UserError(
                f"--run-id {run_id}: {run_dir} exists already (use --resume to continue it)"
            ) from None
        except OSError as error:
            raise UserError(f"--out {out_dir}: cannot create the run directory ({error.strerror})") from None
        if not os.access(run_dir, os.W_OK):
            raise UserError(f"--out {out_dir}: the run directory is not writable")
        return cls(run_dir)

    @classmethod
    def reopen(cls, run_dir: Path) -> RunStore:
        """Open an existing run directory to append to it, cutting off torn last lines first."""
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).is_file():
            raise UserError(f"--resume {run_dir}: not a run directory (no {CONFIG})")
        if not os.access(run_dir, os.W_OK):
            raise UserError(f"--resume {run_dir}: the run directory is not writable")
        for name in APPEND_ONLY_FILES:
            _cut_torn_tail(run_dir / name)
        return cls(run_dir)

    def read_json(self, name: str) -> dict[str, Any]:
        try:
            document = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{self.path(name)}: unreadable ({error})") from None
        if not isinstance(document, dict):
            raise UserError(f"{self.path(name)}: expected a JSON object")
        return document

    def step_keys(self) -> set[StepKey]:
        return {key for key in map(_step_key, read_complete_lines(self.path(STEPS))) if key is not None}

    def counted_workflows(self) -> list[dict[str, str]]:
        return counted_workflows(self.read_workflows(), self.step_keys())

    def completed_flow_indices(self) -> set[int]:
        return {int(row["flow_index"]) for row in self.counted_workflows()}

    def next_session(self) -> int:
        """One more than any session with a counted workflow: once `drop_unfinished_steps` ran, every
        line left belongs to such a workflow, and its session."""
        return max((int(row["session"]) for row in self.counted_workflows()), default=-1) + 1

    def drop_unfinished_steps(self, completed: set[int]) -> int:
        """Rewrite workflows.csv and steps.jsonl with only the lines of counted workflows in `completed`
        (a row that lost its steps in a crash, steps whose workflow has no row or a row of another
        session); returns how many step lines went. Each file is replaced atomically, so a crash here
        leaves a directory this same rule reads the same way."""
        rows = [row for row in self.counted_workflows() if int(row["flow_index"]) in completed]
        if len(rows) != len(self.read_workflows()):
            atomic_write_text(self.path(WORKFLOWS), _csv_text(rows, header=bool(rows)))
        wanted = {(int(row["flow_index"]), int(row["session"])) for row in rows}
        lines = read_complete_lines(self.path(STEPS))
        kept = [line for line in lines if (_step_key(line) or (None, None))[:2] in wanted]
        if len(kept) != len(lines):
            atomic_write_text(self.path(STEPS), "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def _append(self, name: str, text: str) -> None:
        try:
            log = self._logs.get(name)
            if log is None:
                log = self._logs[name] = DurableLog(self.path(name))
            log.append(text)
        except OSError as error:
            raise StoreWriteError(
                f"cannot write {self.path(name)} ({error.strerror}); the results written so far are intact: "
                f"fix the cause and continue with `bench run --resume {self.run_dir}`"
            ) from None

    def _is_empty(self, name: str) -> bool:
        try:
            return self.path(name).stat().st_size == 0
        except FileNotFoundError:
            return True

    def write_json(self, name: str, document: dict[str, Any]) -> None:
        try:
            atomic_write_text(
                self.path(name), json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"
            )
        except OSError as error:
            raise StoreWriteError(
                f"cannot write {self.path(name)} ({error.strerror}); the results written so far are intact"
            ) from None

    def append_step(self, record: StepRecord) -> None:
        self._append(STEPS, record.to_line())

    def append_metric(self, record: MetricRecord) -> None:
        self._append(METRICS, metric_line(record))

    def append_workflow(self, record: WorkflowRecord) -> None:
        """Append a row under the file's own header: a directory resumed from an older flowperf keeps its
        columns (the new ones read as missing) rather than gaining misaligned cells."""
        if self._is_empty(WORKFLOWS):
            self._workflow_columns = WORKFLOW_COLUMNS
            self._append(WORKFLOWS, _csv_text([record.csv_cells()], header=True))
            return
        if self._workflow_columns is None:
            self._workflow_columns = _header(self.path(WORKFLOWS))
        self._append(WORKFLOWS, _csv_text([record.csv_cells()], header=False, columns=self._workflow_columns))

    def write_workflow_header(self) -> None:
        """Head an empty workflows.csv now: client worker processes then append rows under it, and none
        of them has to decide alone whether the file is empty."""
        if self._is_empty(WORKFLOWS):
            self._append(WORKFLOWS, _csv_text([], header=True))

    def read_steps(self) -> list[StepRecord]:
        """Every readable step line (tests and tools; statistics read lean tables through `rundata`)."""
        return parse_records(read_complete_lines(self.path(STEPS)), StepRecord.model_validate_json)

    def read_metrics(self) -> list[MetricRecord]:
        return parse_records(read_complete_lines(self.path(METRICS)), METRIC_RECORD.validate_json)

    def append_engine_metric(self, record: EngineMetricRecord) -> None:
        """Called from the scraper's thread (the in-process registry), and the store is closed only after
        the scraper has stopped; the scraper process (HTTP servers) appends to the same file through
        its own O_APPEND descriptor, whole lines only, so the two never tear each other's lines."""
        self._append(ENGINE_METRICS, engine_metric_line(record))

    def read_engine_metrics(self) -> list[EngineMetricRecord]:
        return parse_records(
            read_complete_lines(self.path(ENGINE_METRICS)), ENGINE_METRIC_RECORD.validate_json
        )

    def read_workflows(self) -> list[dict[str, str]]:
        lines = read_complete_lines(self.path(WORKFLOWS))
        if not lines:
            return []
        return complete_rows(csv.DictReader(lines))

    def close(self) -> None:
        for log in self._logs.values():
            with contextlib.suppress(OSError):
                log.close()
        self._logs.clear()


def complete_rows(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """The CSV rows with every cell of the header (a row cut short or run long is damaged: skipped)."""
    return [row for row in rows if None not in row and all(value is not None for value in row.values())]


def parse_records(lines: Iterable[str], parse: Callable[[str], T]) -> list[T]:
    """The `lines` that parse as records; a damaged or foreign line is skipped, not fatal: the one
    reading of metrics.jsonl, for `read_metrics` and for the live summary's tailed lines."""
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            records.append(parse(line))
    return records


def _header(path: Path) -> tuple[str, ...]:
    with path.open(encoding="utf-8", newline="") as handle:
        return tuple(next(csv.reader(handle), WORKFLOW_COLUMNS))


def _csv_text(
    rows: list[dict[str, Any]], *, header: bool, columns: tuple[str, ...] = WORKFLOW_COLUMNS
) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _step_key(line: str) -> StepKey | None:
    try:
        record = json.loads(line)
        return int(record["flow_index"]), int(record.get("session", 0)), int(record["step_index"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
