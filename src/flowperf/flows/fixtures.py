"""Fixture records (JSONL): the data each flow's prompts are built from.

Records are data and only data: they are inserted into prompts as text and never rendered as templates.
Each line is checked on its own so that an error points at the exact line, and a record larger than any
prompt could use is refused before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError, create_model

from flowperf.errors import UserError
from flowperf.validation import describe_validation_error, read_file_bytes

MAX_RECORD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FixtureFile:
    """Validated records of one fixture file, with the hash of the exact bytes they came from."""

    path: Path
    sha256: str
    records: tuple[dict[str, Any], ...]
    line_numbers: tuple[int, ...]


@lru_cache(maxsize=32)
def _record_model(fields: tuple[str, ...]) -> type[BaseModel]:
    """A pydantic model requiring `fields` (any JSON value) and allowing other keys."""
    declared: dict[str, Any] = {name: (JsonValue, ...) for name in fields}
    return create_model(  # type: ignore[call-overload, no-any-return]
        "FixtureRecord", __config__=ConfigDict(extra="allow"), **declared
    )


def load_fixture_file(path: Path, required_fields: list[str] | tuple[str, ...]) -> FixtureFile:
    """Read a JSONL fixture file; each non-blank line must be a JSON object with the required fields."""
    path = Path(path)
    raw = read_file_bytes(path, "fixture file")

    model = _record_model(tuple(required_fields))
    records: list[dict[str, Any]] = []
    line_numbers: list[int] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if len(line) > MAX_RECORD_BYTES:
            size_mb = len(line) / (1024 * 1024)
            raise UserError(
                f"{where}: fixture record is {size_mb:.1f} MiB, over the "
                f"{MAX_RECORD_BYTES // (1024 * 1024)} MiB limit for one record"
            )
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise UserError(f"{where}: not UTF-8 text (bad byte at column {error.start + 1})") from None
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: invalid JSON: {error.msg} (column {error.colno})") from None
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(value).__name__}")
        try:
            model.model_validate(value)
        except ValidationError as error:
            raise UserError(f"{where}: {describe_validation_error(error)}") from None
        records.append(value)
        line_numbers.append(number)
    if not records:
        raise UserError(f"{path}: fixture file has no records")
    return FixtureFile(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        records=tuple(records),
        line_numbers=tuple(line_numbers),
    )
