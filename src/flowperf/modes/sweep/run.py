"""`bench sweep`: one workflow at increasing load on one engine, until it breaks its objectives.

Why: "how much load of this workflow can my deployment take within its latency objectives?" is answered
by a curve, not a run. A sweep starts one engine (in process, a managed server, or an OpenAI URL) and
runs level after level on it (`sweep_levels` decides which; `sweep_measure` runs each as an ordinary run
directory), and writes one durable row per finished level to sweep.jsonl / sweep.csv (`sweep_store`).
With `--slo`, each row says which share of the level's workflows met every objective (`slo`), the
goodput, and the objective missed most; `--find-max` then bisects for the highest sustainable load.

Nothing is written, and no engine started, until every input is checked. `--resume SWEEP_DIR` continues
at the first unfinished level (resumed as a run, if it was interrupted mid-way) with the sweep's own
settings. Ctrl-C stops the level in progress gracefully (its directory says `interrupted`), keeps every
finished row, shuts the engine down, and the sweep is resumable.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowperf.cli.options import GROUPS, ConfigFlags, positive_whole_numbers
from flowperf.config import RunConfig, load_run_config
from flowperf.engines.base import Engine
from flowperf.errors import UserError
from flowperf.modes.sweep.levels import LevelRow, LevelSpec, SweepSpec, knee, max_sustainable, next_level
from flowperf.modes.sweep.measure import level_row, run_level
from flowperf.modes.sweep.store import SWEEP_SCHEMA_VERSION, SweepStore, read_sweep
from flowperf.run.benchmark import RunHooks, check_input, local_model_path, make_engine, new_run_id
from flowperf.run.interrupts import InterruptController, RunInterrupted, run_with_interrupts, settle_session
from flowperf.run.monitor import ResourceMonitor
from flowperf.run.timing import TimingLog
from flowperf.rundir.records import WorkflowRecord
from flowperf.rundir.slo import Objective, parse_slos
from flowperf.rundir.store import CONFIG

DURATION_CAP_WORKFLOWS = 2000  # planned per level with --duration and no -n: the most a level may run
ENGINE_POOL = 256  # HTTP connections for the sweep's one engine (open-loop levels have no cap)
STOPPING_STATUSES = ("warmup_failed", "stopped_on_failure")  # fail-fast ends the sweep there


@dataclass(frozen=True)
class SweepPlan:
    """A sweep, checked: its settings, the base run settings every level shares, where it goes."""

    spec: SweepSpec
    base: RunConfig
    sweep_dir: Path
    objectives: tuple[Objective, ...]
    resumed: bool = False


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--rates {text}: expected comma-separated numbers, e.g. 0.5,1,2,4") from None
    if not rates or any(not rate > 0 or rate == float("inf") for rate in rates):
        raise UserError(f"--rates {text}: rates must be positive workflows per second")
    return rates


def parse_concurrency(text: str) -> list[int]:
    try:
        return positive_whole_numbers(text)
    except ValueError as error:
        raise UserError(f"--concurrency {text}: {error}") from None


@dataclass(frozen=True)
class SweepRequest:
    """The sweep's own options as given (None: not given)."""

    concurrency: str | None = None
    rates: str | None = None
    auto: int | None = None
    saturation_concurrency: int | None = None
    duration_s: float | None = None
    slo: str | None = None
    slo_target: float | None = None
    find_max: bool = False
    tolerance: float | None = None
    max_search_levels: int | None = None

    def given(self) -> list[str]:
        names = {"concurrency": "--concurrency", "rates": "--rates", "auto": "--auto",
                 "saturation_concurrency": "--saturation-concurrency", "duration_s": "--duration",
                 "slo": "--slo", "slo_target": "--slo-target", "tolerance": "--tolerance",
                 "max_search_levels": "--max-search-levels"}  # fmt: skip
        flags = [flag for name, flag in names.items() if getattr(self, name) is not None]
        return flags + (["--find-max"] if self.find_max else [])


