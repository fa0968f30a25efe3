"""One `bench run` (or `--resume`), end to end: config → flows → engine → runner → store → summary.

Everything that can be wrong with the user's input is checked before the run directory is created and
before an engine starts; from then on every result is on disk the moment it exists, and whatever ends
the run (completion, failure, Ctrl-C) the engine is shut down and summary.json says how it ended.
"""

from __future__ import annotations

import asyncio
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
from flowperf.deferred import DeferredSink
from flowperf.engines.base import Engine, EngineInfo
from flowperf.engines.openai_http import HttpSettings, OpenAIHttpEngine
from flowperf.engines.server import ManagedServerEngine
from flowperf.engines.tiny import build_tiny_model
from flowperf.engines.vllm_local import get_vllm_engine
from flowperf.errors import UserError
from flowperf.flows import resolve_flow
from flowperf.flows.cache import Expansion, expand_with_cache
from flowperf.flows.expand import ExpandedFlow
from flowperf.interrupts import EXIT_INTERRUPTED, InterruptController, RunInterrupted
from flowperf.monitor import ResourceMonitor
from flowperf.runner import Runner, RunSettings, WorkflowOutcome
from flowperf.store import CONFIG, ENGINE_LOG, SUMMARY, TIMING_LOG, RunStore
from flowperf.summary import build_summary, leak_warning
from flowperf.timing import TimingLog

EXIT_OK = 0
EXIT_SOME_FAILED = 3
HTTP_POOL_WITHOUT_CAP = 256  # connections kept for an open-loop run with no --concurrency cap


@dataclass(frozen=True)
class RunHooks:
    """How a run talks to whoever started it (the CLI's terminal, or a test)."""

    echo: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    on_start: Callable[[int, int], None] = lambda total, already_done: None
    on_workflow_done: Callable[[WorkflowOutcome], None] = lambda outcome: None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    exit_code: int


@dataclass(frozen=True)
class ResolvedModel:
    """The model to serve: a local directory (built tiny model or --model), or for a remote OpenAI
    server only the name it serves (None: whatever it serves first)."""

    path: Path | None
    tiny: bool
    name: str | None = None


def resolve_model(config: RunConfig, timing: TimingLog) -> ResolvedModel:
    """The model directory to load: `--model` if given (must exist locally), else the tiny model."""
    if config.engine.kind == "openai":
        return ResolvedModel(path=None, tiny=False, name=config.engine.model)
    if config.engine.model is None:
        tiny = build_tiny_model(config.fixtures_dir)
        timing.emit("model_build_ms", tiny.build_ms, model="tiny", built=tiny.built)
        return ResolvedModel(path=tiny.path, tiny=True, name=str(tiny.path))
    path = Path(config.engine.model).expanduser()
    if not path.is_dir():
        raise UserError(
            f"--model {config.engine.model}: no such model directory (model hubs are not reachable; "
            "give a local directory with config.json and weights)"
        )
    if not (path / "config.json").is_file():
        raise UserError(f"--model {config.engine.model}: not a model directory (no config.json in it)")
    return ResolvedModel(path=path.resolve(), tiny=False, name=str(path.resolve()))


