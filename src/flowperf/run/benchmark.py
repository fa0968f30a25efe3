"""One `bench run` (or `--resume`), end to end: config → flows → engine → runner → store → summary.

Everything that can be wrong with the user's input is checked before the run directory is created and
before an engine starts; from then on every result is on disk the moment it exists, and whatever ends
the run (completion, failure, Ctrl-C) the engine is shut down and summary.json says how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flowperf
from flowperf.config import RunConfig, differences
from flowperf.diagnostics.ceiling import ceiling_warning
from flowperf.engines.base import Engine, EngineError, EngineInfo
from flowperf.engines.iteration_log import record_iterations
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine
from flowperf.engines.presets import build_preset_model
from flowperf.engines.server import ManagedServerEngine
from flowperf.engines.tiny import build_tiny_model
from flowperf.engines.vllm_local import get_vllm_engine
from flowperf.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, UserError
from flowperf.flows import resolve_flow
from flowperf.flows.cache import Expansion, expand_with_cache
from flowperf.flows.expand import ExpandedFlow
from flowperf.flows.filler import DEFAULT_TOKENS_PER_WORD, tokens_per_word
from flowperf.flows.source import WorkflowSource
from flowperf.run.deferred import DeferredSink
from flowperf.run.interrupts import InterruptController, RunInterrupted
from flowperf.run.monitor import ResourceMonitor
from flowperf.run.runner import ExecutionConfig, Runner, WindowRunner
from flowperf.run.sinks import MeasuredSink, WarmupSink
from flowperf.run.timing import TimingLog
from flowperf.rundir.live_summary import PeriodicSummaries
from flowperf.rundir.records import (
    RUN_SCHEMA_VERSION,
    MonitorErrorRecord,
    WorkflowRecord,
    check_schema_version,
)
from flowperf.rundir.store import (
    CONFIG,
    ENGINE_LOG,
    ENGINE_METRICS,
    ITERATIONS,
    SUMMARY,
    TIMING_LOG,
    RunStore,
    StoreWriteError,
)
from flowperf.rundir.summary import SummaryContext, build_summary, leak_warning
from flowperf.rundir.summary_schema import RunInfo, RunStatus, RunSummary, Timings
from flowperf.sessions.source import load_trace_workflows
from flowperf.telemetry.session import EngineScraper, start_scraper, stop_scraper
from flowperf.workers.pool import WorkerPool
from flowperf.workers.ray_cluster import check_available

HTTP_POOL_WITHOUT_CAP = 256  # connections kept for an open-loop run with no --concurrency cap


@dataclass(frozen=True)
class RunHooks:
    """How a run talks to whoever started it (the CLI's terminal, or a test)."""

    echo: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    on_start: Callable[[int, int], None] = lambda total, already_done: None
    on_workflow_done: Callable[[WorkflowRecord], None] = lambda record: None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: RunSummary
    exit_code: int


@dataclass(frozen=True)
class ResolvedModel:
    """The model to serve: a local directory (built tiny model or --model), or for a remote OpenAI
    server only the name it serves (None: whatever it serves first)."""

    path: Path | None
    tiny: bool
    name: str | None = None


def local_model_path(config: RunConfig) -> Path | None:
    """`--model` as a local model directory, checked without writing anything; None for no `--model`."""
    if config.engine.model is None:
        return None
    path = Path(config.engine.model).expanduser()
    if not path.is_dir():
        raise UserError(
            f"--model {config.engine.model}: no such model directory (model hubs are not reachable; "
            "give a local directory with config.json and weights)"
        )
    if not (path / "config.json").is_file():
        raise UserError(f"--model {config.engine.model}: not a model directory (no config.json in it)")
    return path.resolve()


def preset_model_path(config: RunConfig, timing: TimingLog) -> Path | None:
    """The `--model-preset`'s model directory, built on first use; None when no preset was asked for."""
    name = config.engine.model_preset
    if name is None:
        return None
    model = build_preset_model(name, config.fixtures_dir)
    timing.emit("model_build_ms", model.build_ms, model=name, built=model.built)
    return model.path


def resolve_model(config: RunConfig, timing: TimingLog) -> ResolvedModel:
    """The model directory to load: `--model` if given (must exist locally), else the tiny model."""
    if config.engine.kind == "openai":
        return ResolvedModel(path=None, tiny=False, name=config.engine.model)
    path = local_model_path(config) or preset_model_path(config, timing)
    if path is not None:
        return ResolvedModel(path=path, tiny=False, name=str(path))
    tiny = build_tiny_model(config.fixtures_dir)
    timing.emit("model_build_ms", tiny.build_ms, model="tiny", built=tiny.built)
    return ResolvedModel(path=tiny.path, tiny=True, name=str(tiny.path))


def make_engine(config: RunConfig, model: ResolvedModel, log_path: Path, parallel_width: int = 1) -> Engine:
    """The engine `config.engine.kind` names, not started; an HTTP client pools a connection for every
    request that can be in flight (`parallel_width` per workflow: a graph's branches run at once), per
    replica when there are several, since routing may send any of them every request in flight."""
    settings = config.engine
    if settings.kind == "vllm":
        assert model.path is not None
        return get_vllm_engine(settings, model.path, log_path)
    urls = (settings.base_urls if settings.kind == "openai" else []) or [""]  # a managed server sets its own
    http = HttpClientConfig(
        base_url=urls[0],
        other_urls=tuple(urls[1:]),
        routing=settings.routing,
        model=model.name,
        api=settings.api,
        api_key_env=settings.api_key_env,
        concurrency=config.effective_concurrency * parallel_width
        if config.effective_concurrency
        else HTTP_POOL_WITHOUT_CAP,
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
    )
    if settings.kind == "openai":
        return OpenAIHttpEngine(http)
    assert model.path is not None
    return ManagedServerEngine(
        settings,
        model.path,
        http,
        port=settings.server_port,
        max_servers=settings.max_servers,
        start_timeout_s=settings.server_start_timeout_s,
    )


def new_run_id(flow_name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{flow_name}-{secrets.token_hex(2)}"


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def torch_version() -> str | None:
    """torch's version once something imported it (the engine does); never imported just to ask."""
    return getattr(sys.modules.get("torch"), "__version__", None)


def config_document(
    config: RunConfig, expansion: Expansion, model: ResolvedModel, run_id: str
) -> dict[str, Any]:
    """config.json as written before the engine starts: the resolved settings, their fingerprint, and
    everything that identifies the setup; `with_engine` completes it once the engine runs."""
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config": config.model_dump(mode="json"),
        "config_sha256": config.fingerprint(),
        "flow": {
            "name": expansion.flows.name,
            "template_sha256": expansion.flows.template_sha256,
            "fixture_sha256": expansion.flows.fixture_sha256,
            "steps": [step.id for step in expansion.flows.steps],
            "conversation": expansion.flows.conversation,
        },
        "model": {
            "path": None if model.path is None else str(model.path),
            "name": model.name,
            "tiny": model.tiny,
        },
        "versions": {
            "flowperf": flowperf.__version__,
            "python": platform.python_version(),
            "vllm": None,
            "torch": torch_version(),
        },
        "host": {"platform": platform.platform(), "machine": platform.machine()},
        "device": None,
        "git_commit": git_commit(),
        "engine": None,
    }


def with_engine(document: dict[str, Any], engine: EngineInfo) -> dict[str, Any]:
    """`document` completed with what only the running engine knows."""
    versions = document["versions"] | {"vllm": engine.engine_version, "torch": torch_version()}
    return document | {"versions": versions, "device": engine.device, "engine": engine.as_dict()}


@dataclass(frozen=True)
class OpenedRun:
    """A run directory ready for this session: new, or reopened to resume."""

    store: RunStore
    run_id: str
    session: int
    todo: list[ExpandedFlow]


def open_run(
    config: RunConfig, expansion: Expansion, resume_from: Path | None, resumed: dict[str, Any] | None,
    hooks: RunHooks,
) -> OpenedRun:  # fmt: skip
    """Create the run directory, or reopen `resume_from` (`resumed`: its config.json, already proven
    to be the same experiment): the first write of the run, once every input has been checked."""
    flows = expansion.flows
    if resume_from is None or resumed is None:
        run_id = config.output.run_id or new_run_id(flows.name)
        return OpenedRun(RunStore.create(config.output.out_dir, run_id), run_id, 0, list(flows))
    store = RunStore.reopen(resume_from)
    completed = store.completed_flow_indices()
    dropped = store.drop_unfinished_steps(completed)
    todo = [flow for flow in flows if flow.index not in completed]
    hooks.echo(
        f"resuming {resume_from}: {len(completed)} of {len(flows)} workflows done, {len(todo)} to run"
        + (f" ({dropped} step(s) of unfinished workflows discarded)" if dropped else "")
    )
    return OpenedRun(store, str(resumed.get("run_id", store.run_dir.name)), store.next_session(), todo)


def check_resumable(config: RunConfig, resume_from: Path) -> dict[str, Any]:
    """`resume_from`'s config.json, once it is proven to hold the same settings as `config`; read-only,
    and before the flows are expanded, so a refused resume writes nothing anywhere."""
    previous = RunStore(resume_from).read_json(CONFIG)
    check_schema_version(previous, f"--resume {resume_from}")
    if previous.get("config_sha256") != config.fingerprint():
        changed = differences(
            RunConfig.model_validate(previous.get("config", {})).shaping_config(), config.shaping_config()
        )
        raise UserError(f"--resume {resume_from}: settings differ from the run's: {'; '.join(changed)}")
    return previous


def check_same_flows(previous: dict[str, Any], expansion: Expansion, resume_from: Path) -> None:
    """Refuse to resume over flows whose template or fixtures changed since the run started."""
    recorded = previous.get("flow", {})
    flows = expansion.flows
    if (recorded.get("template_sha256"), recorded.get("fixture_sha256")) != (
        flows.template_sha256,
        flows.fixture_sha256,
    ):
        raise UserError(
            f"--resume {resume_from}: the flow template or its fixtures changed since the run started; "
            "start a new run instead"
        )


def run_status(stopped: bool, interrupted: bool) -> RunStatus:
    if interrupted:
        return "interrupted"
    if stopped:
        return "stopped_on_failure"
    return "complete"


def exit_code_for(summary: RunSummary) -> int:
    """Never 0 for a run that measured less than planned because of a failure."""
    if summary.status == "interrupted":
        return EXIT_INTERRUPTED
    if summary.status == "warmup_failed" or summary.counts.workflows_failed:
        return EXIT_SOME_FAILED
    return EXIT_OK


@dataclass
class RunContext:
    """One session of a run, from prepared to finalized: everything the phases hand each other."""

    config: RunConfig
    hooks: RunHooks
    timing: TimingLog
    monitor: ResourceMonitor
    expansion: Expansion
    opened: OpenedRun
    engine: Engine
    runner: Runner
    window: WindowRunner  # what runs the measured window: `runner` itself, or client workers
    sink: MeasuredSink
    periodic: PeriodicSummaries
    summary_context: SummaryContext
    document: dict[str, Any] | None  # config.json to complete once the engine runs; None on resume
    scraper: EngineScraper | None = None  # reading the engines' metrics while the window runs

    @property
    def store(self) -> RunStore:
        return self.opened.store


def expand_flows(
    config: RunConfig, timing: TimingLog, monitor: ResourceMonitor, hooks: RunHooks
) -> tuple[Expansion, float]:
    """The run's flows (from the cache when it holds them) and how long that took, in ms."""
    started = time.perf_counter()
    with monitor.phase("flow_expansion"):
        if config.trace is not None:
            model_dir = local_model_path(config) if config.engine.kind != "openai" else None
            expansion = Expansion(load_trace_workflows(config, model_dir), "trace")
        else:
            template_path = resolve_flow(config.flow, config.flows_dir)
            expansion = expand_with_cache(template_path, config.num_flows, force=False, warn=hooks.warn)
    expansion_ms = (time.perf_counter() - started) * 1000.0
    timing.emit("flow_expansion_ms", expansion_ms, source=expansion.source, flows=len(expansion.flows))
    return expansion, expansion_ms


def run_info(config: RunConfig, expansion: Expansion, run_id: str) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        flow=expansion.flows.name,
        mode="open_loop" if config.open_loop else "closed_loop",
        concurrency=config.effective_concurrency,
        rate_per_s=config.rate,
        engine_kind=config.engine.kind,
        config_sha256=config.fingerprint(),
        warmup_workflows=config.warmup,
        sample_interval_s=config.monitor.sample_interval_s,
        slo=config.output.slo,
    )