def sweep_spec(request: SweepRequest) -> SweepSpec:
    """The levels and objectives asked for; a UserError naming the flag for anything inconsistent."""
    chosen = [flag for flag, value in (("--concurrency", request.concurrency), ("--rates", request.rates),
                                       ("--auto", request.auto)) if value is not None]  # fmt: skip
    if len(chosen) > 1:
        raise UserError(
            f"{chosen[1]}: give one of --concurrency, --rates or --auto, not {' and '.join(chosen)}"
        )
    if not chosen and not request.find_max:
        raise UserError("--concurrency, --rates or --auto: give the sweep's levels (or --find-max)")
    if request.find_max and request.slo is None:
        raise UserError("--find-max: needs --slo (the objectives whose attainment it searches on)")
    if request.slo_target is not None and request.slo is None:
        raise UserError("--slo-target: needs --slo")
    if request.slo is not None:
        parse_slos(request.slo)
    levels = "concurrency" if request.concurrency else "rates" if request.rates else "auto"
    values: dict[str, Any] = {
        "levels": levels,
        "concurrency": parse_concurrency(request.concurrency) if request.concurrency else [],
        "rates": parse_rates(request.rates) if request.rates else [],
        "auto": request.auto or 0,
        "saturation_concurrency": request.saturation_concurrency,
        "duration_s": request.duration_s,
        "slo": request.slo,
        "slo_target": request.slo_target,
        "find_max": request.find_max,
        "tolerance": request.tolerance,
        "max_search_levels": request.max_search_levels,
    }
    return SweepSpec.model_validate({key: value for key, value in values.items() if value is not None})


def base_config(config_file: Path | None, flags: ConfigFlags, spec: SweepSpec) -> RunConfig:
    """Every level's shared settings; with --duration and no -n, levels plan DURATION_CAP_WORKFLOWS."""
    if spec.duration_s is not None and "num_flows" not in flags:
        flags = flags | {"num_flows": DURATION_CAP_WORKFLOWS}
    config = load_run_config(config_file, RunConfig.overrides_from_flags(flags))
    if config.concurrency is not None or config.rate is not None:
        raise UserError(
            f"{config_file}: concurrency and rate are the sweep's levels; remove them from the file"
        )
    if config.trace is not None:
        check_session_trace(config)
    return config


def check_session_trace(config: RunConfig) -> None:
    """A sweep replays session traces only: its levels are sessions in flight or arriving per second
    (a request trace is replayed open loop on its own timestamps by `bench replay`)."""
    from flowperf.sessions.source import require_session_trace

    assert config.trace is not None
    require_session_trace(config.trace, "replay request traces with bench replay")
    if config.trace.sessions is not None:
        raise UserError("trace.sessions: sessions in flight are the sweep's --concurrency levels")


def build_plan(
    config_file: Path | None, flags: ConfigFlags, request: SweepRequest, resume: Path | None
) -> SweepPlan:
    """Check everything the command line says, writing nothing."""
    if resume is not None:
        return resume_plan(config_file, flags, request, resume)
    spec = sweep_spec(request)
    base = base_config(config_file, flags, spec)
    sweep_dir = base.output.out_dir / (base.output.run_id or new_run_id("sweep"))
    if sweep_dir.exists():
        raise UserError(f"--run-id {sweep_dir.name}: {sweep_dir} exists already (--resume to continue it)")
    if base.engine.kind != "openai":
        local_model_path(base)
    return SweepPlan(spec, base, sweep_dir, parse_slos(spec.slo) if spec.slo else ())


def resume_plan(
    config_file: Path | None, flags: ConfigFlags, request: SweepRequest, resume: Path
) -> SweepPlan:
    """A sweep continues with its own settings only: any other option is refused by name."""
    given = [*request.given(), *(["--config"] if config_file is not None else []), *map(flag_of, flags)]
    if given:
        raise UserError(
            f"{given[0]}: --resume continues with the sweep's own settings; give no other options"
        )
    document = read_sweep(resume, "--resume")
    spec = SweepSpec.model_validate(document["spec"])
    base = RunConfig.model_validate(document["config"])
    return SweepPlan(spec, base, Path(resume), parse_slos(spec.slo) if spec.slo else (), resumed=True)


def flag_of(path: str) -> str:
    """The command-line flag that sets a config path (for naming it in an error)."""
    return next((entry.flag for group in GROUPS.values() for entry in group if path in entry.paths), path)


def level_config(plan: SweepPlan, spec: LevelSpec, name: str) -> RunConfig:
    settings = plan.base.model_dump(mode="json")
    settings |= {"concurrency": spec.concurrency, "rate": spec.rate}
    if settings.get("trace") is not None:  # a session trace: a closed-loop level's slots are sessions
        settings["trace"]["sessions"] = spec.concurrency
        settings["concurrency"] = None
    settings["output"] |= {"out_dir": str(plan.sweep_dir), "run_id": name}
    return RunConfig.model_validate(settings)


@dataclass(frozen=True)
class SweepHooks:
    """How a sweep talks to whoever started it (the CLI's terminal, or a test)."""

    echo: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    level_started: Callable[[int, LevelSpec], None] = lambda index, spec: None
    level_done: Callable[[LevelRow], None] = lambda row: None
    workflow_done: Callable[[WorkflowRecord], None] = lambda record: None


