"""`bench ab`: two configurations run interleaved in short blocks, judged on paired block differences.

Why interleave: on a shared machine back-to-back runs of one configuration differ by 8-30% (issue 13), so
a comparison of two whole runs measures the machine's mood as much as the change. Here the arms take turns
in blocks of a few workflows; the blocks come in pairs (one block of each arm, in a seeded random, balanced
order), and each pair is compared on its own (`ab_stats`), so drift slower than a pair cancels.

Each arm is an ordinary run directory (`<ab dir>/a`, `<ab dir>/b`): each block is one *session* of it,
exactly as a `--resume` is, opened with `benchmark.prepare` and measured with `benchmark.execute`, so every
block starts like a run's measured window (the arm's `--warmup` workflows, then an emptied prefix cache),
its records are on disk as they finish, the measured window is the sum of the blocks', and `bench report`,
`bench compare` and `bench run --resume` work on an arm as on any run. `ab.json` beside them holds the
plan, each block (order, session, times, values) and the verdicts, rewritten atomically after every block.

Engines: arms whose engine settings are equal share one engine (the best case: both arms see the same
engine in the same state, and differ only in what they ask of it: flow, max_tokens, concurrency). Arms
that need different engines get one each, both up for the whole session (two managed servers, two base
URLs, or one in-process engine and one server). Two different in-process engines cannot be: vLLM holds one
per process (`engines/vllm_local.py`), so that is refused with the way round it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from typer.exceptions import TyperException

from flowperf.cli.options import ENDPOINT, ENGINE, FLOW, MEASUREMENT, MODEL, ConfigFlags, only, with_options
from flowperf.config import RunConfig, differences, load_run_config
from flowperf.engines.base import Engine
from flowperf.errors import UserError
from flowperf.modes.ab.stats import PairedResult, balanced_orders, paired_comparison
from flowperf.outputs.compare import parse_gate as compare_gate
from flowperf.run.benchmark import (
    CheckedInput,
    RunHooks,
    check_input,
    execute,
    finalize,
    local_model_path,
    make_engine,
    new_run_id,
    prepare,
    release,
)
from flowperf.run.interrupts import InterruptController, RunInterrupted, run_with_interrupts, settle_session
from flowperf.run.monitor import ResourceMonitor
from flowperf.run.timing import TimingLog
from flowperf.rundir.durable import atomic_write_text
from flowperf.rundir.records import WorkflowRecord
from flowperf.rundir.rundata import load_run
from flowperf.rundir.store import SUMMARY
from flowperf.stats import holm_verdicts

AB_FILE = "ab.json"
AB_SCHEMA_VERSION = 1
ARMS = ("A", "B")
ARM_GROUPS = (only(FLOW, "--flow", "--flows-dir"), MODEL, ENDPOINT, ENGINE, MEASUREMENT)
DEFAULT_GATE = ("workflow_p50_ms", "workflow_mean_ms", "ttft_p50_ms", "tpot_p50_ms")
GATE_FAMILIES = (*DEFAULT_GATE, "step_p50_ms")
SHARED_ENGINE = "shared_engine"
TWO_ENGINES = "two_engines"


def parse_arm(flag: str, text: str) -> ConfigFlags:
    """An arm's option string, parsed by the very option definitions `bench run` uses (options.py), so
    an arm takes exactly the flow, model, endpoint, engine and measurement flags, checked the same way."""
    try:
        tokens = shlex.split(text)
    except ValueError as error:
        raise UserError(f"{flag} {text!r}: {error}") from None
    parser = typer.Typer(add_completion=False)

    @parser.command()
    @with_options(*ARM_GROUPS)
    def arm(*, flags: ConfigFlags) -> ConfigFlags:
        return flags

    try:
        return typer.main.get_command(parser).main(args=tokens, prog_name=flag, standalone_mode=False)
    except TyperException as error:
        raise UserError(f"{flag} {text!r}: {error.format_message()}") from None
    except UserError as error:
        raise UserError(f"{flag} {text!r}: {error}") from None


def parse_gate(gate: str | None) -> tuple[str, ...]:
    """`--gate` of `bench ab`: its block metrics, not `bench compare`'s."""
    return compare_gate(gate, DEFAULT_GATE, GATE_FAMILIES)


