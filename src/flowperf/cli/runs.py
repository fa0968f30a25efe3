"""`bench run` and `bench replay`: one run directory each, on one engine, with a progress bar and the closing
table; the work is in `flowperf.run.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowperf.cli.common import (
    WorkflowBar,
    echo_line,
    err_console,
    print_error,
    print_warning,
    run_config_from_flags,
)
from flowperf.cli.options import (
    CLIENT,
    ENDPOINT,
    ENGINE,
    FLOW,
    MEASUREMENT,
    MODEL,
    MONITOR,
    RESULTS,
    SESSIONS,
    TRACE,
    ConfigFileOption,
    ConfigFlags,
    ProgressOption,
    ResumeOption,
    only,
    with_options,
)
from flowperf.cli.outcome import engine_and_interrupt_exits
from flowperf.config import RunConfig
from flowperf.outputs.report import print_run_table
from flowperf.run.benchmark import RunHooks, RunResult, run_benchmark
from flowperf.run.interrupts import run_with_interrupts


def _run_with_interrupts(config: RunConfig, hooks: RunHooks, resume: Path | None) -> RunResult:
    """Run the benchmark with Ctrl-C owned by the run (graceful stop, then resumable) for its duration."""
    return run_with_interrupts(
        lambda interrupts: run_benchmark(config, hooks, resume_from=resume, interrupts=interrupts)
    )


@with_options(FLOW, MODEL, ENDPOINT, ENGINE, MEASUREMENT, CLIENT, MONITOR, RESULTS)
def run(
    config_file: ConfigFileOption = None,
    *,
    flags: ConfigFlags,
    resume: ResumeOption = None,
    progress: ProgressOption = True,
) -> None:
    """Run workflows on one engine, started once, and write results to runs/<run_id>/.

    Prints [TIMING] lines as it goes (also kept in timing.log); the run directory holds config.json,
    steps.jsonl, workflows.csv, metrics.jsonl, summary.json and engine.log, all written as results
    arrive. Ctrl-C stops gracefully (a second Ctrl-C at once); `--resume RUN_DIR` continues where a run
    stopped.

    Exit codes: 0 every workflow succeeded, 3 some failed (or, with --fail-fast, the warm-up did),
    2 usage error, 130 interrupted, 1 the engine could not start.
    """
    _execute(run_config_from_flags(flags, config_file, resume), resume, progress)


def _execute(config: RunConfig, resume: Path | None, progress: bool) -> None:
    """Run (or resume) one run directory with a progress bar, report it, and exit with its code."""
    bar = WorkflowBar(enabled=progress)
    hooks = RunHooks(echo=echo_line, warn=print_warning, on_start=bar.on_start, on_workflow_done=bar.on_done)
    try:
        with engine_and_interrupt_exits("run", bar.stop):
            result = _run_with_interrupts(config, hooks, resume)
    finally:
        bar.stop()
    _report_run(result)
    raise typer.Exit(result.exit_code)


REPLAY_MEASUREMENT = only(
    MEASUREMENT, "--concurrency", "--rate", "--step-timeout-s", "--warmup", "--reset-prefix-cache"
)


@with_options(MODEL, ENDPOINT, ENGINE, REPLAY_MEASUREMENT, TRACE, SESSIONS, CLIENT, MONITOR, RESULTS)
def replay(
    trace: Annotated[
        str,
        typer.Argument(
            metavar="TRACE",
            help="A shipped trace (mooncake, azure-conv, azure-code), a Mooncake JSONL, Azure or "
            "BurstGPT CSV file, or a session trace: a flowperf-sessions JSONL, a Weka or OpenTelemetry "
            "trace, or a shipped sample (coding-agent, coding-agent-weka, coding-agent-otel).",
        ),
    ],
    config_file: ConfigFileOption = None,
    *,
    flags: ConfigFlags,
    resume: ResumeOption = None,
    progress: ProgressOption = True,
) -> None:
    """Replay a request trace or agent sessions on one engine, on the trace's own timestamps or a load.

    One single-step workflow per request: its prompt is token ids (Mooncake's hash ids become shared
    prefix blocks, so the trace's prefix-cache reuse is reproduced; other traces get unique prompts) and
    it generates exactly the trace's output length. The run directory is a `bench run` directory:
    `report`, `compare` and `--resume` work on it.

    A session trace replays one workflow per session: its requests in their recorded dependency order,
    each after its recorded think time (`--think-time`), prompts synthesized from the hash ids; sessions
    start at their recorded times, or `--sessions N` closed loop, or `--session-rate R` open loop.

    Exit codes as `bench run`.
    """
    _execute(run_config_from_flags(flags | {"trace.source": trace}, config_file, resume), resume, progress)


def _report_run(result: RunResult) -> None:
    """How the run ended, its table and where it is, on stderr."""
    summary = result.summary
    if summary.status == "interrupted":
        print_warning(f"interrupted; continue with: bench run --resume {result.run_dir}")
    if summary.status == "warmup_failed":
        print_error(f"nothing was measured: {summary.run.warmup_failure} (--fail-fast)")
    print_run_table(summary, err_console)
    err_console.print(f"results: {result.run_dir}")


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(replay)