def filler_ratio(flows: WorkflowSource, model: ResolvedModel) -> float:
    """Tokens per filler word under the model's tokenizer, measured only for flows that use filler."""
    if not any(step.filler_tokens is not None for step in flows.steps):
        return DEFAULT_TOKENS_PER_WORD
    return tokens_per_word(model.path)


def execution_config(config: RunConfig, opened: OpenedRun, filler_tokens_per_word: float) -> ExecutionConfig:
    return ExecutionConfig(
        run_id=opened.run_id,
        concurrency=config.effective_concurrency,
        rate=config.rate,
        max_tokens=config.max_tokens,
        seed=config.seed,
        save_text=config.output.save_text,
        step_timeout_s=config.step_timeout_s,
        fail_fast=config.fail_fast,
        grace_s=config.grace_s,
        session=opened.session,
        filler_tokens_per_word=filler_tokens_per_word,
        time_scale=config.trace.time_scale
        if config.trace is not None and config.open_loop and config.rate is None
        else None,
    )


@dataclass(frozen=True)
class CheckedInput:
    """Everything the user asked for, proven usable; nothing has been written yet."""

    expansion: Expansion
    expansion_ms: float
    model: ResolvedModel
    resumed: dict[str, Any] | None  # the run's config.json when resuming


def check_input(
    config: RunConfig, hooks: RunHooks, resume_from: Path | None, timing: TimingLog, monitor: ResourceMonitor
) -> CheckedInput:
    """Model path, resume settings, flows, then the model: each check before anything it could write
    (the expansion cache, the tiny model, a torn tail cut on resume), the cheap read-only ones first."""
    if config.engine.kind != "openai":
        local_model_path(config)
    if config.client.executor == "ray":
        check_available(config.client.ray_address)
    resumed = None if resume_from is None else check_resumable(config, resume_from)
    expansion, expansion_ms = expand_flows(config, timing, monitor, hooks)
    if resume_from is not None and resumed is not None:
        check_same_flows(resumed, expansion, resume_from)
    with monitor.phase("model"):
        model = resolve_model(config, timing)
    return CheckedInput(expansion, expansion_ms, model, resumed)


