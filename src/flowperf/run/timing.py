"""[TIMING] lines: one fact each, `key=value` pairs, on stdout and appended to the run's timing.log.

The format is a contract (DESIGN.md): CI jobs and people grep these lines, so values never contain
spaces, floats have one decimal, booleans are lowercase.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from flowperf.run.deferred import DeferredSink
from flowperf.rundir.durable import DurableLog

PREFIX = "[TIMING]"
_PAIR = re.compile(r"(\S+?)=(\S*)")


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}"
    return re.sub(r"\s+", "_", str(value))


def timing_line(key: str, value: float, **fields: object) -> str:
    pairs = [f"{key}={format_value(value)}"] + [f"{k}={format_value(v)}" for k, v in fields.items()]
    return f"{PREFIX} {' '.join(pairs)}"


def parse_timing_line(line: str) -> dict[str, str]:
    """The key=value pairs of a [TIMING] line; raises ValueError for anything else."""
    if not line.startswith(PREFIX + " "):
        raise ValueError(f"not a timing line: {line!r}")
    body = line[len(PREFIX) + 1 :].strip()
    pairs = dict(_PAIR.findall(body))
    if not pairs or " ".join(f"{k}={v}" for k, v in pairs.items()) != body:
        raise ValueError(f"malformed timing line: {line!r}")
    return pairs


class TimingLog:
    """Emits timing lines to `echo` at once and to timing.log once the run directory exists.

    Lines emitted before a run directory is chosen (flow expansion, model build) are held and written
    when `attach` is called, so timing.log holds every line of the run.
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        self._echo = echo
        self._lines: DeferredSink[str] = DeferredSink()
        self._log: DurableLog | None = None

    def attach(self, path: Path) -> None:
        log = self._log = DurableLog(path)
        self._lines.attach(lambda line: log.append(line + "\n"))

    def emit(self, key: str, value: float, **fields: object) -> str:
        line = timing_line(key, value, **fields)
        self._echo(line)
        self._lines(line)
        return line

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
