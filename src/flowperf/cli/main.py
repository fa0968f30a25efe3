"""The `bench` command line: parse flags, build a config, call the modules, print.

Thin by design: every decision lives in the module that owns it. User mistakes surface as UserError (or
a flag that does not parse) and end here as one line on stderr with exit code 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

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
from rich.table import Table
from rich.text import Text
from typer.exceptions import TyperException

from flowperf.cli.options import (
    CLIENT,
    ENDPOINT,
    ENGINE,
    FLOW,
    MEASUREMENT,
    MEASUREMENT_PANEL,
    MODEL,
    MONITOR,
    RESULTS,
    RESULTS_PANEL,
    TRACE,
    ConfigFileOption,
    ConfigFlags,
    HtmlCommand,
    HtmlOption,
    only,
    with_options,
)
from flowperf.cli.outcome import engine_and_interrupt_exits, session_exit
from flowperf.cli.outcome import error as _error
from flowperf.cli.outcome import warn as _warn
from flowperf.cli.sweep import compare_sweep_dirs, sweep
from flowperf.config import RunConfig, load_run_config
from flowperf.engines.base import EngineError
from flowperf.errors import EXIT_ENGINE_FAILED, EXIT_INTERRUPTED, EXIT_REGRESSION, EXIT_USER_ERROR, UserError
from flowperf.flows import resolve_flow
from flowperf.flows.cache import expand_with_cache
from flowperf.modes.ab.run import DEFAULT_GATE as AB_GATE
from flowperf.modes.sweep.store import is_sweep_dir
from flowperf.outputs.compare import DEFAULT_GATE as COMPARE_GATE
from flowperf.outputs.report import print_run_table
from flowperf.run.benchmark import RunHooks, RunResult, run_benchmark
from flowperf.run.interrupts import RunInterrupted, run_with_interrupts
from flowperf.run.timing import TimingLog
from flowperf.rundir.records import WorkflowRecord
from flowperf.rundir.store import recorded_config
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
model_app = typer.Typer(help="Build and inspect models.")
app.add_typer(model_app, name="model")
serve_app = typer.Typer(
    help="Persistent local vLLM servers: started once, reused by `bench run --engine server` across runs."
)
app.add_typer(serve_app, name="serve")


@app.callback(invoke_without_command=True)
@model_app.callback(invoke_without_command=True)
@serve_app.callback(invoke_without_command=True)
def _show_help_without_command(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        out_console.print(ctx.get_help())
        raise typer.Exit(0)


out_console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _echo(line: str) -> None:
    print(line, flush=True)


class _WorkflowBar:
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


def _config(
    flags: ConfigFlags, config_file: Path | None = None, base: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults (or `base`), then the TOML file, then the flags: the one merge, done by config.py."""
    return load_run_config(config_file, RunConfig.overrides_from_flags(flags), base=base)


def _run_config(flags: ConfigFlags, config_file: Path | None, resume: Path | None) -> RunConfig:
    """A resumed run starts from its own recorded config; flags may only restate it (the run checks)."""
    if resume is None:
        return _config(flags, config_file)
    if config_file is not None:
        raise UserError("--resume uses the run's own config.json; --config cannot be combined with it")
    return _config(flags, base=recorded_config(resume))


def _run_with_interrupts(config: RunConfig, hooks: RunHooks, resume: Path | None) -> RunResult:
    """Run the benchmark with Ctrl-C owned by the run (graceful stop, then resumable) for its duration."""
    return run_with_interrupts(
        lambda interrupts: run_benchmark(config, hooks, resume_from=resume, interrupts=interrupts)
    )


ResumeOption = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        rich_help_panel=RESULTS_PANEL,
        help="Continue an interrupted or crashed run directory: completed workflows are kept, the rest "
        "run. Uses the run's own settings; flags given must not change them.",
    ),
]

AlphaOption = Annotated[
    float, typer.Option("--alpha", min=0.0001, max=0.5, help="Significance level of a verdict.")
]
ThresholdOption = Annotated[
    float, typer.Option("--threshold", min=0, help="Smallest change (%) that counts, if significant.")
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")
]


@app.command()
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
    _execute(_run_config(flags, config_file, resume), resume, progress)


def _execute(config: RunConfig, resume: Path | None, progress: bool) -> None:
    """Run (or resume) one run directory with a progress bar, report it, and exit with its code."""
    bar = _WorkflowBar(enabled=progress)
    hooks = RunHooks(echo=_echo, warn=_warn, on_start=bar.on_start, on_workflow_done=bar.on_done)
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