def warn_past_client_ceiling(config: RunConfig, hooks: RunHooks) -> None:
    """An HTTP run whose concurrency is past the client ceiling `bench doctor` measured on this host
    measures the harness as much as the server: say so before it starts."""
    if config.engine.kind == "vllm":
        return
    warning = ceiling_warning(config.effective_concurrency, config.client.workers)
    if warning is not None:
        hooks.warn(warning)


def prepare(
    config: RunConfig,
    hooks: RunHooks,
    resume_from: Path | None,
    engine: Engine | None,
    interrupts: InterruptController | None = None,
) -> RunContext:
    """Input checked, run directory open and config.json written, engine made (not started).

    [TIMING] lines are shown only once the run directory exists: a run refused for bad input prints
    none. The directory's opening is not interruptible: a signal during it takes effect right after, so
    a directory either does not exist or holds a config.json and, at the end, a summary.json.
    """
    shown: DeferredSink[str] = DeferredSink()
    timing = TimingLog(shown)
    metrics: DeferredSink[Any] = DeferredSink()
    monitor = ResourceMonitor(
        metrics,
        interval_s=config.monitor.sample_interval_s,
        children_are_engine=config.engine.kind == "vllm",
    )
    checked = check_input(config, hooks, resume_from, timing, monitor)
    if interrupts is not None:
        interrupts.only_record()
    opened = open_run(config, checked.expansion, resume_from, checked.resumed, hooks)
    shown.attach(hooks.echo)
    warn_past_client_ceiling(config, hooks)
    timing.attach(opened.store.path(TIMING_LOG))
    metrics.attach(opened.store.append_metric)
    document = None
    if resume_from is None:
        document = config_document(config, checked.expansion, checked.model, opened.run_id)
        opened.store.write_json(CONFIG, document)
    return assemble(config, hooks, timing, monitor, checked, opened, engine, document)


