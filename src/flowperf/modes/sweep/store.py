"""A sweep directory on disk: sweep.json (its settings, replaced atomically), sweep.jsonl and sweep.csv
(one row per finished level, each appended and fsync'd before the next level starts), and one ordinary run
directory per level beside them.

sweep.jsonl is the record; sweep.csv is the same rows for spreadsheets. A crash can tear the last line of
either, or leave a row in the first and not the second: reopening for a resume rewrites both from
sweep.jsonl's complete lines, so the two always agree before anything is appended again.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from flowperf.errors import UserError
from flowperf.modes.sweep.levels import LevelRow
from flowperf.rundir.durable import append_durably, atomic_write_text, read_complete_lines

SWEEP_FILE = "sweep.json"
ROWS_FILE = "sweep.jsonl"
CSV_FILE = "sweep.csv"
SWEEP_SCHEMA_VERSION = 1
CSV_COLUMNS = (
    "index", "name", "role", "mode", "concurrency", "rate", "status", "workflows", "ok", "failed",
    "abandoned", "window_s", "wall_s", "achieved_per_s", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms",
    "ttft_p95_ms", "attainment", "goodput_per_s", "failing_objective", "failing_share", "meets_target",
    "stopped_early",
)  # fmt: skip


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def read_sweep(sweep_dir: Path, flag: str = "SWEEP_DIR") -> dict[str, Any]:
    """sweep.json, or a UserError naming the flag when `sweep_dir` is not a sweep this flowperf reads."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{flag} {sweep_dir}: not a sweep directory (no {SWEEP_FILE})")
    document = json.loads(path.read_text(encoding="utf-8"))
    version = document.get("schema_version")
    if not isinstance(version, int) or version > SWEEP_SCHEMA_VERSION:
        raise UserError(f"{flag} {sweep_dir}: written by a newer flowperf (sweep schema {version})")
    return document


def read_rows(sweep_dir: Path) -> list[LevelRow]:
    """The finished levels, in order (a torn or damaged last line is not a level)."""
    rows = []
    for line in read_complete_lines(Path(sweep_dir) / ROWS_FILE):
        try:
            rows.append(LevelRow.model_validate_json(line))
        except ValueError:
            continue
    return rows


def csv_line(row: LevelRow) -> str:
    buffer = io.StringIO()
    values = row.model_dump()
    csv.writer(buffer, lineterminator="\n").writerow(
        "" if values[column] is None else values[column] for column in CSV_COLUMNS
    )
    return buffer.getvalue()


def csv_header() -> str:
    return ",".join(CSV_COLUMNS) + "\n"


class SweepStore:
    """The sweep directory's own files (the levels' run directories belong to their RunStores)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = Path(sweep_dir)

    def write_document(self, document: dict[str, Any]) -> None:
        atomic_write_text(self.sweep_dir / SWEEP_FILE, json.dumps(document, indent=2) + "\n")

    def repair(self) -> list[LevelRow]:
        """Rewrite sweep.jsonl and sweep.csv from sweep.jsonl's complete rows; those rows."""
        rows = read_rows(self.sweep_dir)
        atomic_write_text(self.sweep_dir / ROWS_FILE, "".join(row.model_dump_json() + "\n" for row in rows))
        atomic_write_text(self.sweep_dir / CSV_FILE, csv_header() + "".join(csv_line(row) for row in rows))
        return rows

    def append(self, row: LevelRow) -> None:
        """One finished level, on disk in both files before this returns."""
        for name, text in ((ROWS_FILE, row.model_dump_json() + "\n"), (CSV_FILE, csv_line(row))):
            path = self.sweep_dir / name
            fresh = not path.exists()
            with open(path, "a", encoding="utf-8", newline="") as handle:
                append_durably(handle, (csv_header() if fresh and name == CSV_FILE else "") + text)