@app.command()
@with_options(MODEL, ENDPOINT, ENGINE, REPLAY_MEASUREMENT, TRACE, CLIENT, MONITOR, RESULTS)
def replay(
    trace: Annotated[
        str,
        typer.Argument(
            metavar="TRACE",
            help="A shipped trace (mooncake, azure-conv, azure-code) or a Mooncake JSONL, Azure or "
            "BurstGPT CSV file.",
        ),
    ],
    config_file: ConfigFileOption = None,
    *,
    flags: ConfigFlags,
    resume: ResumeOption = None,
    progress: ProgressOption = True,
) -> None:
    """Replay a request trace on one engine, open loop on the trace's own timestamps.

    One single-step workflow per request: its prompt is token ids (Mooncake's hash ids become shared
    prefix blocks, so the trace's prefix-cache reuse is reproduced; other traces get unique prompts) and
    it generates exactly the trace's output length. The run directory is a `bench run` directory:
    `report`, `compare` and `--resume` work on it.

    Exit codes as `bench run`.
    """
    _execute(_run_config(flags | {"trace.source": trace}, config_file, resume), resume, progress)


def _report_run(result: RunResult) -> None:
    """How the run ended, its table and where it is, on stderr."""
    summary = result.summary
    if summary.status == "interrupted":
        _warn(f"interrupted; continue with: bench run --resume {result.run_dir}")
    if summary.status == "warmup_failed":
        _error(f"nothing was measured: {summary.run.warmup_failure} (--fail-fast)")
    print_run_table(summary, err_console)
    err_console.print(f"results: {result.run_dir}")


@app.command()
@with_options(FLOW)
def expand(
    *,
    flags: ConfigFlags,
    force: Annotated[bool, typer.Option("--force", help="Ignore the cache and expand again.")] = False,
) -> None:
    """Expand a flow template over its fixtures (cached by content hash) without running anything."""
    config = _config(flags)
    template_path = resolve_flow(config.flow, config.flows_dir)
    started = time.perf_counter()
    expansion = expand_with_cache(template_path, config.num_flows, force=force, warn=_warn)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    TimingLog(_echo).emit(
        "flow_expansion_ms", elapsed_ms, source=expansion.source, flows=len(expansion.flows)
    )
    flows = expansion.flows
    err_console.print(
        f"{flows.name}: {len(flows)} flows x {len(flows.steps)} steps "
        f"({', '.join(s.id for s in flows.steps)}) over {len(flows.records)} fixture records"
    )


@model_app.command("build-tiny")
def build_tiny(
    fixtures_dir: Annotated[Path, typer.Option("--fixtures-dir", help="Corpus for the tokenizer.")] = Path(
        "fixtures"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if an identical build exists.")
    ] = False,
) -> None:
    """Build the embedded tiny Llama model (random weights, BPE tokenizer trained on the fixtures).

    Deterministic: the same fixtures give the same bytes. Stored under $FLOWPERF_HOME (default: the
    user cache dir) and reused until the fixtures or the builder change.
    """
    from flowperf.engines.tiny import build_tiny_model

    model = build_tiny_model(fixtures_dir, force=force)
    TimingLog(_echo).emit("model_build_ms", model.build_ms, model="tiny", built=model.built)
    out_console.print(str(model.path))