@dataclass(frozen=True)
class Arm:
    label: str
    options: str
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return self.config.output.out_dir / self.label.lower()


@dataclass(frozen=True)
class AbPlan:
    """Everything `bench ab` was asked for, checked; nothing written yet."""

    arms: tuple[Arm, Arm]
    ab_dir: Path
    pairs: int
    block_workflows: int
    orders: list[str]
    order_seed: int
    mode: str
    alpha: float
    threshold_pct: float
    gate: tuple[str, ...]

    def arm(self, label: str) -> Arm:
        return self.arms[ARMS.index(label)]

    @property
    def schedule(self) -> list[tuple[int, str]]:
        """(pair, arm) in the order the blocks run."""
        return [(pair, label) for pair, order in enumerate(self.orders) for label in order]


def arm_config(
    config_file: Path | None, common: ConfigFlags, own: ConfigFlags, ab_dir: Path, label: str, workflows: int
) -> RunConfig:
    """An arm's settings: defaults, the file, the common flags, then the arm's own; its run directory
    inside the ab directory; no periodic summary worker (each block's end writes summary.json, and a
    worker process per block would cost a CPU-second each time)."""
    overrides = RunConfig.overrides_from_flags(
        common | own | {"num_flows": workflows, "output.out_dir": ab_dir, "output.run_id": label.lower()}
    )
    overrides["output"]["summary_every"] = workflows + 1
    config = load_run_config(config_file, overrides)
    if config.trace is not None:
        session_trace_arm(config, workflows)
    return config


def session_trace_arm(config: RunConfig, workflows: int) -> None:
    """An arm replaying a session trace: each block the next `--block-workflows` sessions, closed loop
    (`--sessions`, else --concurrency, else 1 in flight: recorded start times mean nothing across
    interleaved blocks) unless --rate makes session arrivals Poisson; both arms the same sessions in
    the same order, so a pair's blocks replay the same sessions."""
    from flowperf.sessions.source import require_session_trace

    assert config.trace is not None
    sessions = require_session_trace(config.trace, "bench ab replays session traces only")
    if sessions < workflows:
        raise UserError(
            f"--trace {config.trace.source}: {sessions} sessions, fewer than the {workflows} an arm needs "
            "(--pairs x --block-workflows)"
        )
    if config.trace.sessions is None and config.rate is None:
        config.trace.sessions = config.concurrency or 1


def engine_mode(a: RunConfig, b: RunConfig) -> str:
    """One shared engine when the arms' engine settings are equal, else one each; refuses two different
    in-process engines (one vLLM engine per process) and a server limit that would evict one arm's."""
    if a.engine == b.engine and a.fixtures_dir == b.fixtures_dir:
        return SHARED_ENGINE
    if a.engine.kind == "vllm" and b.engine.kind == "vllm":
        changed = "; ".join(differences(a.engine.model_dump(mode="json"), b.engine.model_dump(mode="json")))
        raise UserError(
            f"--a/--b: the arms need two different in-process engines ({changed or 'fixtures differ'}), and "
            "vLLM holds one per process: add --engine server (two managed servers, both kept up) or "
            "--engine openai with a --base-url per arm"
        )
    servers = [config.engine.max_servers for config in (a, b) if config.engine.kind == "server"]
    if len(servers) == 2 and min(servers) < 2:
        raise UserError("--max-servers: two managed servers must stay up at once; give at least 2")
    return TWO_ENGINES


DEFAULT_PAIRS = 10


