"""Request trace files (Azure, Mooncake, BurstGPT) read into sorted arrays: the one trace loader of flowperf.

`load_trace(name_or_path, token_scale=..., max_requests=..., start_s=..., duration_s=...)` is the public
entry point for every command that replays or simulates a trace (`bench stress` here, a replay command on
the engine side), so both see the same requests: the same rows, the same order, the same prefix blocks.

Mooncake rows carry `hash_ids`, one id per block of 512 prompt tokens; requests that share leading ids
share a prompt prefix, which is what a prefix cache reuses. They are kept as a ragged array (offsets into
one flat array), which numba kernels and numpy slicing both read without a Python object per request.

Each layout is recognised by its column names, never by position, so BurstGPT's two releases (the later one
inserts Session ID and Elapsed time columns) read the same. Every row is validated by pydantic as a typed
(time, input tokens, output tokens) tuple, which is several times faster than a model per row and matters
for BurstGPT's millions of rows; the first bad row stops the load with its line number, since a silently
skipped row would skew every figure.
"""

from __future__ import annotations

import json
import math
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
MOONCAKE_BLOCK_TOKENS = 512  # prompt tokens one Mooncake hash id stands for


@dataclass(frozen=True)
class Trace:
    """Requests of a trace in arrival order; arrivals are seconds after the first request.

    Request i's prefix-block ids are `hash_ids[hash_offsets[i]:hash_offsets[i + 1]]`, each standing for
    `block_tokens` prompt tokens (the last block may be partial); a trace without them (Azure, BurstGPT)
    has empty rows and `block_tokens` 0. No request has more blocks than its prompt covers.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_offsets: np.ndarray
    hash_ids: np.ndarray
    block_tokens: int

    @classmethod
    def of_lengths(cls, arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> Trace:
        """A trace without prefix blocks (each request's prompt is its own)."""
        n = len(arrival_s)
        return cls(
            np.asarray(arrival_s, dtype=np.float64), np.asarray(prompt_tokens, dtype=np.int64),
            np.asarray(output_tokens, dtype=np.int64), np.zeros(n + 1, np.int64), np.zeros(0, np.int64), 0,
        )  # fmt: skip

    @property
    def size(self) -> int:
        return int(self.arrival_s.size)

    def hashes(self, index: int) -> np.ndarray:
        """Request `index`'s prefix-block ids."""
        return self.hash_ids[self.hash_offsets[index] : self.hash_offsets[index + 1]]

    def take(self, rows: np.ndarray) -> Trace:
        """The requests at `rows` (ascending), hash ids carried along."""
        counts = np.diff(self.hash_offsets)[rows]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        flat = np.concatenate([self.hashes(int(row)) for row in rows]) if counts.sum() else self.hash_ids[:0]
        return Trace(
            self.arrival_s[rows], self.prompt_tokens[rows], self.output_tokens[rows], offsets,
            flat.astype(np.int64), self.block_tokens,
        )  # fmt: skip


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


def load_trace(
    source: str | Path,
    layout: _Layout | None = None,
    *,
    token_scale: float = 1.0,
    max_requests: int | None = None,
    start_s: float | None = None,
    duration_s: float | None = None,
) -> Trace:
    """A shipped trace by name (`azure-conv`, `azure-code`, `mooncake`) or a trace file, then a window.

    The window keeps the requests arriving in [`start_s`, `start_s + duration_s`) of the trace's own
    timeline (seconds after its first request), then the first `max_requests` of them, and re-times them
    from the first one kept. `token_scale` multiplies every prompt and output length (rounded, a length
    never drops to 0) and the tokens per hash block with them, so a scaled trace keeps its prefix
    structure on a smaller machine. A bad value is a UserError naming its flag.
    """
    path = shipped_path(source) if isinstance(source, str) and source in SHIPPED else Path(source)
    return select(
        read_trace(path, layout),
        token_scale=token_scale,
        max_requests=max_requests,
        start_s=start_s,
        duration_s=duration_s,
    )


def select(
    trace: Trace,
    *,
    token_scale: float = 1.0,
    max_requests: int | None = None,
    start_s: float | None = None,
    duration_s: float | None = None,
) -> Trace:
    """`load_trace`'s window and scaling applied to a trace already read."""
    _check_selection(token_scale, max_requests, start_s, duration_s)
    begin = start_s or 0.0
    end = math.inf if duration_s is None else begin + duration_s
    rows = np.flatnonzero((trace.arrival_s >= begin) & (trace.arrival_s < end))[:max_requests]
    if rows.size == 0:
        window = f"[{begin:g}, {end:g}) s"
        span = f"0-{trace.arrival_s[-1]:g} s"
        raise UserError(f"--start/--duration: the window {window} holds no request of the trace ({span})")
    if rows.size < trace.size:
        trace = trace.take(rows)
        trace = Trace(trace.arrival_s - trace.arrival_s[0], *_fields_after_arrival(trace))
    return trace if token_scale == 1.0 else _scaled(trace, token_scale)


def _fields_after_arrival(trace: Trace) -> tuple:
    return trace.prompt_tokens, trace.output_tokens, trace.hash_offsets, trace.hash_ids, trace.block_tokens


def _check_selection(
    token_scale: float, max_requests: int | None, start_s: float | None, duration_s: float | None
) -> None:
    checks = (
        ("--token-scale", token_scale, math.isfinite(token_scale) and token_scale > 0, "a number > 0"),
        ("--max-requests", max_requests, max_requests is None or max_requests >= 1, "at least 1"),
        ("--start", start_s, start_s is None or (math.isfinite(start_s) and start_s >= 0), "seconds >= 0"),
        (
            "--duration",
            duration_s,
            duration_s is None or (math.isfinite(duration_s) and duration_s > 0),
            "seconds > 0",
        ),
    )
    for flag, value, valid, expected in checks:
        if not valid:
            raise UserError(f"{flag}: must be {expected}, got {value}")


def _scaled(trace: Trace, scale: float) -> Trace:
    """Every length times `scale`; blocks shrink with the prompts, and a request keeps only the blocks its
    scaled prompt still covers."""

    def times(values: np.ndarray, floor: np.ndarray | int) -> np.ndarray:
        return np.maximum(np.rint(values * scale), floor).astype(np.int64)

    prompt = times(trace.prompt_tokens, np.minimum(trace.prompt_tokens, 1))
    output = times(trace.output_tokens, 1)
    if trace.block_tokens == 0:
        return Trace(trace.arrival_s, prompt, output, trace.hash_offsets, trace.hash_ids, 0)
    block = max(1, round(trace.block_tokens * scale))
    counts = np.minimum(np.diff(trace.hash_offsets), -(-prompt // block))
    keep = np.arange(trace.hash_ids.size) < np.repeat(
        trace.hash_offsets[:-1] + counts, np.diff(trace.hash_offsets)
    )
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Trace(trace.arrival_s, prompt, output, offsets, trace.hash_ids[keep], block)


def read_trace(path: Path, layout: _Layout | None = None) -> Trace:
    """Read a trace file; without `layout`, JSONL is Mooncake and a CSV's header tells Azure from BurstGPT."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such trace file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the trace file is empty")
    hashes: list[list[int]] | None = None
    if layout is MOONCAKE or (layout is None and path.suffix == ".jsonl"):
        layout, numbered, hashes = MOONCAKE, *_jsonl_rows(path)
    else:
        layout, numbered = _csv_rows(path, layout)
    table = _validated_table(path, layout, numbered)
    keep = table[:, 2] > 0 if layout.zero_output_means_failed else np.ones(table.shape[0], bool)
    if not keep.any():
        raise UserError(f"{path}: the trace has no successful requests")
    order = np.flatnonzero(keep)[np.argsort(table[keep, 0], kind="stable")]
    table = table[order]
    counts = np.array([len(hashes[i]) for i in order] if hashes else np.zeros(order.size), dtype=np.int64)
    flat = [hashes[i] for i in order] if hashes else []
    return Trace(
        arrival_s=(table[:, 0] - table[0, 0]) * layout.seconds_per_unit,
        prompt_tokens=table[:, 1].astype(np.int64),
        output_tokens=table[:, 2].astype(np.int64),
        hash_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        hash_ids=np.array([h for ids in flat for h in ids], dtype=np.int64),
        block_tokens=MOONCAKE_BLOCK_TOKENS if hashes else 0,
    )


def _validated_table(path: Path, layout: _Layout, numbered: list[tuple[int, tuple[Any, ...]]]) -> np.ndarray:
    """Rows as a float (time, prompt, output) table, in file order; the first bad row is a UserError."""
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
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


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


def _jsonl_rows(path: Path) -> tuple[list[tuple[int, tuple[Any, ...]]], list[list[int]]]:
    """(line number, fields) of each non-blank line of a Mooncake-style JSONL trace, and its hash ids
    (optional: a row without them shares no prefix)."""
    numbered = []
    hashes = []
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
            ids = record.get("hash_ids", [])
            if not isinstance(ids, list) or not all(type(h) is int and h >= 0 for h in ids):
                raise UserError(f"{path}: line {number}: hash_ids: expected a list of integers >= 0")
            hashes.append(ids)
    return numbered, hashes


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
