"""`bench report` and `bench compare`: read run (or sweep) directories back and print or write what a person
reads; the work is in `flowperf.outputs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from flowperf.cli.common import (
    err_console,
    out_console,
    print_warning,
)
from flowperf.cli.options import (
    MEASUREMENT_PANEL,
    AlphaOption,
    HtmlCommand,
    HtmlOption,
    ThresholdOption,
)
from flowperf.cli.sweep import compare_sweep_dirs
from flowperf.errors import UserError
from flowperf.modes.sweep.store import is_sweep_dir
from flowperf.outputs.compare import DEFAULT_GATE as COMPARE_GATE


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (complete, interrupted or crashed).")],
    html: HtmlOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary and derived tables as JSON.")
    ] = False,
) -> None:
    """Show a run: header, timing, latency by step, throughput, prefix cache, resources, failures (or a
    `bench sweep` directory: its levels and answers).

    Figures are recomputed from the run's files, so partial runs report exactly what they hold.
    `--html` writes RUN_DIR/report.html (or PATH) with plots, images embedded, no network needed.
    """
    from flowperf.outputs.report import (
        html_report,
        json_report,
        print_report,
        report_summary,
        write_requested_html,
    )
    from flowperf.rundir.rundata import load_run

    if is_sweep_dir(run_dir):
        _report_sweep(run_dir, html, as_json)
        return
    run_data = load_run(run_dir)
    summary = report_summary(run_data)
    if as_json:
        print(json.dumps(json_report(run_data, summary), default=str, indent=2))
    else:
        print_report(run_data, summary, out_console)
    if page := write_requested_html(html, run_dir / "report.html", lambda: html_report(run_data, summary)):
        err_console.print(f"HTML report: {page}")


def _report_sweep(sweep_dir: Path, html: str | None, as_json: bool) -> None:
    """A `bench sweep` directory: its levels, answers and (HTML) curves; each level is a run of its own."""
    from flowperf.modes.sweep.report import print_sweep, sweep_html
    from flowperf.modes.sweep.store import read_sweep
    from flowperf.outputs.report import write_requested_html

    document = read_sweep(sweep_dir, "RUN_DIR")
    if as_json:
        print(json.dumps(document, default=str, indent=2))
    else:
        print_sweep(out_console, document)
    if page := write_requested_html(html, sweep_dir / "sweep.html", lambda: sweep_html(document)):
        err_console.print(f"HTML report: {page}")


def compare(
    base_run: Annotated[Path, typer.Argument(help="The baseline run directory.")],
    new_run: Annotated[Path, typer.Argument(help="The run to judge against it.")],
    alpha: AlphaOption = 0.05,
    threshold: ThresholdOption = 5.0,
    gate: Annotated[
        str | None,
        typer.Option(
            "--gate",
            help="Metrics whose regression fails the command, e.g. workflow_ms,ttft_ms. "
            "Holm-corrected over all gated metrics. workflow_latency_ms (from scheduled arrival) and "
            "start_delay_ms (slot wait) exist for open-loop runs. "
            f"[default: {','.join(COMPARE_GATE)}]",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", rich_help_panel=MEASUREMENT_PANEL, help="Seed of the bootstrap.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Compare runs of different flows, models or settings anyway.")
    ] = False,
    html: HtmlOption = None,
) -> None:
    """Per metric: base, new, delta and a verdict (improvement, regression, no significant change).

    The bootstrap resamples whole workflows. A change counts only if it is significant (gated metrics:
    Holm-corrected p-value at most alpha) and exceeds --threshold. Exit code 1 when a gated metric
    regressed, 0 otherwise, 2 when the runs cannot be compared (flows, model or settings differ).
    Two `bench sweep` directories are compared level by level (levels at equal load).
    """
    if is_sweep_dir(base_run) or is_sweep_dir(new_run):
        compare_sweep_dirs(
            base_run, new_run, alpha=alpha, threshold=threshold, gate=gate, seed=seed, force=force, html=html
        )
        return
    from flowperf.outputs.compare import (
        comparability_problems,
        compare_runs,
        comparison_rows,
        comparison_title,
        parse_gate,
        print_comparison,
        sample_warnings,
    )
    from flowperf.rundir.rundata import load_run

    gates = parse_gate(gate)
    base, new = load_run(base_run, "BASE_RUN"), load_run(new_run, "NEW_RUN")
    problems = comparability_problems(base, new)
    if problems and not force:
        raise UserError(f"the runs are not comparable: {'; '.join(problems)} (--force to compare anyway)")
    results = compare_runs(base, new, alpha=alpha, threshold_pct=threshold, gate=gates, seed=seed)
    header, rows = comparison_rows(results, alpha)
    title = comparison_title(str(base_run), str(new_run), results, alpha, threshold)
    print_comparison(out_console, title, header, rows)
    from flowperf.outputs.compare import print_engine_state, summary_engine_state

    print_engine_state(
        out_console,
        "engine state, per server (report only, never gated)",
        summary_engine_state(base),
        summary_engine_state(new),
    )
    for message in [*problems, *sample_warnings(results)]:
        print_warning(message)
    from flowperf.outputs.compare import compare_html
    from flowperf.outputs.report import write_requested_html

    page = write_requested_html(
        html,
        new_run / "compare.html",
        lambda: compare_html(base, new, results, alpha=alpha, threshold=threshold),
    )
    if page:
        err_console.print(f"HTML comparison: {page}")
    regressed = [row.metric for row in results if row.regressed]
    if regressed:
        err_console.print(Text(f"regression in gated metric(s): {', '.join(regressed)}", style="bold red"))
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(cls=HtmlCommand)(report)
    app.command(cls=HtmlCommand)(compare)
