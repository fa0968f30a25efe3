"""Reading external files into plain data, with every failure turned into one line naming the file.

pydantic then validates the data; `describe_validation_error` turns its report into the same one-line form
so a user sees `configs/x.toml: engine.block_size: Input should be greater than 0`, not a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flowperf.errors import UserError

MAX_SPEC_FILE_BYTES = 4 * 1024 * 1024


def describe_validation_error(error: ValidationError, hidden: frozenset[str] = frozenset()) -> str:
    """The first problem pydantic found as `field.path: message`, plus how many more there are. Parts
    of the path in `hidden` (the tags of a tagged union, which are not in the user's file) are left out."""
    problems = error.errors(include_url=False)
    first = problems[0]
    location = ".".join(str(part) for part in first["loc"] if part not in hidden)
    message = first["msg"].removeprefix("Value error, ")
    text = f"{location}: {message}" if location else message
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem(s))"
    return text


def read_file_bytes(path: Path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a user's file, or a UserError naming the file and why it cannot be read."""
    path = Path(path)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise UserError(f"{path}: {what} is larger than {max_bytes // (1024 * 1024)} MiB")
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a directory, expected a file") from None
    except PermissionError:
        raise UserError(f"{path}: {what} is not readable (permission denied)") from None


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a small specification file (template, config), or a UserError saying why not."""
    raw = read_file_bytes(path, what, MAX_SPEC_FILE_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: {what} is not UTF-8 text (bad byte at offset {error.start})") from None


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping."""
    text = read_text_file(path, "flow template")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys (name, fixture, steps) at the top level")
    return data


def load_toml_mapping(path: Path) -> dict[str, Any]:
    """Parse a TOML configuration file."""
    text = read_text_file(path, "config file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: invalid TOML: {error}") from None
