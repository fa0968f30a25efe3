"""Where results go: an fsync'd incremental CSV written as tests finish, and the final CSVs and analysis.

The incremental file is the run's memory: a crash loses at most the test being written (a torn last line,
dropped on resume), and `--resume` skips every test already in it. It only resumes results made with the
same settings (the fingerprint column); mixing settings would silently blend two experiments.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from flowperf.errors import UserError
from flowperf.rundir.durable import append_durably, atomic_write_text, read_complete_lines
from flowperf.stress.spec import TestResult

INCREMENTAL = "stress_results_incremental.csv"
RESULTS = "stress_results.csv"
ANALYSIS = "stress_analysis.json"
STEP_FILES = {
    "step1": "stress_step1_request_scaling.csv",
    "step2": "stress_step2_gpu_scaling.csv",
    "step3": "stress_step3_kbins_sensitivity.csv",
}
COLUMNS = tuple(TestResult.model_fields)
# The columns before the replicas' bands were added: a file with this header still resumes (no bands).
COLUMNS_BEFORE_BANDS = COLUMNS[: COLUMNS.index("fingerprint") + 1]


def csv_text(results: Iterable[TestResult], header: bool = True) -> str:
    """Results as CSV; floats keep full precision (repr) so a resumed result equals the one written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for result in results:
        writer.writerow("" if value is None else value for value in result.model_dump().values())
    return buffer.getvalue()


class IncrementalLog:
    """The incremental CSV of one output directory: earlier results (when resuming) and durable appends."""

    def __init__(self, out_dir: Path, fingerprint: str, resume: bool) -> None:
        self.path = Path(out_dir) / INCREMENTAL
        self.previous: dict[str, TestResult] = self._read(fingerprint) if resume else {}
        # Rewrite before appending: starts a fresh file, or drops a torn tail that would garble the next row.
        atomic_write_text(self.path, csv_text(self.previous.values()))
        self._handle: IO[str] = self.path.open("a", encoding="utf-8", newline="")

    def append(self, result: TestResult) -> None:
        append_durably(self._handle, csv_text([result], header=False))

    def close(self) -> None:
        self._handle.close()

    def _read(self, fingerprint: str) -> dict[str, TestResult]:
        lines = read_complete_lines(self.path)
        if not lines:
            return {}
        rows = csv.reader(lines)
        header = tuple(next(rows))
        if header not in (COLUMNS, COLUMNS_BEFORE_BANDS):
            raise UserError(
                f"{self.path}: unexpected header; it was not written by this version of bench stress"
            )
        previous: dict[str, TestResult] = {}
        for number, row in enumerate(rows, start=2):
            try:
                fields: dict[str, Any] = dict(zip(header, row, strict=True))
                result = TestResult.model_validate({key: value or None for key, value in fields.items()})
            except (ValueError, ValidationError) as error:
                raise UserError(
                    f"{self.path}: line {number}: not a result row ({_first_problem(error)})"
                ) from None
            if result.fingerprint != fingerprint:
                raise UserError(
                    f"{self.path}: line {number}: made with other settings (fingerprint "
                    f"{result.fingerprint}, now {fingerprint}); drop --resume or choose another --out"
                )
            previous[result.test_id] = result
        return previous


def write_outputs(out_dir: Path, results: list[TestResult], analysis: dict[str, Any]) -> list[Path]:
    """Write the combined CSV, one CSV per step that ran, and the analysis JSON; return their paths."""
    out_dir = Path(out_dir)
    written = {out_dir / RESULTS: csv_text(results)}
    for step, name in STEP_FILES.items():
        rows = [result for result in results if result.step == step]
        if rows:
            written[out_dir / name] = csv_text(rows)
    written[out_dir / ANALYSIS] = json.dumps(analysis, indent=2, default=str) + "\n"
    for path, text in written.items():
        atomic_write_text(path, text)
    return list(written)


def _first_problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return str(error)
