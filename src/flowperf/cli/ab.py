"""`bench ab`: the command's flags and terminal; the work is in `flowperf.modes.ab`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from flowperf.cli.common import (
    WorkflowBar,
    err_console,
    out_console,
    print_warning,
)
from flowperf.cli.options import (
    ENDPOINT,
    ENGINE,
    FLOW,
    MEASUREMENT,
    MODEL,
    MONITOR,
    RESULTS,
    SESSION_TRACE,
    SESSIONS,
    TRACE,
    AlphaOption,
    ConfigFileOption,
    ConfigFlags,
    HtmlCommand,
    HtmlOption,
    ThresholdOption,
    only,
    with_options,
)
from flowperf.cli.outcome import engine_and_interrupt_exits, session_exit
from flowperf.errors import EXIT_REGRESSION
from flowperf.modes.ab.run import DEFAULT_GATE as AB_GATE

NUM_FLOWS_HELP = "Workflows per arm in all, instead of --pairs: pairs = N / --block-workflows, rounded up."


@with_options(only(FLOW, "--flow", "--flows-dir"), MODEL, ENDPOINT, ENGINE, MEASUREMENT, MONITOR,
              only(RESULTS, "--out", "--run-id", "--save-text", "--fail-fast", "--grace-s"), SESSION_TRACE,
              only(TRACE, "--time-scale", "--token-scale"),
              only(SESSIONS, "--sessions", "--think-time", "--max-sessions"))  # fmt: skip
def ab(
    config_file: ConfigFileOption = None,
    *,
    a: Annotated[str, typer.Option("--a", help='Arm A\'s own options, e.g. "--max-tokens 64".')] = "",
    b: Annotated[str, typer.Option("--b", help='Arm B\'s own options, e.g. "--max-tokens 96".')] = "",
    flags: ConfigFlags,
    pairs: Annotated[
        int | None,
        typer.Option("--pairs", min=1, max=1000, help="Block pairs (one block per arm). [default: 10]"),
    ] = None,
    num_flows: Annotated[int | None, typer.Option("--num-flows", "-n", min=1, help=NUM_FLOWS_HELP)] = None,
    block_workflows: Annotated[
        int, typer.Option("--block-workflows", min=1, help="Workflows in each block.")
    ] = 4,
    order_seed: Annotated[int, typer.Option("--order-seed", help="Seed of the pairs' AB/BA order.")] = 0,
    alpha: AlphaOption = 0.05,
    threshold: ThresholdOption = 5.0,
    gate: Annotated[
        str | None,
        typer.Option(
            "--gate",
            help="Metrics whose regression fails the command; also step_p50_ms. "
            f"[default: {','.join(AB_GATE)}]",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print ab.json's content instead of the table.")
    ] = False,
    html: HtmlOption = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress on stderr.")
    ] = True,
) -> None:
    """A/B test: arms A and B run interleaved in block pairs (random, balanced AB/BA order) in one session,
    judged on paired block differences (Wilcoxon signed-rank, Holm over gated metrics), so a machine
    that drifts cannot fake a change.

    Options outside --a/--b apply to both arms; an arm's own options (the same flags as `bench run`)
    override them. Arms with equal engine settings share one engine; otherwise each gets its own, both
    kept up (two in-process engines cannot be: use --engine server). Writes OUT/RUN_ID/{a,b} (ordinary
    run directories: report, compare and resume work on them) and ab.json; `--html` writes ab.html.

    `--trace SESSIONS` runs both arms on a session trace's replay: a block is the next --block-workflows
    sessions (the same ones for both arms of a pair), closed loop with --sessions (default 1) in flight,
    and the workflow figures are session latency.

    Exit codes: 0 no gated regression, 1 a gated metric regressed (or the engine could not start),
    3 some workflows failed, 2 usage error, 130 interrupted.
    """
    from flowperf.modes.ab.report import ab_html, print_ab
    from flowperf.modes.ab.run import AbHooks, block_pairs, build_plan, run_ab_with_interrupts
    from flowperf.outputs.report import write_requested_html

    pairs = block_pairs(pairs, num_flows, block_workflows, say=err_console.print)
    plan = build_plan(config_file, flags, a, b, pairs=pairs, block_workflows=block_workflows,
                      order_seed=order_seed, alpha=alpha, threshold_pct=threshold, gate=gate)  # fmt: skip
    bar = WorkflowBar(enabled=progress)
    hooks = AbHooks(
        warn=print_warning, started=lambda total: bar.on_start(total, 0), workflow_done=bar.on_done
    )
    try:
        with engine_and_interrupt_exits("session", bar.stop):
            document = run_ab_with_interrupts(plan, hooks)
    finally:
        bar.stop()
    if as_json:
        print(json.dumps(document, indent=2))
    elif document["analysis"]["metrics"]:
        print_ab(out_console, document)
    if page := write_requested_html(html, plan.ab_dir / "ab.html", lambda: ab_html(document)):
        err_console.print(f"HTML A/B report: {page}")
    raise typer.Exit(_ab_exit(document, plan.ab_dir))


def _ab_exit(document: dict[str, Any], ab_dir: Path) -> int:
    """The exit code, and the one line that explains anything but 0."""
    if document["regressed"] and document["status"] != "interrupted":
        regressed = ", ".join(document["regressed"])
        err_console.print(Text(f"regression in gated metric(s): {regressed}", style="bold red"))
        return EXIT_REGRESSION
    failed = sum(block["workflows_failed"] for block in document["blocks"])
    hint = f"finished blocks are kept in {ab_dir} (each arm resumes with bench run --resume)"
    return session_exit(document["status"], failed, ab_dir, hint)


def register(app: typer.Typer) -> None:
    app.command(cls=HtmlCommand)(ab)
