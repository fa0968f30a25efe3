"""The `bench` command line: parse flags, build a config, call the modules, print.

Thin by design: every decision lives in the module that owns it. User mistakes surface as UserError and
end here as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from flowperf.errors import UserError
from flowperf.stress.cli import stress

app = typer.Typer(
    name="bench",
    help="Benchmark multi-step LLM workflows on vLLM, and simulate a GPU cluster serving them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True)

app.command("stress")(stress)


def main() -> None:
    """Console entry point: run the app and turn user errors into one clear line and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
