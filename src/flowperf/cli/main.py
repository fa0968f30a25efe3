"""The `bench` command line: the typer app, one `register` line per command module, and the entry point.

Each command group lives in its own module here (runs, reports, prepare, serve, ab, sweep; `bench stress`
in stress/cli.py); a new group is a new module registered with one line below. Thin by design: every
decision lives in the module that owns it. User mistakes surface as UserError (or a flag that does not
parse) and end here as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from flowperf.cli import ab, prepare, reports, runs, serve
from flowperf.cli.common import print_error, print_warning, show_help_without_command
from flowperf.cli.options import HtmlCommand
from flowperf.cli.record import record as record_command
from flowperf.cli.sweep import sweep
from flowperf.cli.trace import trace_app
from flowperf.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError
from flowperf.run.interrupts import RunInterrupted
from flowperf.stress.cli import stress

app = typer.Typer(
    name="bench",
    help=(
        "Benchmark multi-step LLM workflows on vLLM.\n\n"
        "Start with `bench doctor` to see what the harness finds on this machine, then `bench run` "
        "(25 workflows of the default flow on the embedded tiny model). Results go to runs/<run_id>/."
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.callback(invoke_without_command=True)(show_help_without_command)

runs.register(app)
prepare.register(app)
serve.register(app)
reports.register(app)
ab.register(app)
app.command("stress")(stress)
app.command("sweep", cls=HtmlCommand)(sweep)
app.add_typer(trace_app, name="trace")
app.command("record")(record_command)


def main() -> None:
    """Console entry point: run the app and turn user errors into one clear line and exit code 2."""
    try:
        exit_code = app(standalone_mode=False)
    except UserError as error:
        print_error(str(error))
        sys.exit(EXIT_USER_ERROR)
    except TyperException as error:
        # a flag or argument that does not parse (exit code 2), or another command-line failure
        print_error(error.format_message())
        sys.exit(error.exit_code)
    except (typer.Abort, KeyboardInterrupt, RunInterrupted):
        print_warning("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