def make_engine(config: RunConfig, model: ResolvedModel, log_path: Path) -> Engine:
    """The engine `config.engine.kind` names, not started."""
    settings = config.engine
    if settings.kind == "vllm":
        assert model.path is not None
        return get_vllm_engine(settings, model.path, log_path)
    http = HttpSettings(
        base_url=settings.base_url or "",
        model=model.name,
        api=settings.api,
        api_key_env=settings.api_key_env,
        concurrency=config.effective_concurrency or HTTP_POOL_WITHOUT_CAP,
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
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config": config.model_dump(mode="json"),
        "config_sha256": config.fingerprint(),
        "flow": {
            "name": expansion.flows.name,
            "template_sha256": expansion.flows.template_sha256,
            "fixture_sha256": expansion.flows.fixture_sha256,
            "steps": [step.id for step in expansion.flows.steps],
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


class PeriodicSummaries:
    """summary.json during a run: after every `every` workflows, at most once per `interval_s`.

    It is computed from the run's files in a worker thread, so the event loop, and with it every
    request in flight, is never held up by it.
    """

    def __init__(self, store: RunStore, every: int, interval_s: float, summary_args: dict[str, Any]) -> None:
        self._store = store
        self._every = every
        self._interval_s = interval_s
        self._summary_args = summary_args
        self._done = 0
        self._last = time.perf_counter()
        self._task: asyncio.Future[None] | None = None

    def workflow_done(self) -> None:
        self._done += 1
        now = time.perf_counter()
        if self._done % self._every or now - self._last < self._interval_s:
            return
        if self._task is not None and not self._task.done():
            return
        self._last = now
        self._task = asyncio.ensure_future(asyncio.to_thread(self._write))

    def _write(self) -> None:
        self._store.write_json(SUMMARY, build_summary(self._store, status="running", **self._summary_args))

    async def finish(self) -> None:
        """Wait for a summary being written, so the final one is written last."""
        if self._task is not None:
            await self._task


@dataclass(frozen=True)
class OpenedRun:
    """A run directory ready for this session: new, or reopened to resume."""

    store: RunStore
    run_id: str
    session: int
    todo: list[ExpandedFlow]


def open_run(config: RunConfig, expansion: Expansion, resume_from: Path | None, hooks: RunHooks) -> OpenedRun:
    """Create the run directory, or reopen `resume_from` after proving it is the same experiment."""
    flows = expansion.flows
    if resume_from is None:
        run_id = config.output.run_id or new_run_id(flows.name)
        return OpenedRun(RunStore.create(config.output.out_dir, run_id), run_id, 0, list(flows))
    store = RunStore.reopen(resume_from)
    previous = store.read_json(CONFIG)
    if previous.get("config_sha256") != config.fingerprint():
        changed = differences(
            RunConfig.model_validate(previous.get("config", {})).shaping_settings(), config.shaping_settings()
        )
        raise UserError(f"--resume {resume_from}: settings differ from the run's: {'; '.join(changed)}")
    recorded = previous.get("flow", {})
    if (recorded.get("template_sha256"), recorded.get("fixture_sha256")) != (
        flows.template_sha256,
        flows.fixture_sha256,
    ):
        raise UserError(
            f"--resume {resume_from}: the flow template or its fixtures changed since the run started; "
            "start a new run instead"
        )
    completed = store.completed_flow_indices()
    dropped = store.drop_unfinished_steps(completed)
    todo = [flow for flow in flows if flow.index not in completed]
    hooks.echo(
        f"resuming {resume_from}: {len(completed)} of {len(flows)} workflows done, {len(todo)} to run"
        + (f" ({dropped} step(s) of unfinished workflows discarded)" if dropped else "")
    )
    return OpenedRun(store, str(previous.get("run_id", store.run_dir.name)), store.next_session(), todo)


def run_status(stopped: bool, interrupted: bool) -> str:
    if interrupted:
        return "interrupted"
    if stopped:
        return "stopped_on_failure"
    return "complete"


def exit_code_for(summary: dict[str, Any]) -> int:
    if summary["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if summary["counts"]["workflows_failed"] else EXIT_OK


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
    """
    timing = TimingLog(hooks.echo)
    metrics: DeferredSink[dict[str, Any]] = DeferredSink()
    monitor = ResourceMonitor(metrics, interval_s=config.monitor.sample_interval_s)
    template_path = resolve_flow(config.flow, config.flows_dir)
    started = time.perf_counter()
    with monitor.phase("flow_expansion"):
        expansion = expand_with_cache(template_path, config.num_flows, force=False, warn=hooks.warn)
    expansion_ms = (time.perf_counter() - started) * 1000.0
    timing.emit("flow_expansion_ms", expansion_ms, source=expansion.source, flows=len(expansion.flows))
    with monitor.phase("model"):
        model = resolve_model(config, timing)
    opened = open_run(config, expansion, resume_from, hooks)
    store = opened.store
    timing.attach(store.path(TIMING_LOG))
    metrics.attach(store.append_metric)
    document: dict[str, Any] | None = None  # a resumed run keeps the config.json it started with
    if resume_from is None:
        document = config_document(config, expansion, model, opened.run_id)
        store.write_json(CONFIG, document)

    if engine is None:
        engine = make_engine(config, model, store.path(ENGINE_LOG))
    summary_args: dict[str, Any] = {
        "planned_workflows": len(expansion.flows),
        "timings": {"flow_expansion_ms": expansion_ms, "expansion_source": expansion.source},
        "engine": None,
        "run": {
            "run_id": opened.run_id,
            "flow": expansion.flows.name,
            "mode": "open_loop" if config.rate else "closed_loop",
            "concurrency": config.effective_concurrency,
            "rate_per_s": config.rate,
            "engine_kind": config.engine.kind,
            "config_sha256": config.fingerprint(),
            "warmup_workflows": config.warmup,
            "prefix_cache_reset": False,
            "sample_interval_s": config.monitor.sample_interval_s,
        },
    }
    settings = RunSettings(
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
    )
    periodic = PeriodicSummaries(
        store, config.output.summary_every, config.output.summary_interval_s, summary_args
    )

    def workflow_done(outcome: WorkflowOutcome) -> None:
        hooks.on_workflow_done(outcome)
        periodic.workflow_done()

    runner = Runner(expansion.flows, engine, store, timing, settings, workflow_done, phase=monitor.phase)
    stopped = interrupted = False
    monitor.start(session=opened.session, steps_done=lambda: runner.steps_done)
    try:
        if interrupts is not None:
            interrupts.on_request(None)
        already_started = engine.started
        started = time.perf_counter()
        with monitor.phase("engine_init"):
            await engine.start()
        init_ms = (time.perf_counter() - started) * 1000.0
        info = engine.info()
        timing.emit("engine_init_ms", init_ms, engine=info.engine, reused=already_started or info.reused)
        if "server_pid" in info.details:
            monitor.track(info.details["server_pid"])
        summary_args["timings"]["engine_init_ms"] = init_ms
        summary_args["engine"] = info.as_dict()
        if document is not None:
            store.write_json(CONFIG, with_engine(document, info))
        if interrupts is not None:
            interrupts.on_request(runner.request_stop)
        if config.warmup:
            with monitor.phase("warmup", workflows=config.warmup):
                await runner.warm_up(expansion.flows.warmup_flows(config.warmup))
        if config.reset_prefix_cache:
            summary_args["run"]["prefix_cache_reset"] = await engine.reset_prefix_cache()
        hooks.on_start(len(expansion.flows), len(expansion.flows) - len(opened.todo))
        with monitor.phase("measured_window", workflows=len(opened.todo)):
            stopped = await runner.run(opened.todo)
        interrupted = interrupts is not None and interrupts.requested
    except RunInterrupted:
        interrupted = True
    finally:
        if interrupts is not None:
            interrupts.on_request(None)
        await periodic.finish()
        monitor.stop()
        try:
            if shutdown_engine:
                await engine.shutdown()
        finally:
            store.close()
    summary = build_summary(store, status=run_status(stopped, interrupted), **summary_args)
    store.write_json(SUMMARY, summary)
    timing.emit(
        "benchmark_total_ms",
        summary["timing"]["measured_window_ms"],
        avg_workflow_ms=float(summary["latency"]["workflow_ms"]["mean"] or 0.0),
        workflows=summary["counts"]["workflows_done"],
        failed=summary["counts"]["workflows_failed"],
    )
    timing.close()
    warning = leak_warning(summary["resources"], config.monitor.leak_threshold_mb)
    if warning:
        hooks.warn(warning)
    return RunResult(run_dir=store.run_dir, summary=summary, exit_code=exit_code_for(summary))
