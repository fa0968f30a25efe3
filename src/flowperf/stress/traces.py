"""Request trace files (Azure, Mooncake, BurstGPT) read into sorted arrays of arrival offsets and lengths.

Each layout is recognised by its column names, never by position, so BurstGPT's two releases (the later one
inserts Session ID and Elapsed time columns) read the same. Every row is validated by pydantic as a typed
(time, input tokens, output tokens) tuple, which is several times faster than a model per row and matters
for BurstGPT's millions of rows; the first bad row stops the load with its line number, since a silently
skipped row would skew every figure.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from flowperf.errors import UserError

SHIPPED = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "mooncake": "mooncake_synthetic_trace.jsonl",
}

_Tokens = Annotated[int, Field(ge=0)]
_Generated = Annotated[int, Field(ge=1)]
_Time = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_CHUNK = 100_000


@dataclass(frozen=True)
class Trace:
    """Requests of a trace in arrival order; timestamps are seconds after the first request."""

    timestamp_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray


@dataclass(frozen=True)
class _Layout:
    """Which columns hold (time, input tokens, output tokens), their row schema and the time unit."""

    name: str
    columns: tuple[str, str, str]
    rows: TypeAdapter[list[Any]]
    seconds_per_unit: float = 1.0
    zero_output_means_failed: bool = False


AZURE = _Layout(
    "Azure",
    ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    TypeAdapter(list[tuple[datetime, _Tokens, _Generated]]),
)
BURSTGPT = _Layout(
    "BurstGPT",
    ("Timestamp", "Request tokens", "Response tokens"),
    TypeAdapter(list[tuple[_Time, _Tokens, _Tokens]]),
    zero_output_means_failed=True,
)
MOONCAKE = _Layout(
    "Mooncake",
    ("timestamp", "input_length", "output_length"),
    TypeAdapter(list[tuple[_Time, _Tokens, _Generated]]),
    seconds_per_unit=1e-3,
)


def shipped_path(name: str) -> Path:
    """Path of a trace shipped in the package (see data/traces/README.md for sources and licences)."""
    return Path(str(resources.files("flowperf") / "data" / "traces" / SHIPPED[name]))


def load_trace(path: Path, layout: _Layout | None = None) -> Trace:
    """Read a trace file; without `layout`, JSONL is Mooncake and a CSV's header tells Azure from BurstGPT."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such trace file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the trace file is empty")
    if layout is MOONCAKE or (layout is None and path.suffix == ".jsonl"):
        layout, numbered = MOONCAKE, _jsonl_rows(path)
    else:
        layout, numbered = _csv_rows(path, layout)
    rows: list[tuple[Any, int, int]] = []
    for start in range(0, len(numbered), _CHUNK):
        chunk = numbered[start : start + _CHUNK]
        try:
            rows.extend(layout.rows.validate_python([row for _, row in chunk]))
        except ValidationError as error:
            first = error.errors()[0]
            index, field = first["loc"][0], first["loc"][1] if len(first["loc"]) > 1 else None
            where = f" column {layout.columns[int(field)]!r}:" if field is not None else ""
            raise UserError(f"{path}: line {chunk[int(index)][0]}:{where} {first['msg']}") from None
    if layout is AZURE:
        rows = [(_epoch_seconds(moment), tokens_in, tokens_out) for moment, tokens_in, tokens_out in rows]
    table = np.array(rows, dtype=np.float64).reshape(-1, 3)
    if layout.zero_output_means_failed:
        table = table[table[:, 2] > 0]
    if table.shape[0] == 0:
        raise UserError(f"{path}: the trace has no successful requests")
    table = table[np.argsort(table[:, 0], kind="stable")]
    return Trace(
        timestamp_s=(table[:, 0] - table[0, 0]) * layout.seconds_per_unit,
        input_tokens=table[:, 1].astype(np.int64),
        output_tokens=table[:, 2].astype(np.int64),
    )


def _epoch_seconds(moment: datetime) -> float:
    """A datetime without a zone is read as UTC, so a DST change can never open a gap in the trace."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _csv_rows(path: Path, layout: _Layout | None) -> tuple[_Layout, list[tuple[int, tuple[str, ...]]]]:
    """(line number, raw fields) of each non-blank row, through pandas' C reader for speed.

    pandas is imported here, not at module level, so commands that never read a CSV do not load it.
    """
    import pandas as pd

    try:
        header = [name.strip() for name in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a readable CSV trace: {str(error).strip()}") from None
    layout = layout or _layout_of(path, header)
    missing = [name for name in layout.columns if name not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} of the {layout.name} layout")
    try:
        with warnings.catch_warnings():
            # pandas only warns when the first row has more fields than the header
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path, dtype=str, index_col=False, keep_default_na=False, skip_blank_lines=False
            )
    except pd.errors.ParserWarning:
        raise UserError(f"{path}: line 2: more fields than the header has columns") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        detail = str(error).strip().removeprefix("Error tokenizing data. C error: ")
        raise UserError(f"{path}: malformed CSV: {detail}") from None
    frame.columns = [name.strip() for name in frame.columns]
    columns = [frame[name].to_numpy() for name in layout.columns]
    return layout, [
        (index + 2, row)
        for index, row in enumerate(zip(*columns, strict=True))
        if any(row)  # a blank line, often trailing
    ]


def _jsonl_rows(path: Path) -> list[tuple[int, tuple[Any, ...]]]:
    """(line number, fields) of each non-blank line of a Mooncake-style JSONL trace."""
    numbered = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {number}: expected a JSON object")
            missing = [name for name in MOONCAKE.columns if name not in record]
            if missing:
                raise UserError(f"{path}: line {number}: missing field(s) {', '.join(missing)}")
            numbered.append((number, tuple(record[name] for name in MOONCAKE.columns)))
    return numbered


def _layout_of(path: Path, header: Iterable[str]) -> _Layout:
    columns = set(header)
    if "TIMESTAMP" in columns:
        return AZURE
    if "Request tokens" in columns:
        return BURSTGPT
    raise UserError(
        f"{path}: unknown trace layout (columns: {', '.join(header)}); expected Azure "
        "(TIMESTAMP, ContextTokens, GeneratedTokens), BurstGPT (Timestamp, Request tokens, Response tokens) "
        "or Mooncake JSONL (timestamp, input_length, output_length)"
    )
