"""How a command that runs sessions ends: the one line and exit code for an engine that failed, an
interruption before anything was written, and a finished session (bench run, ab and sweep alike).

The codes themselves are in `flowperf.errors`; this module only decides which one, and says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from flowperf.cli.common import err_console, print_error, print_warning
from flowperf.engines.base import EngineError
from flowperf.errors import EXIT_ENGINE_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED
from flowperf.run.interrupts import RunInterrupted


@contextlib.contextmanager
def engine_and_interrupt_exits(what: str, before: Callable[[], None] = lambda: None) -> Iterator[None]:
    """An EngineError ends the command with its one line and exit 1; an interruption before the `what`
    (run, session, sweep) started with one line and 130. `before` runs first (a progress bar stops)."""
    try:
        yield
    except EngineError as failure:
        before()
        print_error(str(failure))
        raise typer.Exit(EXIT_ENGINE_FAILED) from None
    except RunInterrupted:
        before()
        print_warning(f"interrupted before the {what} started; nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def session_exit(status: str, failed: int, where: Path, resume_hint: str) -> int:
    """A finished multi-run session's exit code (130 interrupted, 3 failures or not complete, else 0)
    and the one line that says why, or where the results are."""
    if status == "interrupted":
        print_warning(f"interrupted; {resume_hint}")
        return EXIT_INTERRUPTED
    if failed or status != "complete":
        print_error(f"{failed} workflow(s) failed ({status}); see {where}")
        return EXIT_SOME_FAILED
    err_console.print(f"results: {where}")
    return EXIT_OK
