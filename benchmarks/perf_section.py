"""A benchmark's result as a section for docs/PERFORMANCE.md, with the command that produced it."""

from __future__ import annotations

import sys
from pathlib import Path


def write_section(path: Path, title: str, lines: list[str]) -> None:
    """Write `lines` under `title` to `path`, after the command line this script was run with."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = f"    .venv/bin/python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    path.write_text(f"## {title}\n\n{command.rstrip()}\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