@app.command()
@with_options(FLOW, MODEL, only(MEASUREMENT, "--max-tokens"), only(ENGINE, "--kv-cache-gib", "--block-size"))
def doctor(
    *,
    flags: ConfigFlags,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Show what the harness sees (Python, engine and torch versions, device, memory, GPUs, models) and
    how many workflows of a flow fit in the KV cache at once, with a --concurrency to start from."""
    from flowperf.diagnostics.doctor import capacity_findings, collect_findings
    from flowperf.run.benchmark import resolve_model

    config = _config(flags)
    findings = collect_findings()
    resolved = resolve_model(config, TimingLog(lambda line: None))
    assert resolved.path is not None
    findings |= capacity_findings(config, resolved.path)
    if as_json:
        out_console.print_json(json.dumps(findings, default=str))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in findings.items():
        table.add_row(key, str(value))
    out_console.print(table)


@serve_app.command("start")
@with_options(MODEL, ENGINE)
def serve_start(
    config_file: ConfigFileOption = None,
    *,
    flags: ConfigFlags,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="Servers of this configuration, started as a set.")
    ] = 1,
    gpus_per_replica: Annotated[
        int, typer.Option("--gpus-per-replica", min=1, help="GPUs pinned to each (CUDA_VISIBLE_DEVICES).")
    ] = 1,
) -> None:
    """Start a vLLM server on 127.0.0.1 for this model and engine configuration, or reuse a running one;
    with --replicas N, a set of N, each on its own GPUs (`bench serve urls` prints their addresses)."""
    from flowperf.engines.server import ServerRegistry
    from flowperf.run.benchmark import resolve_model

    config = _config(flags | {"engine.kind": "server"}, config_file)
    resolved = resolve_model(config, TimingLog(_echo))
    assert resolved.path is not None
    started = time.perf_counter()
    with err_console.status("starting the vLLM server (waiting for /health) ..."):
        try:
            records, reused = ServerRegistry().start(
                config.engine,
                resolved.path,
                replicas=replicas,
                gpus_per_replica=gpus_per_replica,
                port=config.engine.server_port,
                max_servers=config.engine.max_servers,
                start_timeout_s=config.engine.server_start_timeout_s,
            )
        except EngineError as error:
            _error(str(error))
            raise typer.Exit(EXIT_ENGINE_FAILED) from None
    TimingLog(_echo).emit("server_start_ms", (time.perf_counter() - started) * 1000.0, reused=reused)
    for record in records:
        out_console.print(
            f"server {record.id} {'already running' if reused else 'ready'} at {record.base_url} "
            f"(pid {record.pid}, model {record.model}, log {record.log_path}{record.placement})"
        )


@serve_app.command("status")
def serve_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the servers as JSON.")] = False,
) -> None:
    """List the servers flowperf is keeping alive, with their health."""
    from flowperf.engines.server import ServerRegistry, healthy

    servers = ServerRegistry().servers()
    rows = [record.model_dump() | {"healthy": healthy(record)} for record in servers]
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    if not servers:
        out_console.print("no flowperf server is running")
        return
    table = Table()
    for column in ("id", "set", "pid", "address", "healthy", "up", "last used", "model"):
        table.add_column(column)
    now = time.time()
    for row, record in zip(rows, servers, strict=True):
        table.add_row(
            row["id"],
            record.set_slot or "-",
            str(row["pid"]),
            f"{row['host']}:{row['port']}",
            "yes" if row["healthy"] else ("starting" if not row["ready"] else "NO"),
            f"{(now - row['started_at']) / 60:.0f} min",
            f"{(now - row['last_used_at']) / 60:.0f} min ago",
            row["model"],
        )
    out_console.print(table)


@serve_app.command("urls")
def serve_urls(
    set_id: Annotated[str | None, typer.Argument(help="Replica set id. Default: the only one.")] = None,
) -> None:
    """Print the base URLs of a replica set (`bench serve start --replicas N`), one a line."""
    from flowperf.engines.server import ServerRegistry

    for url in ServerRegistry().set_urls(set_id):
        print(url)


@serve_app.command("stop")
def serve_stop(
    server_id: Annotated[str | None, typer.Argument(help="Server id (see `bench serve status`).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Stop every flowperf server.")] = False,
) -> None:
    """Stop a server (the only one, or the one named), or all of them."""
    from flowperf.engines.server import ServerRegistry

    stopped = ServerRegistry().stop(server_id, everything=everything)
    for record in stopped:
        out_console.print(f"stopped server {record.id} (pid {record.pid}, port {record.port})")
    if not stopped:
        out_console.print("no flowperf server is running")


@serve_app.command("logs")
def serve_logs(
    server_id: Annotated[
        str | None, typer.Argument(help="Server id. Default: the most recently used.")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many lines from the end.")] = 50,
) -> None:
    """Print the end of a server's log."""
    from flowperf.engines.server import ServerRegistry, log_tail

    record = ServerRegistry().find(server_id)
    print(log_tail(record.log_path, lines))


@app.command(cls=HtmlCommand)
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


@app.command(cls=HtmlCommand)
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
    for message in [*problems, *sample_warnings(results)]:
        _warn(message)
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


@app.command(cls=HtmlCommand)
@with_options(only(FLOW, "--flow", "--flows-dir"), MODEL, ENDPOINT, ENGINE, MEASUREMENT, MONITOR,
              only(RESULTS, "--out", "--run-id", "--save-text", "--fail-fast", "--grace-s"))  # fmt: skip
def ab(
    config_file: ConfigFileOption = None,
    *,
    a: Annotated[str, typer.Option("--a", help='Arm A\'s own options, e.g. "--max-tokens 64".')] = "",
    b: Annotated[str, typer.Option("--b", help='Arm B\'s own options, e.g. "--max-tokens 96".')] = "",
    flags: ConfigFlags,
    pairs: Annotated[
        int, typer.Option("--pairs", min=1, max=1000, help="Block pairs (one block per arm).")
    ] = 10,
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

    Exit codes: 0 no gated regression, 1 a gated metric regressed (or the engine could not start),
    3 some workflows failed, 2 usage error, 130 interrupted.
    """
    from flowperf.modes.ab.report import ab_html, print_ab
    from flowperf.modes.ab.run import AbHooks, build_plan, run_ab_with_interrupts
    from flowperf.outputs.report import write_requested_html

    plan = build_plan(config_file, flags, a, b, pairs=pairs, block_workflows=block_workflows,
                      order_seed=order_seed, alpha=alpha, threshold_pct=threshold, gate=gate)  # fmt: skip
    bar = _WorkflowBar(enabled=progress)
    hooks = AbHooks(warn=_warn, started=lambda total: bar.on_start(total, 0), workflow_done=bar.on_done)
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


app.command("stress")(stress)
app.command("sweep", cls=HtmlCommand)(sweep)


def main() -> None:
    """Console entry point: run the app and turn user errors into one clear line and exit code 2."""
    try:
        exit_code = app(standalone_mode=False)
    except UserError as error:
        _error(str(error))
        sys.exit(EXIT_USER_ERROR)
    except TyperException as error:
        # a flag or argument that does not parse (exit code 2), or another command-line failure
        _error(error.format_message())
        sys.exit(error.exit_code)
    except (typer.Abort, KeyboardInterrupt, RunInterrupted):
        _warn("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
