"""What the importers share: naming where a problem is (file, line, JSON path, field), reading JSON that
may be one document or one document per line, and making hash ids cover a prompt exactly."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowperf.errors import UserError
from flowperf.sessions.format import blocks_for


def json_path(parts: Iterable[str | int]) -> str:
    """`$.requests[3].in` from ('requests', 3, 'in')."""
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def located(path: Path, line: int | None, message: str) -> UserError:
    """One line: the file, the line of a JSON Lines file (when there is one), then the message."""
    where = f"{path}: line {line}: " if line is not None else f"{path}: "
    return UserError(where + message)


def validation_problem(
    path: Path, line: int | None, error: ValidationError, prefix: Sequence[str | int] = (), tags=frozenset()
) -> UserError:
    """pydantic's first complaint as `file: line N: $.json.path: message`; `tags` are a tagged union's
    discriminator values, which pydantic puts in the location although they are not in the file."""
    problems = error.errors(include_url=False)
    first = problems[0]
    location = [part for part in first["loc"] if not (isinstance(part, str) and part in tags)]
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return located(path, line, f"{json_path([*prefix, *location])}: {message}{more}")


def json_documents(path: Path) -> Iterator[tuple[int | None, Any]]:
    """(line, document) for a file holding one JSON document (line None) or one per line (JSON Lines).

    A file whose first line parses alone is read as JSON Lines; otherwise the whole file is one document
    (a pretty-printed export)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {error.start})") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if not _parses(first):
        try:
            yield None, json.loads(text)
        except json.JSONDecodeError as error:
            raise located(path, error.lineno, f"not JSON ({error.msg})") from None
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise located(path, number, f"not JSON ({error.msg})") from None


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


class FreshIds:
    """Hash ids no request of the trace uses, for prompt blocks a source left without one (each such
    block is then unique: no other request can share it)."""

    def __init__(self, used_max: int) -> None:
        self.next = used_max + 1

    def take(self, count: int) -> list[int]:
        ids = list(range(self.next, self.next + count))
        self.next += count
        return ids


def covering(hash_ids: list[int], prompt_tokens: int, block_size: int, fresh: FreshIds) -> list[int] | str:
    """Hash ids covering the whole prompt: a source that hashed only some leading blocks gets fresh ids
    for the rest; more ids than the prompt has blocks is a problem, returned as its message."""
    if not hash_ids:
        return []
    needed = blocks_for(prompt_tokens, block_size)
    if len(hash_ids) > needed:
        return f"{len(hash_ids)} hash ids for {prompt_tokens} tokens (block size {block_size} gives {needed})"
    return hash_ids + fresh.take(needed - len(hash_ids))


def chained_block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """One id per block of `block_size` tokens (the last may be partial), each hashing the block's tokens
    and the previous block's id: equal prefixes give equal ids, in any session."""
    ids: list[int] = []
    previous = b""
    for start in range(0, len(token_ids), block_size):
        block = ",".join(str(token) for token in token_ids[start : start + block_size]).encode()
        digest = hashlib.blake2b(previous + b"|" + block, digest_size=8).digest()
        ids.append(int.from_bytes(digest, "big") >> 1)
        previous = digest
    return ids