def measured_runner(
    config: RunConfig, runner: Runner, engine: Engine, store: RunStore, timing: TimingLog
) -> WindowRunner:
    """The run's own runner, or with client workers a pool of them, each with its own HTTP client to
    the engine this process starts (or reaches) and the run directory to write to."""
    client = config.client
    if client.workers == 1 and client.executor == "process":
        return runner
    if not isinstance(engine, OpenAIHttpEngine):
        raise UserError(f"--workers {client.workers}: the engine given is not an HTTP client")
    return WorkerPool(client, runner, engine, store, timing)


def assemble(
    config: RunConfig, hooks: RunHooks, timing: TimingLog, monitor: ResourceMonitor, checked: CheckedInput,
    opened: OpenedRun, engine: Engine | None, document: dict[str, Any] | None,
) -> RunContext:  # fmt: skip
    """The session's parts around an open run directory: sinks, periodic summaries, engine, runner."""
    expansion = checked.expansion
    summary_context = SummaryContext(
        planned_workflows=len(expansion.flows),
        run=run_info(config, expansion, opened.run_id),
        timings=Timings(flow_expansion_ms=checked.expansion_ms, expansion_source=expansion.source),
    )
    width = expansion.flows.parallel_width()
    engine = engine or make_engine(config, checked.model, opened.store.path(ENGINE_LOG), width)
    filler = filler_ratio(expansion.flows, checked.model)
    runner = Runner(expansion.flows, engine, execution_config(config, opened, filler))
    window = measured_runner(config, runner, engine, opened.store, timing)
    periodic = PeriodicSummaries(
        opened.store,
        config.output.summary_every,
        config.output.summary_interval_s,
        summary_context,
        warn=hooks.warn,
    )
    if periodic.worker_pid is not None:
        monitor.ignore(periodic.worker_pid)

    def workflow_done(record: WorkflowRecord) -> None:
        hooks.on_workflow_done(record)
        periodic.workflow_done()

    sink = MeasuredSink(opened.store, timing, monitor.phase, workflow_done)
    return RunContext(
        config, hooks, timing, monitor, expansion, opened, engine, runner, window, sink, periodic,
        summary_context, document,
    )  # fmt: skip


