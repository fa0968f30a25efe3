"""The `bench` command line: parse flags, build a config, call the modules, print.

Thin by design: every decision lives in the module that owns it. User mistakes surface as UserError (or
a flag that does not parse) and end here as one line on stderr with exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

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

from flowperf.benchmark import RunHooks, RunResult, run_benchmark
from flowperf.config import load_run_config
from flowperf.engines.base import EngineError
from flowperf.errors import UserError
from flowperf.flows import resolve_flow
from flowperf.flows.cache import expand_with_cache
from flowperf.interrupts import InterruptController
from flowperf.report import print_run_table
from flowperf.runner import WorkflowOutcome
from flowperf.store import recorded_config
from flowperf.stress.cli import stress
from flowperf.timing import TimingLog

EXIT_USER_ERROR = 2
EXIT_ENGINE_FAILED = 1

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


def _warn(message: str) -> None:
    err_console.print(Text.assemble(("warning:", "yellow"), " ", message))


def _error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message))


def _echo(line: str) -> None:
    print(line, flush=True)


def _csv_ints(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} {value}: expected comma-separated whole numbers, e.g. 1,2,4,8") from None
    if not numbers or any(n < 1 for n in numbers):
        raise UserError(f"{flag} {value}: expected positive whole numbers")
    return numbers


ENGINE = "Engine"
MEASUREMENT = "Measurement"
RESULTS = "Results and crash safety"

FlowOption = Annotated[
    str | None, typer.Option("--flow", help="Flow name in --flows-dir, or a path to a flow template YAML.")
]
FlowsDirOption = Annotated[
    Path | None, typer.Option("--flows-dir", help="Where flow templates live. [default: flows]")
]
NumFlowsOption = Annotated[
    int | None, typer.Option("--num-flows", "-n", min=1, help="How many workflows to run. [default: 25]")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (e.g. configs/default.toml); flags override it."),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        rich_help_panel=ENGINE,
        help="Local model directory (for --engine openai: the served model name). Default: the embedded "
        "tiny model, built on first use.",
    ),
]
EngineKindOption = Annotated[
    Literal["vllm", "server", "openai"] | None,
    typer.Option(
        "--engine",
        rich_help_panel=ENGINE,
        help="vllm: in-process engine; server: a persistent local vLLM server, started once and reused "
        "across runs; openai: any OpenAI-compatible server at --base-url. [default: vllm]",
    ),
]
CudaGraphsOption = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        rich_help_panel=ENGINE,
        help="CUDA graphs on GPU (on by default); --no-cuda-graphs runs eagerly for A/B.",
    ),
]
CudaGraphSizesOption = Annotated[
    str | None,
    typer.Option(
        "--cuda-graph-sizes",
        rich_help_panel=ENGINE,
        help="Batch sizes to capture CUDA graphs for, e.g. 1,2,4,8.",
    ),
]
EagerOption = Annotated[
    bool | None,
    typer.Option(
        "--eager/--compiled",
        rich_help_panel=ENGINE,
        help="Eager execution or torch.compile. Default: eager on CPU, compiled on GPU.",
    ),
]
MaxModelLenOption = Annotated[
    int | None,
    typer.Option("--max-model-len", rich_help_panel=ENGINE, min=16, help="Context length. [default: 2048]"),
]
BlockSizeOption = Annotated[
    int | None,
    typer.Option(
        "--block-size", rich_help_panel=ENGINE, min=1, help="KV-cache block size. [default: 32 on CPU]"
    ),
]
KvCacheOption = Annotated[
    float | None,
    typer.Option(
        "--kv-cache-gib", rich_help_panel=ENGINE, min=0.01, help="KV-cache memory in GiB. [default: 1]"
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option(
        "--seed", rich_help_panel=MEASUREMENT, help="Seed for sampling and the engine. [default: 0]"
    ),
]
ServerPortOption = Annotated[
    int | None,
    typer.Option(
        "--server-port",
        rich_help_panel=ENGINE,
        min=1,
        max=65535,
        help="Port for a managed server. Default: a free one.",
    ),
]
MaxServersOption = Annotated[
    int | None,
    typer.Option(
        "--max-servers",
        rich_help_panel=ENGINE,
        min=1,
        help="Managed servers kept alive; the least recently used goes. [default: 3]",
    ),
]


def engine_overrides(
    kind: str | None,
    model: str | None,
    cuda_graphs: bool | None,
    cuda_graph_sizes: str | None,
    eager: bool | None,
    max_model_len: int | None,
    block_size: int | None,
    kv_cache_gib: float | None,
    seed: int | None,
    server_port: int | None,
    max_servers: int | None,
) -> dict[str, Any]:
    """The `engine` part of the settings from the flags `run` and `serve start` share."""
    return {
        "kind": kind,
        "model": model,
        "cuda_graphs": cuda_graphs,
        "cudagraph_capture_sizes": _csv_ints(cuda_graph_sizes, "--cuda-graph-sizes"),
        "enforce_eager": eager,
        "max_model_len": max_model_len,
        "block_size": block_size,
        "kv_cache_gib": kv_cache_gib,
        "seed": seed,
        "server_port": server_port,
        "max_servers": max_servers,
    }


@app.command()
def run(
    config: ConfigOption = None,
    flow: FlowOption = None,
    num_flows: NumFlowsOption = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            rich_help_panel=MEASUREMENT,
            min=1,
            help="Output tokens per step for every step (overrides the template).",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            rich_help_panel=MEASUREMENT,
            min=1,
            help="Workflows in flight at once (steps of one workflow stay in order). [default: 1, "
            "or no cap with --rate]",
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            rich_help_panel=MEASUREMENT,
            min=0.000001,
            help="Open loop: workflows arrive as a Poisson process at this many per second (seeded).",
        ),
    ] = None,
    engine: EngineKindOption = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", rich_help_panel=ENGINE, help="OpenAI-compatible server for --engine openai."
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            "--api", help="completions, or chat for models with a chat template. [default: completions]"
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env",
            rich_help_panel=ENGINE,
            help="Environment variable holding the API key (never written anywhere).",
        ),
    ] = None,
    model: ModelOption = None,
    cuda_graphs: CudaGraphsOption = None,
    cuda_graph_sizes: CudaGraphSizesOption = None,
    eager: EagerOption = None,
    max_model_len: MaxModelLenOption = None,
    block_size: BlockSizeOption = None,
    kv_cache_gib: KvCacheOption = None,
    seed: SeedOption = None,
    server_port: ServerPortOption = None,
    max_servers: MaxServersOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", rich_help_panel=RESULTS, help="Root directory for run directories. [default: runs]"
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id", rich_help_panel=RESULTS, help="Name of the run directory. Default: time-flow-random."
        ),
    ] = None,
    save_text: Annotated[
        bool,
        typer.Option(
            "--save-text",
            rich_help_panel=RESULTS,
            help="Also store each step's prompt and output text in steps.jsonl.",
        ),
    ] = False,
    flows_dir: FlowsDirOption = None,
    fixtures_dir: Annotated[
        Path | None,
        typer.Option("--fixtures-dir", help="Corpus for the tiny model's tokenizer. [default: fixtures]"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            rich_help_panel=RESULTS,
            help="Continue an interrupted or crashed run directory: completed workflows are kept, the rest "
            "run. Uses the run's own settings; flags given must not change them.",
        ),
    ] = None,
    step_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--step-timeout-s",
            rich_help_panel=MEASUREMENT,
            min=0.001,
            help="Fail a step that takes longer than this.",
        ),
    ] = None,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", rich_help_panel=RESULTS, help="Stop at the first failed workflow.")
    ] = False,
    grace_s: Annotated[
        float | None,
        typer.Option(
            "--grace-s",
            rich_help_panel=RESULTS,
            min=0,
            help="On Ctrl-C, how long in-flight steps may finish. [default: 30]",
        ),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option(
            "--warmup",
            rich_help_panel=MEASUREMENT,
            min=0,
            help="Extra workflows run first and left out of every statistic. [default: 1]",
        ),
    ] = None,
    reset_prefix_cache: Annotated[
        bool | None,
        typer.Option(
            "--reset-prefix-cache/--keep-prefix-cache",
            rich_help_panel=MEASUREMENT,
            help="Empty the prefix cache before the measured window (after warm-up). [default: reset]",
        ),
    ] = None,
    sample_interval: Annotated[
        float | None,
        typer.Option(
            "--sample-interval",
            rich_help_panel=MEASUREMENT,
            min=0,
            help="Resource sampling period in seconds; 0 = off. [default: 0.25]",
        ),
    ] = None,
    leak_threshold_mb: Annotated[
        float | None,
        typer.Option(
            "--leak-threshold-mb",
            rich_help_panel=MEASUREMENT,
            min=0.001,
            help="Warn when RSS grows faster, MB per 100 steps. [default: 2]",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")
    ] = True,
) -> None:
    """Run workflows on one engine, started once, and write results to runs/<run_id>/.

    Prints [TIMING] lines as it goes (also kept in timing.log); the run directory holds config.json,
    steps.jsonl, workflows.csv, metrics.jsonl, summary.json and engine.log, all written as results
    arrive. Ctrl-C stops gracefully (a second Ctrl-C at once); `--resume RUN_DIR` continues where a run
    stopped.

    Exit codes: 0 every workflow succeeded, 3 some failed, 2 usage error, 130 interrupted,
    1 the engine could not start.
    """
    engine_settings = engine_overrides(
        engine, model, cuda_graphs, cuda_graph_sizes, eager, max_model_len, block_size, kv_cache_gib, seed,
        server_port, max_servers,
    )  # fmt: skip
    engine_settings |= {"base_url": base_url, "api": api, "api_key_env": api_key_env}
    overrides: dict[str, Any] = {
        "flow": flow,
        "flows_dir": flows_dir,
        "fixtures_dir": fixtures_dir,
        "num_flows": num_flows,
        "max_tokens": max_tokens,
        "concurrency": concurrency,
        "rate": rate,
        "seed": seed,
        "step_timeout_s": step_timeout_s,
        "fail_fast": fail_fast or None,
        "grace_s": grace_s,
        "warmup": warmup,
        "reset_prefix_cache": reset_prefix_cache,
        "monitor": {"sample_interval_s": sample_interval, "leak_threshold_mb": leak_threshold_mb},
        "engine": engine_settings,
        "output": {"out_dir": out, "run_id": run_id, "save_text": save_text or None},
    }
    base = None
    if resume is not None:
        if config is not None:
            raise UserError("--resume uses the run's own config.json; --config cannot be combined with it")
        base = recorded_config(resume)
    settings = load_run_config(config, overrides, base=base)
    bar = Progress(
        TextColumn("[bold]workflows"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not progress,
        transient=False,
    )
    task_id = bar.add_task("workflows", total=None, failed=0, visible=False)
    failed = 0

    def on_start(total: int, already_done: int) -> None:
        bar.reset(task_id, total=total, completed=already_done, visible=True)
        bar.start()

    def on_done(outcome: WorkflowOutcome) -> None:
        nonlocal failed
        failed += 0 if outcome.ok else 1
        bar.update(task_id, advance=1, failed=failed)

    hooks = RunHooks(echo=_echo, warn=_warn, on_start=on_start, on_workflow_done=on_done)
    interrupts = InterruptController()

    async def run_with_interrupts() -> RunResult:
        interrupts.install(asyncio.get_running_loop())
        try:
            return await run_benchmark(settings, hooks, resume_from=resume, interrupts=interrupts)
        finally:
            interrupts.uninstall()

    try:
        result = asyncio.run(run_with_interrupts())
    except EngineError as error:
        bar.stop()
        _error(str(error))
        raise typer.Exit(EXIT_ENGINE_FAILED) from None
    finally:
        bar.stop()
    if result.summary["status"] == "interrupted":
        _warn(f"interrupted; continue with: bench run --resume {result.run_dir}")
    print_run_table(result.summary, err_console)
    err_console.print(f"results: {result.run_dir}")
    raise typer.Exit(result.exit_code)


@app.command()
def expand(
    flow: FlowOption = None,
    num_flows: NumFlowsOption = None,
    flows_dir: FlowsDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="Ignore the cache and expand again.")] = False,
) -> None:
    """Expand a flow template over its fixtures (cached by content hash) without running anything."""
    settings = load_run_config(None, {"flow": flow, "num_flows": num_flows, "flows_dir": flows_dir})
    template_path = resolve_flow(settings.flow, settings.flows_dir)
    started = time.perf_counter()
    expansion = expand_with_cache(template_path, settings.num_flows, force=force, warn=_warn)
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
def doctor(
    flow: FlowOption = None,
    num_flows: NumFlowsOption = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            rich_help_panel=MEASUREMENT,
            min=1,
            help="Output tokens per step, as for bench run.",
        ),
    ] = None,
    model: ModelOption = None,
    kv_cache_gib: KvCacheOption = None,
    block_size: BlockSizeOption = None,
    flows_dir: FlowsDirOption = None,
    fixtures_dir: Annotated[
        Path | None, typer.Option("--fixtures-dir", help="Corpus for the tiny model. [default: fixtures]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Show what the harness sees (Python, engine and torch versions, device, memory, GPUs, models) and
    how many workflows of a flow fit in the KV cache at once, with a --concurrency to start from."""
    from flowperf.benchmark import resolve_model
    from flowperf.doctor import capacity_findings, collect_findings

    settings = load_run_config(
        None,
        {
            "flow": flow,
            "num_flows": num_flows,
            "max_tokens": max_tokens,
            "flows_dir": flows_dir,
            "fixtures_dir": fixtures_dir,
            "engine": {"model": model, "kv_cache_gib": kv_cache_gib, "block_size": block_size},
        },
    )
    findings = collect_findings()
    resolved = resolve_model(settings, TimingLog(lambda line: None))
    assert resolved.path is not None
    findings |= capacity_findings(settings, resolved.path)
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
def serve_start(
    config: ConfigOption = None,
    model: ModelOption = None,
    port: ServerPortOption = None,
    max_servers: MaxServersOption = None,
    cuda_graphs: CudaGraphsOption = None,
    cuda_graph_sizes: CudaGraphSizesOption = None,
    eager: EagerOption = None,
    max_model_len: MaxModelLenOption = None,
    block_size: BlockSizeOption = None,
    kv_cache_gib: KvCacheOption = None,
    seed: SeedOption = None,
    fixtures_dir: Annotated[
        Path | None, typer.Option("--fixtures-dir", help="Corpus for the tiny model. [default: fixtures]")
    ] = None,
) -> None:
    """Start a vLLM server on 127.0.0.1 for this model and engine configuration, or reuse a running one."""
    from flowperf.benchmark import resolve_model
    from flowperf.engines.server import ServerRegistry

    engine_settings = engine_overrides(
        "server", model, cuda_graphs, cuda_graph_sizes, eager, max_model_len, block_size, kv_cache_gib, seed,
        port, max_servers,
    )  # fmt: skip
    settings = load_run_config(config, {"engine": engine_settings, "fixtures_dir": fixtures_dir})
    resolved = resolve_model(settings, TimingLog(_echo))
    assert resolved.path is not None
    started = time.perf_counter()
    with err_console.status("starting the vLLM server (waiting for /health) ..."):
        try:
            record, reused = ServerRegistry().acquire(
                settings.engine,
                resolved.path,
                port=settings.engine.server_port,
                max_servers=settings.engine.max_servers,
                start_timeout_s=settings.engine.server_start_timeout_s,
            )
        except EngineError as error:
            _error(str(error))
            raise typer.Exit(EXIT_ENGINE_FAILED) from None
    TimingLog(_echo).emit("server_start_ms", (time.perf_counter() - started) * 1000.0, reused=reused)
    out_console.print(
        f"server {record.id} {'already running' if reused else 'ready'} at {record.base_url} "
        f"(pid {record.pid}, model {record.model}, log {record.log_path})"
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
    for column in ("id", "pid", "address", "healthy", "up", "last used", "model"):
        table.add_column(column)
    now = time.time()
    for row in rows:
        table.add_row(
            row["id"],
            str(row["pid"]),
            f"{row['host']}:{row['port']}",
            "yes" if row["healthy"] else ("starting" if not row["ready"] else "NO"),
            f"{(now - row['started_at']) / 60:.0f} min",
            f"{(now - row['last_used_at']) / 60:.0f} min ago",
            row["model"],
        )
    out_console.print(table)


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


HTML_DEFAULT = "<default>"
HtmlOption = Annotated[
    str | None,
    typer.Option("--html", help="Also write a self-contained HTML page: --html alone, or --html PATH."),
]


def _html_path(value: str | None, default: Path) -> Path | None:
    return None if value is None else (default if value == HTML_DEFAULT else Path(value))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (complete, interrupted or crashed).")],
    html: HtmlOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary and derived tables as JSON.")
    ] = False,
) -> None:
    """Show a run: header, timing, latency by step, throughput, prefix cache, resources, failures.

    Figures are recomputed from the run's files, so partial runs report exactly what they hold.
    `--html` writes RUN_DIR/report.html (or PATH) with plots, images embedded, no network needed.
    """
    from flowperf.report import html_report, json_report, print_report, report_summary, write_html
    from flowperf.rundata import load_run

    run_data = load_run(run_dir)
    summary = report_summary(run_data)
    if as_json:
        print(json.dumps(json_report(run_data, summary), default=str, indent=2))
    else:
        print_report(run_data, summary, out_console)
    page = _html_path(html, run_dir / "report.html")
    if page is not None:
        write_html(page, html_report(run_data, summary))
        err_console.print(f"HTML report: {page}")