def block_pairs(
    pairs: int | None, num_flows: int | None, block_workflows: int, say: Callable[[str], None]
) -> int:
    """The block pairs to run: `--pairs`, or derived from `-n` (workflows per arm, as every other command
    counts them) rounded up to whole blocks, said in one line; not both."""
    if num_flows is None:
        return DEFAULT_PAIRS if pairs is None else pairs
    if pairs is not None:
        raise UserError(f"-n {num_flows} and --pairs {pairs} both size the A/B test; give one")
    derived = -(-num_flows // block_workflows)
    workflows = derived * block_workflows
    rounded = "" if workflows == num_flows else f", rounded up from {num_flows} to whole blocks"
    say(
        f"-n {num_flows}: {derived} block pair(s) of {block_workflows} workflows, so {workflows} workflows "
        f"per arm{rounded}"
    )
    return derived


def build_plan(
    config_file: Path | None, common: ConfigFlags, a_options: str, b_options: str, *, pairs: int,
    block_workflows: int, order_seed: int, alpha: float, threshold_pct: float, gate: str | None,
) -> AbPlan:  # fmt: skip
    """Parse and check everything the command line says, writing nothing."""
    gates = parse_gate(gate)
    own = {"A": parse_arm("--a", a_options), "B": parse_arm("--b", b_options)}
    base = load_run_config(config_file, RunConfig.overrides_from_flags(common))
    ab_dir = base.output.out_dir / (base.output.run_id or new_run_id("ab"))
    if ab_dir.exists():
        raise UserError(f"--run-id {ab_dir.name}: {ab_dir} exists already")
    workflows = pairs * block_workflows
    arms = tuple(
        Arm(label, text, arm_config(config_file, common, own[label], ab_dir, label, workflows))
        for label, text in zip(ARMS, (a_options, b_options), strict=True)
    )
    a, b = arms
    for arm in arms:
        if arm.config.engine.kind != "openai":
            local_model_path(arm.config)
    mode = engine_mode(a.config, b.config)
    return AbPlan((a, b), ab_dir, pairs, block_workflows, balanced_orders(pairs, order_seed), order_seed,
                  mode, alpha, threshold_pct, gates)  # fmt: skip


def check_arms(plan: AbPlan, warn: Callable[[str], None]) -> dict[str, CheckedInput]:
    """Each arm's model path, flows and model proven usable (`benchmark.check_input`, as `bench run`
    does first), so a bad --b is refused before arm A has written anything."""
    checked = {}
    for arm in plan.arms:
        monitor = ResourceMonitor(lambda record: None, interval_s=0)
        hooks = RunHooks(echo=lambda line: None, warn=warn)
        checked[arm.label] = check_input(arm.config, hooks, None, TimingLog(lambda line: None), monitor)
    return checked


def make_engines(plan: AbPlan, checked: dict[str, CheckedInput]) -> dict[str, Engine]:
    """The engine each arm uses (not started: the first block of each starts it, timed in its run). A
    shared engine is made with the arm allowing more requests in flight, so its HTTP pool fits both."""
    if plan.mode == SHARED_ENGINE:
        widest = max(plan.arms, key=lambda arm: arm.config.effective_concurrency or 1_000_000)
        shared = make_engine(widest.config, checked[widest.label].model, plan.ab_dir / "engine.log")
        return dict.fromkeys(ARMS, shared)
    return {
        arm.label: make_engine(
            arm.config, checked[arm.label].model, plan.ab_dir / f"engine-{arm.label.lower()}.log"
        )
        for arm in plan.arms
    }


@dataclass
class Block:
    """One block as ab.json keeps it; times in seconds from the session's start: `start_s` when its
    measured window began (after engine start and warm-up), `end_s` when it ended."""

    pair: int
    arm: str
    position: int
    status: str = "pending"
    session: int | None = None
    flow_indices: list[int] = field(default_factory=list)
    start_s: float | None = None
    end_s: float | None = None
    workflows_ok: int = 0
    workflows_failed: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)


def _median(values: Any) -> float | None:
    values = values.dropna()
    return float(values.median()) if len(values) else None