@dataclass
class SweepSession:
    plan: SweepPlan
    store: SweepStore
    rows: list[LevelRow]
    engine: Engine
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    status: str = "running"
    origin: float = field(default_factory=time.perf_counter)


def sweep_document(session: SweepSession) -> dict[str, Any]:
    """sweep.json: the settings to resume with, how the sweep ended, and its answers so far."""
    plan, rows = session.plan, session.rows
    knee_index = knee(rows)
    return {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "sweep_id": plan.sweep_dir.name,
        "created_at": session.started_at,
        "status": session.status,
        "spec": plan.spec.model_dump(mode="json"),
        "config": plan.base.model_dump(mode="json"),
        "config_sha256": plan.base.fingerprint(),
        "levels": [row.model_dump(mode="json") for row in rows],
        "knee": None if knee_index is None else rows[knee_index].name,
        "max_sustainable": max_sustainable(plan.spec, rows),
    }


def engine_for(plan: SweepPlan, hooks: SweepHooks) -> Engine:
    """The sweep's one engine, not started (its first level starts it, timed in that run): made for the
    widest level, so an HTTP client pools a connection for every request any level can have in flight."""
    widest = max([ENGINE_POOL, *(2 * c for c in plan.spec.concurrency), plan.spec.saturation_concurrency])
    config = plan.base.model_copy(update={"concurrency": widest, "rate": None})
    monitor = ResourceMonitor(lambda record: None, interval_s=0)
    checked = check_input(config, RunHooks(echo=lambda line: None, warn=hooks.warn), None,
                          TimingLog(lambda line: None), monitor)  # fmt: skip
    width = checked.expansion.flows.parallel_width()  # a flow's, or a session trace's widest session
    return make_engine(config, checked.model, plan.sweep_dir / "engine.log", width)


async def run_next(session: SweepSession, hooks: SweepHooks, interrupts: InterruptController | None) -> bool:
    """Run the next level and append its row; False when the sweep has no level left."""
    plan = session.plan
    spec = next_level(plan.spec, session.rows)
    if spec is None:
        return False
    index = len(session.rows)
    name = spec.name(index)
    level_dir = plan.sweep_dir / name
    resume = level_dir if (level_dir / CONFIG).is_file() else None
    hooks.level_started(index, spec)

    def echo(line: str) -> None:
        if line.startswith("resuming"):
            hooks.echo(line)

    outcome = await run_level(level_config(plan, spec, name), spec, session.engine, resume,
                              plan.spec.duration_s, interrupts, echo, hooks.workflow_done)  # fmt: skip
    if outcome.summary.status == "interrupted":
        raise RunInterrupted("level interrupted")
    row = level_row(index, spec, outcome, plan.objectives, plan.spec.slo_target)
    session.store.append(row)
    session.rows.append(row)
    hooks.level_done(row)
    return row.status not in STOPPING_STATUSES


def final_status(session: SweepSession) -> str:
    last = session.rows[-1].status if session.rows else None
    return last if last in STOPPING_STATUSES else "complete"


async def run_sweep(
    plan: SweepPlan,
    hooks: SweepHooks,
    interrupts: InterruptController | None = None,
    *,
    engine: Engine | None = None,
    shutdown_engine: bool = True,
) -> dict[str, Any]:
    """Run the plan's levels (from the first unfinished one) and return sweep.json's final content.

    `engine` replaces the one the plan would make (a test's session engine); it is shut down at the end
    unless the caller keeps it.
    """
    engine = engine or engine_for(plan, hooks)
    store = SweepStore(plan.sweep_dir)
    if plan.resumed:
        rows = store.repair()
    else:
        plan.sweep_dir.mkdir(parents=True)
        rows = []
    session = SweepSession(plan, store, rows, engine)
    store.write_document(sweep_document(session))

    async def work() -> str:
        while await run_next(session, hooks, interrupts):
            if interrupts is not None and interrupts.requested:
                raise RunInterrupted("signal received")
        return final_status(session)

    def record_status(status: str) -> None:
        session.status = status

    async def close() -> None:
        try:
            if shutdown_engine:
                await engine.shutdown()
        finally:
            store.write_document(sweep_document(session))

    await settle_session(work, record_status, close)
    return sweep_document(session)


def run_sweep_with_interrupts(plan: SweepPlan, hooks: SweepHooks) -> dict[str, Any]:
    """`run_sweep` with Ctrl-C owned by it: the level in progress stops gracefully (its directory says
    `interrupted`, resumable like any run), the finished rows stay, the sweep is resumable."""
    return run_with_interrupts(lambda interrupts: run_sweep(plan, hooks, interrupts))
