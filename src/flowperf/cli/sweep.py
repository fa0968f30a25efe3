"""`bench sweep`: the command's flags and terminal; the work is in `flowperf.modes.sweep.run`.

Registered in cli/main.py with `app.command("sweep", cls=HtmlCommand)(sweep)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from flowperf.cli.common import err_console, out_console, print_warning
from flowperf.cli.options import (
    CLIENT,
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
    ConfigFileOption,
    ConfigFlags,
    HtmlOption,
    only,
    with_options,
)
from flowperf.cli.outcome import engine_and_interrupt_exits, session_exit
from flowperf.modes.sweep.levels import LevelRow, LevelSpec
from flowperf.run.timing import timing_line

SWEEP_PANEL = "Sweep"


def _level_line(row: LevelRow) -> str:
    """The level's [TIMING] line, in the one format (`timing.timing_line`: floats to one decimal, so
    attainment is given in percent)."""
    fields: dict[str, object] = {"offered": row.offered, "achieved_per_s": float(row.achieved_per_s or 0),
                                 "workflows": row.workflows, "status": row.status}  # fmt: skip
    if row.attainment is not None:
        fields["attainment_pct"] = row.attainment * 100.0
    if row.stopped_early:
        fields["stopped_early"] = True
    return timing_line(f"{row.name}_ms", row.wall_s * 1000.0, **fields)


def _level_started(index: int, spec: LevelSpec) -> None:
    load = f"rate {spec.rate:g}/s" if spec.rate is not None else f"concurrency {spec.concurrency}"
    err_console.print(f"level {index}: {spec.role}, {load}")


def _option(*decls: str, help: str, **bounds: float) -> typer.models.OptionInfo:
    return typer.Option(*decls, help=help, rich_help_panel=SWEEP_PANEL, **bounds)


ConcurrencyLevels = Annotated[
    str | None, _option("--concurrency", help="Closed-loop levels: workflows in flight, e.g. 1,2,4,8.")
]
RateLevels = Annotated[
    str | None,
    _option("--rates", help="Open-loop levels: Poisson workflow arrivals per second, e.g. 0.5,1,2,4."),
]
AutoLevels = Annotated[
    int | None,
    _option(
        "--auto",
        min=0,
        max=50,
        help="Automatic levels: synchronous, saturation, then N rates evenly between their achieved rates.",
    ),
]
SaturationConcurrency = Annotated[
    int | None,
    _option(
        "--saturation-concurrency",
        min=1,
        max=4096,
        help="Workflows in flight at --auto's saturation level. [default: 32]",
    ),
]
Duration = Annotated[
    float | None,
    _option(
        "--duration",
        min=0.1,
        help="Seconds of measured window per level, instead of running all -n "
        "workflows (-n is then the most a level runs: 2000 unless given).",
    ),
]
Slo = Annotated[
    str | None,
    _option(
        "--slo",
        help="Objectives, e.g. workflow_p95_ms=8000,ttft_p99_ms=500,itl_p99_ms=50 (metrics: "
        "workflow, ttft, itl, tpot, step; p<NN> or max).",
    ),
]
SloTarget = Annotated[
    float | None,
    _option(
        "--slo-target",
        min=0.0,
        max=1.0,
        help="Share of workflows that must meet every objective. [default: 0.95]",
    ),
]
FindMax = Annotated[
    bool,
    _option(
        "--find-max",
        help="Bisect for the highest load meeting --slo-target (on rate; on concurrency with --concurrency).",
    ),
]
Tolerance = Annotated[
    float | None,
    _option(
        "--tolerance",
        min=0.001,
        max=1.0,
        help="--find-max stops when (hi - lo) <= tolerance * hi. [default: 0.1]",
    ),
]
MaxSearchLevels = Annotated[
    int | None,
    _option("--max-search-levels", min=1, max=50, help="Most levels --find-max adds. [default: 8]"),
]
ResumeSweep = Annotated[
    Path | None,
    _option(
        "--resume", help="Continue a sweep directory at its first unfinished level (or show a finished one)."
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print sweep.json's content instead of the table.")]
Progress = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Say each level as it starts, on stderr.")
]


@with_options(FLOW, MODEL, ENDPOINT, ENGINE,
              only(MEASUREMENT, "--max-tokens", "--step-timeout-s", "--warmup", "--reset-prefix-cache"),
              CLIENT, MONITOR, RESULTS, SESSION_TRACE, only(TRACE, "--time-scale", "--token-scale"),
              only(SESSIONS, "--think-time", "--max-sessions"))  # fmt: skip
def sweep(
    config_file: ConfigFileOption = None,
    *,
    flags: ConfigFlags,
    concurrency: ConcurrencyLevels = None,
    rates: RateLevels = None,
    auto: AutoLevels = None,
    saturation_concurrency: SaturationConcurrency = None,
    duration: Duration = None,
    slo: Slo = None,
    slo_target: SloTarget = None,
    find_max: FindMax = False,
    tolerance: Tolerance = None,
    max_search_levels: MaxSearchLevels = None,
    resume: ResumeSweep = None,
    as_json: JsonOutput = False,
    html: HtmlOption = None,
    progress: Progress = True,
) -> None:
    """Sweep load levels on one engine: per level an ordinary run directory, plus sweep.jsonl/sweep.csv
    (one row per finished level), SLO attainment and goodput, the knee and the max sustainable load.

    Levels: --concurrency 1,2,4 (closed loop), --rates 0.5,1,2 (open loop), or --auto N. Each level runs
    -n workflows (or --duration seconds) after its own warm-up, with the prefix cache emptied first.
    `--resume SWEEP_DIR` continues an interrupted sweep; `--html` writes SWEEP_DIR/sweep.html.
    `--trace SESSIONS` sweeps a session trace's replay: a level's workflows are its sessions.

    Exit codes: 0 done, 3 some workflows failed, 2 usage error, 130 interrupted, 1 the engine could not
    start.
    """
    from flowperf.modes.sweep.report import print_sweep, sweep_html
    from flowperf.modes.sweep.run import SweepHooks, SweepRequest, build_plan, run_sweep_with_interrupts
    from flowperf.outputs.report import write_requested_html

    request = SweepRequest(concurrency, rates, auto, saturation_concurrency, duration, slo, slo_target,
                           find_max, tolerance, max_search_levels)  # fmt: skip
    plan = build_plan(config_file, flags, request, resume)
    rows_to = sys.stderr if as_json else sys.stdout  # --json: stdout is the document alone
    hooks = SweepHooks(echo=lambda line: print(line, flush=True), warn=print_warning,
                       level_started=_level_started if progress else lambda index, spec: None,
                       level_done=lambda row: print(_level_line(row), file=rows_to, flush=True))  # fmt: skip
    with engine_and_interrupt_exits("sweep"):
        document = run_sweep_with_interrupts(plan, hooks)
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print_sweep(out_console, document)
    if page := write_requested_html(html, plan.sweep_dir / "sweep.html", lambda: sweep_html(document)):
        err_console.print(f"HTML sweep report: {page}")
    raise typer.Exit(_exit_code(document, plan.sweep_dir))


def _exit_code(document: dict[str, object], sweep_dir: Path) -> int:
    failed = sum(level["failed"] for level in document["levels"])  # type: ignore[attr-defined]
    hint = f"continue with: bench sweep --resume {sweep_dir}"
    return session_exit(str(document["status"]), failed, sweep_dir, hint)


def compare_sweep_dirs(
    base_run: Path,
    new_run: Path,
    *,
    alpha: float,
    threshold: float,
    gate: str | None,
    seed: int,
    force: bool,
    html: str | None,
) -> None:
    """`bench compare SWEEP_A SWEEP_B`: levels at the same load compared as runs; exit 1 on a gated
    regression at any level, 2 when the sweeps' levels do not measure the same experiment."""
    from flowperf.errors import UserError
    from flowperf.outputs.compare import (
        compare_sweeps,
        parse_gate,
        print_sweep_comparison,
        sweep_compare_html,
    )
    from flowperf.outputs.report import write_requested_html

    gates = parse_gate(gate)
    comparison = compare_sweeps(
        base_run, new_run, alpha=alpha, threshold_pct=threshold, gate=gates, seed=seed
    )
    if comparison.problems and not force:
        problems = "; ".join(comparison.problems)
        raise UserError(f"the sweeps' levels are not comparable: {problems} (--force to compare anyway)")
    print_sweep_comparison(out_console, base_run, new_run, comparison, alpha, threshold)
    for message in [*comparison.problems, *(f"no partner level: {name}" for name in comparison.unmatched)]:
        print_warning(message)
    if page := write_requested_html(
        html, new_run / "compare.html", lambda: sweep_compare_html(comparison, alpha)
    ):
        err_console.print(f"HTML comparison: {page}")
    if comparison.regressed:
        err_console.print(
            Text(f"regression in gated metric(s): {', '.join(comparison.regressed)}", style="bold red")
        )
        raise typer.Exit(1)