def block_figures(run_dir: Path, session: int) -> tuple[int, int, dict[str, float | None]]:
    """A block's workflows (ok, failed) and values, from its arm's run directory (never from memory):
    the median and mean workflow time, the median TTFT and TPOT over its steps, each step's median time."""
    run = load_run(run_dir)
    if run.workflows.empty:
        return 0, 0, {}
    block = run.workflows[run.workflows["session"] == session]
    workflows = block[block["status"] == "ok"]
    failed = len(block) - len(workflows)
    steps = run.ok_steps[run.ok_steps["session"] == session] if not run.ok_steps.empty else run.ok_steps
    if workflows.empty:
        return 0, failed, {}
    values: dict[str, float | None] = {
        "workflow_p50_ms": _median(workflows["workflow_ms"]),
        "workflow_mean_ms": float(workflows["workflow_ms"].mean()),
        "ttft_p50_ms": _median(steps["ttft_ms"]),
        "tpot_p50_ms": _median(steps["tpot_ms"]),
    }
    for step_id, rows in steps.groupby("step_id", sort=False):
        values[f"step_p50_ms[{step_id}]"] = _median(rows["step_ms"])
    return len(workflows), failed, values


def _family(metric: str) -> str:
    return metric.split("[", 1)[0]


def analyse(plan: AbPlan, blocks: list[Block]) -> list[PairedResult]:
    """Per metric, the paired comparison over the pairs whose two blocks both completed."""
    by_pair: dict[int, dict[str, Block]] = {}
    for block in blocks:
        if block.status == "complete":
            by_pair.setdefault(block.pair, {})[block.arm] = block
    complete = [pair for pair in sorted(by_pair) if len(by_pair[pair]) == 2]
    names = list(dict.fromkeys(name for block in blocks for name in block.metrics))
    results = [
        paired_comparison(
            name,
            [by_pair[pair]["A"].metrics.get(name) for pair in complete],
            [by_pair[pair]["B"].metrics.get(name) for pair in complete],
            alpha=plan.alpha,
            threshold_pct=plan.threshold_pct,
            gated=_family(name) in plan.gate,
        )
        for name in names
    ]
    return holm_verdicts(results, plan.alpha)


@dataclass
class AbSession:
    """A `bench ab` in progress: its plan, blocks so far, engines, and how it is going."""

    plan: AbPlan
    blocks: list[Block]
    engines: dict[str, Engine]
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    origin: float = field(default_factory=time.perf_counter)
    status: str = "running"

    def clock(self) -> float:
        return round(time.perf_counter() - self.origin, 3)


def ab_document(session: AbSession) -> dict[str, Any]:
    """ab.json: the plan, every block, and the verdicts over the pairs finished so far."""
    plan = session.plan
    a, b = (arm.config for arm in plan.arms)
    results = analyse(plan, session.blocks)
    return {
        "schema_version": AB_SCHEMA_VERSION,
        "ab_id": plan.ab_dir.name,
        "created_at": session.started_at,
        "status": session.status,
        "mode": plan.mode,
        "arms": {
            arm.label: {
                "options": arm.options,
                "run_dir": arm.label.lower(),
                "config_sha256": arm.config.fingerprint(),
            }
            for arm in plan.arms
        },
        "setting_differences": differences(a.shaping_config(), b.shaping_config()),
        "pairs": plan.pairs,
        "block_workflows": plan.block_workflows,
        "order_seed": plan.order_seed,
        "order": plan.orders,
        "blocks": [dataclasses.asdict(block) for block in session.blocks],
        "analysis": {
            "alpha": plan.alpha,
            "threshold_pct": plan.threshold_pct,
            "gate": list(plan.gate),
            "test": "exact Wilcoxon signed-rank over block pairs of log(B/A); Hodges-Lehmann estimate and "
            "the interval inverting the test; Holm over gated metrics",
            "metrics": [
                dataclasses.asdict(result) | {"differences_pct": list(result.differences_pct)}
                for result in results
            ],
        },
        "regressed": [result.metric for result in results if result.regressed],
        "engine_state": {arm.label: arm_engine_state(arm.run_dir) for arm in plan.arms},
    }