async def start_engine(run: RunContext) -> None:
    """Start (or reuse) the engine, timed, and record what it really is, and from now on its iterations."""
    already_started = run.engine.started
    started = time.perf_counter()
    with run.monitor.phase("engine_init"):
        await run.engine.start()
    init_ms = (time.perf_counter() - started) * 1000.0
    info = run.engine.info()
    run.timing.emit("engine_init_ms", init_ms, engine=info.engine, reused=already_started or info.reused)
    if "server_pid" in info.details:
        run.monitor.track(info.details["server_pid"])
    run.summary_context.timings.engine_init_ms = init_ms
    run.summary_context.engine = info.as_dict()
    if run.document is not None:
        run.store.write_json(CONFIG, with_engine(run.document, info))
    record_iterations(run.engine, run.store.run_dir / ITERATIONS)


async def warm_up(run: RunContext) -> str | None:
    """The warm-up workflows; why the first of them failed, if one did (a warning unless fail-fast)."""
    config = run.config
    sink = WarmupSink(run.timing)
    with run.monitor.phase("warmup", workflows=config.warmup):
        await run.runner.warm_up(run.expansion.flows.warmup_flows(config.warmup), sink)
    if sink.failure is not None and not config.fail_fast:
        run.hooks.warn(f"{sink.failure}; measuring anyway (--fail-fast stops here instead)")
    return sink.failure


async def measure(run: RunContext, interrupts: InterruptController | None) -> RunStatus:
    """Engine start, warm-up, prefix-cache reset and the measured window; how the session ended."""
    config, runner = run.config, run.runner
    if interrupts is not None:
        interrupts.on_request(None)
        interrupts.raise_if_requested()  # a signal while the run directory was being opened
    run.monitor.start(session=run.opened.session, steps_done=lambda: run.sink.steps_done)
    await start_engine(run)
    await run.periodic.started()
    await spawn_scraper(run)
    if interrupts is not None:
        interrupts.on_request(runner.request_stop)
    failure = await warm_up(run) if config.warmup else None
    if interrupts is not None and interrupts.requested:
        return "interrupted"
    if failure is not None and config.fail_fast:
        run.summary_context.run.warmup_failure = failure
        return "warmup_failed"
    if config.reset_prefix_cache:
        run.summary_context.run.prefix_cache_reset = await run.engine.reset_prefix_cache()
    total = len(run.expansion.flows)
    if interrupts is not None:
        interrupts.on_request(run.window.request_stop)
    if isinstance(run.window, WorkerPool):
        await run.window.start(run.opened.todo)
    run.hooks.on_start(total, total - len(run.opened.todo))
    with run.monitor.phase("measured_window", workflows=len(run.opened.todo)):
        if run.scraper is not None:
            run.scraper.start()
        try:
            stopped = await run.window.run(run.opened.todo, run.sink)
        finally:
            await finish_scraping(run)
    return run_status(stopped, interrupts is not None and interrupts.requested)


async def spawn_scraper(run: RunContext) -> None:
    """The engines' metrics scraper, its process started (and its imports done) before the warm-up, so
    that none of that lands in the measured window; it reads nothing until `start()`."""
    run.scraper = start_scraper(
        run.config.monitor,
        run.engine,
        run.opened.session,
        run.store.path(ENGINE_METRICS),
        run.store.append_engine_metric,
        lambda: getattr(run.window, "window_start", None),
    )
    if run.scraper is not None:
        if run.scraper.remote is not None:  # the harness's helper, not an engine process
            run.monitor.ignore(run.scraper.remote.process.pid)
        await run.scraper.ready()


