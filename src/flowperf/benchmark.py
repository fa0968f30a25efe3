"""One `bench run`, end to end: config → flows → engine → runner → store → summary.

Everything that can be wrong with the user's input is checked before the run directory is created and
before an engine starts; from then on every result is on disk the moment it exists.
"""

from __future__ import annotations

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
from flowperf.config import RunConfig
from flowperf.engines.base import EngineInfo
from flowperf.engines.tiny import build_tiny_model
from flowperf.engines.vllm_local import get_vllm_engine
from flowperf.errors import UserError
from flowperf.flows import resolve_flow
from flowperf.flows.cache import Expansion, expand_with_cache
from flowperf.runner import Runner, RunSettings, WorkflowOutcome
from flowperf.store import CONFIG, ENGINE_LOG, SUMMARY, TIMING_LOG, RunStore
from flowperf.summary import build_summary
from flowperf.timing import TimingLog

EXIT_OK = 0
EXIT_SOME_FAILED = 3


@dataclass(frozen=True)
class RunHooks:
    """How a run talks to whoever started it (the CLI's terminal, or a test)."""

    echo: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    on_start: Callable[[int], None] = lambda total: None
    on_workflow_done: Callable[[WorkflowOutcome], None] = lambda outcome: None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    exit_code: int


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    tiny: bool


def resolve_model(config: RunConfig, timing: TimingLog) -> ResolvedModel:
    """The model directory to load: `--model` if given (must exist locally), else the tiny model."""
    if config.engine.model is None:
        tiny = build_tiny_model(config.fixtures_dir)
        timing.emit("model_build_ms", tiny.build_ms, model="tiny", built=tiny.built)
        return ResolvedModel(path=tiny.path, tiny=True)
    path = Path(config.engine.model).expanduser()
    if not path.is_dir():
        raise UserError(
            f"--model {config.engine.model}: no such model directory (model hubs are not reachable; "
            "give a local directory with config.json and weights)"
        )
    if not (path / "config.json").is_file():
        raise UserError(f"--model {config.engine.model}: not a model directory (no config.json in it)")
    return ResolvedModel(path=path.resolve(), tiny=False)


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


def config_document(
    config: RunConfig, expansion: Expansion, model: ResolvedModel, run_id: str, engine: EngineInfo | None
) -> dict[str, Any]:
    """config.json: the resolved settings, their fingerprint, and everything that identifies the setup."""
    torch_version = getattr(sys.modules.get("torch"), "__version__", None)
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
        "model": {"path": str(model.path), "tiny": model.tiny},
        "versions": {
            "flowperf": flowperf.__version__,
            "python": platform.python_version(),
            "vllm": engine.engine_version if engine else None,
            "torch": torch_version,
        },
        "host": {"platform": platform.platform(), "machine": platform.machine()},
        "device": engine.device if engine else None,
        "git_commit": git_commit(),
        "engine": engine.as_dict() if engine else None,
    }


async def run_benchmark(config: RunConfig, hooks: RunHooks, *, shutdown_engine: bool = True) -> RunResult:
    """Run the benchmark `config` describes and return where its results are."""
    timing = TimingLog(hooks.echo)
    template_path = resolve_flow(config.flow, config.flows_dir)
    started = time.perf_counter()
    expansion = expand_with_cache(template_path, config.num_flows, force=False, warn=hooks.warn)
    expansion_ms = (time.perf_counter() - started) * 1000.0
    timing.emit("flow_expansion_ms", expansion_ms, source=expansion.source, flows=len(expansion.flows))
    model = resolve_model(config, timing)

    run_id = config.output.run_id or new_run_id(expansion.flows.name)
    store = RunStore.create(config.output.out_dir, run_id)
    timing.attach(store.path(TIMING_LOG))
    store.write_json(CONFIG, config_document(config, expansion, model, run_id, engine=None))
    engine = get_vllm_engine(config.engine, model.path, store.path(ENGINE_LOG))
    try:
        reused = engine.started
        started = time.perf_counter()
        await engine.start()
        init_ms = (time.perf_counter() - started) * 1000.0
        timing.emit("engine_init_ms", init_ms, engine="vllm", reused=reused)
        info = engine.info()
        store.write_json(CONFIG, config_document(config, expansion, model, run_id, engine=info))

        settings = RunSettings(
            run_id=run_id,
            concurrency=config.concurrency,
            max_tokens=config.max_tokens,
            seed=config.seed,
            save_text=config.output.save_text,
        )
        timings = {
            "flow_expansion_ms": expansion_ms,
            "expansion_source": expansion.source,
            "engine_init_ms": init_ms,
        }
        summary_args = {
            "planned_workflows": len(expansion.flows),
            "timings": timings,
            "engine": info.as_dict(),
            "run": {
                "run_id": run_id,
                "flow": expansion.flows.name,
                "concurrency": config.concurrency,
                "config_sha256": config.fingerprint(),
            },
        }
        done = 0
        window_start = time.perf_counter()

        def workflow_done(outcome: WorkflowOutcome) -> None:
            nonlocal done
            done += 1
            hooks.on_workflow_done(outcome)
            if done % config.output.summary_every == 0:
                window_ms = (time.perf_counter() - window_start) * 1000.0
                store.write_json(
                    SUMMARY, build_summary(store, status="running", window_ms=window_ms, **summary_args)
                )

        runner = Runner(expansion.flows, engine, store, timing, settings, workflow_done)
        hooks.on_start(len(expansion.flows))
        totals = await runner.run(expansion.flows)
        summary = build_summary(store, status="complete", window_ms=totals.window_ms, **summary_args)
        average = summary["latency"]["workflow_ms"]["mean"] or 0.0
        timing.emit(
            "benchmark_total_ms",
            totals.window_ms,
            avg_workflow_ms=float(average),
            workflows=totals.workflows,
            failed=totals.failed,
        )
        store.write_json(SUMMARY, summary)
    finally:
        if shutdown_engine:
            await engine.shutdown()
        store.close()
        timing.close()
    return RunResult(
        run_dir=store.run_dir,
        summary=summary,
        exit_code=EXIT_SOME_FAILED if totals.failed else EXIT_OK,
    )