def arm_engine_state(run_dir: Path) -> list[dict[str, Any]]:
    """The arm's summary.engine_state over its blocks so far (report only: never gated); empty before
    its first block ends or when its engine was not scraped."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return list(summary.get("engine_state") or [])


def write_document(session: AbSession) -> dict[str, Any]:
    document = ab_document(session)
    atomic_write_text(session.plan.ab_dir / AB_FILE, json.dumps(document, indent=2) + "\n")
    return document


@dataclass(frozen=True)
class AbHooks:
    """How `bench ab` talks to whoever started it (the CLI's terminal, or a test)."""

    warn: Callable[[str], None] = print
    started: Callable[[int], None] = lambda workflows: None
    workflow_done: Callable[[WorkflowRecord], None] = lambda record: None


async def run_block(
    session: AbSession, block: Block, hooks: AbHooks, interrupts: InterruptController | None
) -> None:
    """One block: a session of the arm's run directory (new for its first block, reopened after), its
    measured window limited to the next `block_workflows` workflows; the engine is left running."""
    plan = session.plan
    arm = plan.arm(block.arm)
    resume = arm.run_dir if arm.run_dir.exists() else None

    def window_starts(total: int, done: int) -> None:
        block.start_s = session.clock()

    run_hooks = RunHooks(
        echo=lambda line: None, warn=hooks.warn, on_start=window_starts, on_workflow_done=hooks.workflow_done
    )
    run = prepare(arm.config, run_hooks, resume, session.engines[block.arm], interrupts)
    run.opened = dataclasses.replace(run.opened, todo=run.opened.todo[: plan.block_workflows])
    block.session, block.flow_indices = run.opened.session, [flow.index for flow in run.opened.todo]
    try:
        status = await execute(run, interrupts)
    finally:
        await release(run, interrupts, shutdown_engine=False)
        block.end_s = session.clock()
    block.status = finalize(run, status, interrupts).summary.status
    block.workflows_ok, block.workflows_failed, block.metrics = block_figures(arm.run_dir, block.session)


async def run_blocks(session: AbSession, hooks: AbHooks, interrupts: InterruptController | None) -> None:
    """Every block in the planned order, ab.json rewritten after each; stops at an interruption or a block
    that `--fail-fast` stopped."""
    for block in session.blocks:
        if interrupts is not None and interrupts.requested:
            break
        try:
            await run_block(session, block, hooks, interrupts)
        except RunInterrupted:
            block.status = "interrupted"
        write_document(session)
        if block.status != "complete":
            break


def session_status(blocks: list[Block], interrupts: InterruptController | None) -> str:
    if (interrupts is not None and interrupts.requested) or any(b.status == "interrupted" for b in blocks):
        return "interrupted"
    unfinished = [block.status for block in blocks if block.status != "complete"]
    return unfinished[0] if unfinished else "complete"


async def run_ab(
    plan: AbPlan,
    hooks: AbHooks,
    interrupts: InterruptController | None = None,
    *,
    shutdown_engines: bool = True,
) -> dict[str, Any]:
    """Run the plan's blocks and return ab.json's final content. The ab directory is created only
    once both arms are proven runnable; the engines are shut down whatever ends the session (unless the
    caller keeps them: a test's session engine)."""
    checked = check_arms(plan, hooks.warn)
    plan.ab_dir.mkdir(parents=True)
    blocks = [Block(pair, label, position) for position, (pair, label) in enumerate(plan.schedule)]
    session = AbSession(plan, blocks, make_engines(plan, checked))
    write_document(session)
    hooks.started(2 * plan.pairs * plan.block_workflows)

    async def work() -> str:
        await run_blocks(session, hooks, interrupts)
        return session_status(session.blocks, interrupts)

    def record_status(status: str) -> None:
        session.status = status

    async def close() -> None:
        for engine in {id(engine): engine for engine in session.engines.values()}.values():
            if shutdown_engines:
                await engine.shutdown()
        write_document(session)

    await settle_session(work, record_status, close)
    return ab_document(session)


def run_ab_with_interrupts(plan: AbPlan, hooks: AbHooks) -> dict[str, Any]:
    """`run_ab` with Ctrl-C owned by it: the block in progress stops gracefully, its arm's directory says
    `interrupted` (resumable like any run), ab.json keeps every finished block."""
    return run_with_interrupts(lambda interrupts: run_ab(plan, hooks, interrupts))