async def finish_scraping(run: RunContext) -> None:
    """Stop reading the engines' metrics; what it cost this process and how many reads failed go to
    timing.log (the summary counts the gaps from engine_metrics.jsonl)."""
    scraper, run.scraper = run.scraper, None
    stats = await stop_scraper(scraper)
    if stats is None:
        return
    run.timing.emit(
        "server_metrics_cpu_ms",
        stats.cpu_ms,
        scrapes=stats.scrapes,
        failures=stats.failures,
        process_cpu_ms=round(stats.process_cpu_ms, 1),
        window_cpu_ms=round(stats.window_cpu_ms, 1),
    )
    if scraper is not None and scraper.write_error is not None:
        run.hooks.warn(f"engine metrics stopped being written: {scraper.write_error}")


async def execute(run: RunContext, interrupts: InterruptController | None) -> RunStatus:
    """`measure`, with an interruption in any of its phases (a signal raised into a blocking start-up,
    the run's task cancelled while it waited, or an engine that a signal to the whole process group
    killed while it started) ending the session as `interrupted`."""
    try:
        return await measure(run, interrupts)
    except RunInterrupted:
        return "interrupted"
    except asyncio.CancelledError as error:
        if interrupts is None or not interrupts.interrupted_by(error):
            raise
        return "interrupted"
    except EngineError:
        if interrupts is None or not interrupts.requested:
            raise
        return "interrupted"


async def release(run: RunContext, interrupts: InterruptController | None, shutdown_engine: bool) -> None:
    """Whatever ended the session: the last periodic summary written, sampling stopped, the engine shut
    down (unless the caller keeps it), every file closed. A signal meanwhile is only recorded: these
    steps are what leaves the directory consistent."""
    if interrupts is not None:
        interrupts.only_record()
    await run.periodic.finish()
    if run.scraper is not None:  # the window ended by an exception while the scraper still ran
        run.scraper.stop()
    run.monitor.stop()
    record_monitor_failure(run)
    record_iterations(run.engine, None)  # the engine may serve another run next (sweeps, A/B)
    try:
        if shutdown_engine:
            await run.engine.shutdown()
    finally:
        run.store.close()


def record_monitor_failure(run: RunContext) -> None:
    """A sampler that died is said once as a warning and kept in metrics.jsonl, so every summary of the
    directory (this one, a report's) says the session's resource figures stop there."""
    failure = run.monitor.failure
    if failure is None:
        return
    run.hooks.warn(failure)
    with contextlib.suppress(StoreWriteError):
        run.store.append_metric(MonitorErrorRecord(session=run.opened.session, error=failure))


def finalize(run: RunContext, status: RunStatus, interrupts: InterruptController | None = None) -> RunResult:
    """The final summary.json, the closing timing line and any leak warning; a signal that arrived
    while the session was being closed makes the run `interrupted`."""
    summary = build_summary(run.store, status, run.summary_context)
    if interrupts is not None and interrupts.requested and summary.status != "interrupted":
        summary = summary.model_copy(update={"status": "interrupted"})
    run.store.write_json(SUMMARY, summary.to_json())
    run.timing.emit(
        "benchmark_total_ms",
        summary.timing.measured_window_ms,
        avg_workflow_ms=float(summary.latency.workflow_ms.mean or 0.0),
        workflows=summary.counts.workflows_done,
        failed=summary.counts.workflows_failed,
    )
    run.timing.close()
    warning = leak_warning(summary.resources, run.config.monitor.leak_threshold_mb)
    if warning:
        run.hooks.warn(warning)
    return RunResult(run_dir=run.store.run_dir, summary=summary, exit_code=exit_code_for(summary))


async def run_benchmark(
    config: RunConfig,
    hooks: RunHooks,
    *,
    resume_from: Path | None = None,
    interrupts: InterruptController | None = None,
    engine: Engine | None = None,
    shutdown_engine: bool = True,
) -> RunResult:
    """Run (or resume) the benchmark `config` describes and return where its results are.

    `engine` replaces the engine `config` would create (library use, fault injection in tests).
    Interrupted before its run directory exists, it raises RunInterrupted (nothing was written);
    from then on it returns, with summary.json saying how the run ended.
    """
    run = prepare(config, hooks, resume_from, engine, interrupts)
    try:
        status = await execute(run, interrupts)
    finally:
        await release(run, interrupts, shutdown_engine)
    return finalize(run, status, interrupts)
