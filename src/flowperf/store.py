"""The run directory: the contract that reports, compare, resume and CI rely on (see DESIGN.md).

Results are appended and forced to disk as each step and workflow finishes, so a crash loses at most
the line being written; whole-file outputs (config.json, summary.json) are replaced atomically. Readers
skip a torn last line instead of failing on it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from flowperf.durable import DurableLog, atomic_write_text, read_complete_lines
from flowperf.errors import UserError

CONFIG = "config.json"
STEPS = "steps.jsonl"
WORKFLOWS = "workflows.csv"
METRICS = "metrics.jsonl"
TIMING_LOG = "timing.log"
SUMMARY = "summary.json"
ENGINE_LOG = "engine.log"

WORKFLOW_COLUMNS = (
    "flow_index",
    "flow_id",
    "status",
    "workflow_ms",
    "step_ms_sum",
    "steps",
    "steps_ok",
    "prompt_tokens",
    "output_tokens",
    "cached_prompt_tokens",
    "start_offset_ms",
    "end_offset_ms",
    "error_type",
    "error_message",
)


def _one_line(value: Any) -> Any:
    return " ".join(value.split()) if isinstance(value, str) else value


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._logs: dict[str, DurableLog] = {}

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

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def _log(self, name: str) -> DurableLog:
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = DurableLog(self.path(name))
        return log

    def write_json(self, name: str, document: dict[str, Any]) -> None:
        atomic_write_text(self.path(name), json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")

    def append_step(self, record: dict[str, Any]) -> None:
        line = json.dumps(
            {k: _one_line(v) for k, v in record.items()}, ensure_ascii=False, separators=(",", ":")
        )
        self._log(STEPS).append(line + "\n")

    def append_metric(self, record: dict[str, Any]) -> None:
        self._log(METRICS).append(json.dumps(record, separators=(",", ":")) + "\n")

    def append_workflow(self, row: dict[str, Any]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=WORKFLOW_COLUMNS, lineterminator="\n")
        log = self._log(WORKFLOWS)
        if log.is_empty():
            writer.writeheader()
        writer.writerow({column: _one_line(row.get(column, "")) for column in WORKFLOW_COLUMNS})
        log.append(buffer.getvalue())

    def read_steps(self) -> list[dict[str, Any]]:
        records = []
        for line in read_complete_lines(self.path(STEPS)):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def read_workflows(self) -> list[dict[str, str]]:
        lines = read_complete_lines(self.path(WORKFLOWS))
        if not lines:
            return []
        rows = list(csv.DictReader(lines))
        return [row for row in rows if None not in row and all(v is not None for v in row.values())]

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