@app.command()
def compare(
    base_run: Annotated[Path, typer.Argument(help="The baseline run directory.")],
    new_run: Annotated[Path, typer.Argument(help="The run to judge against it.")],
    alpha: Annotated[
        float,
        typer.Option("--alpha", min=0.0001, max=0.5, help="Significance level of the bootstrap interval."),
    ] = 0.05,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0, help="Smallest change (%) that counts, if significant.")
    ] = 5.0,
    gate: Annotated[
        str | None,
        typer.Option(
            "--gate",
            help="Metrics whose regression fails the command, e.g. workflow_ms,ttft_ms. "
            "[default: workflow_ms,step_ms,ttft_ms,itl_ms,tokens_per_s]",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", rich_help_panel=MEASUREMENT, help="Seed of the bootstrap.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Compare runs of different flows or models anyway.")
    ] = False,
    html: HtmlOption = None,
) -> None:
    """Per metric: base, new, delta and a verdict (improvement, regression, no significant change).

    A change counts only if the (1 - alpha) bootstrap interval of the difference of medians excludes zero
    and the change exceeds --threshold. Exit code 1 when a gated metric regressed, 0 otherwise, 2 when
    the runs cannot be compared.
    """
    from flowperf.compare import (
        comparability_problems,
        compare_runs,
        comparison_rows,
        parse_gate,
        sample_warnings,
    )
    from flowperf.rundata import load_run

    gates = parse_gate(gate)
    base, new = load_run(base_run, "BASE_RUN"), load_run(new_run, "NEW_RUN")
    problems = comparability_problems(base, new)
    if problems and not force:
        raise UserError(f"the runs are not comparable: {'; '.join(problems)} (--force to compare anyway)")
    results = compare_runs(base, new, alpha=alpha, threshold_pct=threshold, gate=gates, seed=seed)
    header, rows = comparison_rows(results, alpha)
    table = Table(
        title=f"{base_run} -> {new_run} (alpha {alpha:g}, threshold {threshold:g}%)", title_justify="left"
    )
    for column in header:
        table.add_column(column, justify="left" if column in ("metric", "verdict", "note") else "right")
    styles = {"regression": "bold red", "improvement": "bold green"}
    for row in rows:
        table.add_row(*(Text(cell, style=styles.get(cell, "")) for cell in row))
    out_console.print(table)
    for message in [*problems, *sample_warnings(results)]:
        _warn(message)
    page = _html_path(html, new_run / "compare.html")
    if page is not None:
        from flowperf.compare import compare_html
        from flowperf.report import write_html

        write_html(page, compare_html(base, new, results, alpha=alpha, threshold=threshold))
        err_console.print(f"HTML comparison: {page}")
    regressed = [row.metric for row in results if row.regressed]
    if regressed:
        err_console.print(Text(f"regression in gated metric(s): {', '.join(regressed)}", style="bold red"))
        raise typer.Exit(1)


app.command("stress")(stress)


def _bare_html_flag(arguments: list[str]) -> list[str]:
    """`--html` with no value (last, or before another option) means: the default page path."""
    return [
        f"--html={HTML_DEFAULT}"
        if argument == "--html" and (index + 1 == len(arguments) or arguments[index + 1].startswith("-"))
        else argument
        for index, argument in enumerate(arguments)
    ]


def main() -> None:
    """Console entry point: run the app and turn user errors into one clear line and exit code 2."""
    sys.argv[1:] = _bare_html_flag(sys.argv[1:])
    try:
        exit_code = app(standalone_mode=False)
    except UserError as error:
        _error(str(error))
        sys.exit(EXIT_USER_ERROR)
    except TyperException as error:
        # a flag or argument that does not parse (exit code 2), or another command-line failure
        _error(error.format_message())
        sys.exit(error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
