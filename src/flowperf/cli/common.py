"""What every command shares: the two consoles, the one-line warning and error, the flags-to-config merge,
the workflow progress bar, the exit codes, and the help shown for a group called without a command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from flowperf.cli.options import (
    ConfigFlags,
)
from flowperf.config import RunConfig, load_run_config
from flowperf.errors import UserError
from flowperf.rundir.records import WorkflowRecord
from flowperf.rundir.store import recorded_config

out_console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(Text.assemble(("warning:", "yellow"), " ", message))


def print_error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message))


def echo_line(line: str) -> None:
    print(line, flush=True)


class WorkflowBar:
    """The progress bar on stderr, fed by the run's hooks; hidden until the run knows its total."""

    def __init__(self, enabled: bool) -> None:
        self.bar = Progress(
            TextColumn("[bold]workflows"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            disable=not enabled,
            transient=False,
        )
        self.task_id = self.bar.add_task("workflows", total=None, failed=0, visible=False)
        self.failed = 0

    def on_start(self, total: int, already_done: int) -> None:
        self.bar.reset(self.task_id, total=total, completed=already_done, visible=True)
        self.bar.start()

    def on_done(self, workflow: WorkflowRecord) -> None:
        self.failed += 0 if workflow.ok else 1
        self.bar.update(self.task_id, advance=1, failed=self.failed)

    def stop(self) -> None:
        self.bar.stop()


def config_from_flags(
    flags: ConfigFlags, config_file: Path | None = None, base: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults (or `base`), then the TOML file, then the flags: the one merge, done by config.py."""
    return load_run_config(config_file, RunConfig.overrides_from_flags(flags), base=base)


def run_config_from_flags(flags: ConfigFlags, config_file: Path | None, resume: Path | None) -> RunConfig:
    """A resumed run starts from its own recorded config; flags may only restate it (the run checks)."""
    if resume is None:
        return config_from_flags(flags, config_file)
    if config_file is not None:
        raise UserError("--resume uses the run's own config.json; --config cannot be combined with it")
    return config_from_flags(flags, base=recorded_config(resume))


def show_help_without_command(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        out_console.print(ctx.get_help())
        raise typer.Exit(0)
