"""`bench sweep` end to end: levels as ordinary run directories on one engine, durable rows, SLO
attainment timed against a deterministic server, early stop at saturation, resume after Ctrl-C, sweep
comparisons, and usage errors that write nothing. Real engines: the session's vLLM engine, the mock
OpenAI server, and the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.engines.base import GenerationParams, StepResult
from flowperf.errors import UserError
from flowperf.modes.sweep.run import (
    SweepHooks,
    SweepPlan,
    SweepRequest,
    build_plan,
    engine_for,
    run_sweep,
    run_sweep_with_interrupts,
)
from flowperf.modes.sweep.store import read_rows
from flowperf.outputs.compare import compare_sweeps
from flowperf.rundir.records import WorkflowRecord
from flowperf.rundir.rundata import load_run
from helpers import ROOT

SWEEP_BENCH = [
    sys.executable,
    "-c",
    "from flowperf.cli import main as cli\nfrom flowperf.cli.sweep import sweep\n"
    "from flowperf.cli.options import HtmlCommand\n"
    "if not any(c.name == 'sweep' for c in cli.app.registered_commands):\n"
    "    cli.app.command('sweep', cls=HtmlCommand)(sweep)\n"
    "cli.main()",
]
QUIET = SweepHooks(echo=lambda line: None, warn=lambda line: None)


def base_flags(tmp_path: Path, run_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "flows_dir": ROOT / "flows",
        "fixtures_dir": ROOT / "fixtures",
        "output.out_dir": tmp_path / "runs",
        "output.run_id": run_id,
        "warmup": 0,
        "monitor.sample_interval_s": 0.0,
        "num_flows": 4,
        "max_tokens": 4,
    } | extra


def mock_flags(tmp_path: Path, run_id: str, port: int, **extra: Any) -> dict[str, Any]:
    endpoint = {"engine.kind": "openai", "engine.base_url": f"http://127.0.0.1:{port}"}
    return base_flags(tmp_path, run_id, **endpoint | extra)


def plan_for(flags: dict[str, Any], **request: Any) -> SweepPlan:
    return build_plan(None, flags, SweepRequest(**request), None)


def test_slo_attainment_follows_the_mock_servers_ttft(tmp_path: Path) -> None:
    """Every first token comes 50 ms after the request: ttft_p99_ms=40 is met by no workflow, 60 by every
    one; goodput is then every workflow over the measured window."""
    with serve_in_thread(MockConfig(ttft_ms=50, itl_ms=2, lifetime_s=120)) as server:
        documents = {
            limit: asyncio.run(run_sweep(plan_for(mock_flags(tmp_path, f"ttft{limit}", server.port),
                                                  concurrency="1,2", slo=f"ttft_p99_ms={limit}"), QUIET))
            for limit in (40, 60)
        }  # fmt: skip
    for limit, attainment in ((40, 0.0), (60, 1.0)):
        document = documents[limit]
        assert document["status"] == "complete"
        sweep_dir = tmp_path / "runs" / f"ttft{limit}"
        rows = read_rows(sweep_dir)
        assert [(row.mode, row.concurrency) for row in rows] == [("closed_loop", 1), ("closed_loop", 2)]
        assert [row.attainment for row in rows] == [attainment, attainment]
        for row in rows:
            assert row.workflows == 4 and row.goodput_per_s == pytest.approx(
                4 * attainment / row.window_s, rel=1e-3
            )
            assert row.failing_objective == (None if attainment else "ttft_p99_ms")
            assert row.objectives["ttft_p99_ms"]["level_value_ms"] == pytest.approx(50, abs=8)
            run = load_run(sweep_dir / row.name)  # an ordinary run directory
            assert run.summary is not None and run.summary["status"] == "complete"
            assert run.config["config"]["concurrency"] == row.concurrency
        with open(sweep_dir / "sweep.csv", newline="") as handle:
            table = list(csv.DictReader(handle))
        assert [float(line["attainment"]) for line in table] == [attainment, attainment]
        assert json.loads((sweep_dir / "sweep.json").read_text())["levels"] == document["levels"]


class SerialEngine:
    """The mock server behind a lock: one step at a time, so the deployment's capacity is known and an
    open loop above it saturates."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lock: asyncio.Lock | None = None

    @property
    def started(self) -> bool:
        return self.inner.started

    async def start(self) -> None:
        await self.inner.start()

    async def generate(self, prompt: Any, params: GenerationParams, request_id: str) -> StepResult:
        self.lock = self.lock or asyncio.Lock()
        async with self.lock:
            return await self.inner.generate(prompt, params, request_id)

    async def reset_prefix_cache(self) -> bool:
        return await self.inner.reset_prefix_cache()

    def info(self) -> Any:
        return self.inner.info()

    async def shutdown(self) -> None:
        await self.inner.shutdown()


def test_a_saturated_open_loop_level_is_stopped_early_and_counts_what_it_abandoned(tmp_path: Path) -> None:
    """One 20 ms step at a time (3 steps: ~15 workflows/s at most) offered 2/s, then 60/s, for 7 s each:
    the first keeps up and ends at --duration, the second is stopped once clearly saturated (after 5 s at
    the earliest: 3 s, then 4 checks of a growing queue)."""
    with serve_in_thread(MockConfig(ttft_ms=20, itl_ms=1, lifetime_s=120)) as server:
        flags = mock_flags(tmp_path, "sat", server.port, num_flows=600, max_tokens=2, grace_s=0.5)
        plan = plan_for(flags, rates="2,60", slo="workflow_p95_ms=2000", duration_s=7.0)
        document = asyncio.run(run_sweep(plan, QUIET, engine=SerialEngine(engine_for(plan, QUIET))))
    easy, hard = read_rows(plan.sweep_dir)
    assert easy.stopped_early is not None and easy.stopped_early.startswith("duration")
    assert easy.status == "complete" and easy.abandoned == 0 and easy.meets_target
    assert easy.window_s < 9.0 and 6 <= easy.workflows <= 28
    assert hard.stopped_early is not None and hard.stopped_early.startswith("saturated"), hard.stopped_early
    assert hard.status == "partial" and hard.window_s < 7.5
    assert hard.abandoned > 0 and not hard.meets_target and hard.achieved_per_s < 0.7 * 60
    # attainment worked out from the level's own workflows.csv: ok workflows within 2000 ms of their
    # scheduled arrival, over every workflow that finished or was abandoned
    rows = list(csv.DictReader((plan.sweep_dir / hard.name / "workflows.csv").read_text().splitlines()))
    good = sum(
        row["status"] == "ok" and float(row["end_offset_ms"]) - float(row["arrival_offset_ms"]) <= 2000
        for row in rows
    )
    assert len(rows) == hard.workflows
    assert hard.attainment == pytest.approx(good / (hard.workflows + hard.abandoned))
    assert document["max_sustainable"]["bracket"] == [2.0, 60.0]


def test_resume_after_ctrl_c_continues_at_the_interrupted_level(tmp_path: Path) -> None:
    """Ctrl-C during level 1: level 0's row stays, level 1's directory says interrupted; --resume runs
    the rest of level 1 as a run resume (a second session) and then level 2, leaving level 0 alone."""
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=2, lifetime_s=120)) as server:
        plan = plan_for(mock_flags(tmp_path, "resumed", server.port, num_flows=6), concurrency="1,2,3",
                        slo="workflow_max_ms=10000")  # fmt: skip
        seen: list[WorkflowRecord] = []

        def interrupt_in_level_1(record: WorkflowRecord) -> None:
            seen.append(record)
            if len(seen) == 8:  # the second workflow of level 1
                os.kill(os.getpid(), signal.SIGINT)

        hooks = SweepHooks(echo=lambda line: None, warn=lambda line: None, workflow_done=interrupt_in_level_1)
        document = run_sweep_with_interrupts(plan, hooks)
        assert document["status"] == "interrupted"
        assert [row.name for row in read_rows(plan.sweep_dir)] == ["level-00-c1"]
        level_1 = load_run(plan.sweep_dir / "level-01-c2")
        assert level_1.summary is not None and level_1.summary["status"] == "interrupted"
        assert 2 <= len(level_1.workflows) < 6
        echoed: list[str] = []
        resumed = build_plan(None, {}, SweepRequest(), plan.sweep_dir)
        final = run_sweep_with_interrupts(resumed, SweepHooks(echo=echoed.append, warn=lambda line: None))
    assert final["status"] == "complete"
    rows = read_rows(plan.sweep_dir)
    assert [row.name for row in rows] == ["level-00-c1", "level-01-c2", "level-02-c3"]
    assert all(row.workflows == 6 and row.attainment == 1.0 for row in rows)
    assert any(line.startswith(f"resuming {plan.sweep_dir / 'level-01-c2'}") for line in echoed)
    assert set(load_run(plan.sweep_dir / "level-01-c2").workflows["session"]) == {0, 1}
    assert set(load_run(plan.sweep_dir / "level-00-c1").workflows["session"]) == {0}
    assert len((plan.sweep_dir / "sweep.csv").read_text().splitlines()) == 4


@pytest.mark.engine
def test_levels_share_the_in_process_engine(engine, engine_loop, tmp_path: Path) -> None:
    plan = plan_for(base_flags(tmp_path, "vllm", num_flows=2), concurrency="1,2", slo="workflow_p95_ms=60000")
    document = engine_loop.run(run_sweep(plan, QUIET, engine=engine, shutdown_engine=False))
    assert engine.info().init_count == 1 and document["status"] == "complete"
    rows = read_rows(plan.sweep_dir)
    assert [(row.concurrency, row.workflows, row.attainment) for row in rows] == [(1, 2, 1.0), (2, 2, 1.0)]
    for row in rows:
        summary = load_run(plan.sweep_dir / row.name).summary
        assert summary is not None and summary["run"]["prefix_cache_reset"] is True
        assert row.latency_p50_ms is not None and row.ttft_p50_ms is not None
    assert document["knee"] in {row.name for row in rows}


def test_compare_two_sweeps_level_by_level(tmp_path: Path) -> None:
    """Tokens 3x further apart in the new sweep: a regression at each matching level (the two servers'
    URLs are named as a difference, as for two runs); a run directory against a sweep is refused."""
    sweeps = {}
    for name, itl in (("fast", 2), ("slow", 6)):
        with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=itl, lifetime_s=120)) as server:
            plan = plan_for(mock_flags(tmp_path, name, server.port, num_flows=12, max_tokens=8),
                            concurrency="1,2")  # fmt: skip
            asyncio.run(run_sweep(plan, QUIET))
            sweeps[name] = plan.sweep_dir
    gate = ("workflow_ms", "tokens_per_s")
    comparison = compare_sweeps(
        sweeps["fast"], sweeps["slow"], alpha=0.05, threshold_pct=5, gate=gate, seed=0
    )
    assert [level.offered for level in comparison.levels] == ["c=1", "c=2"]
    assert len(comparison.problems) == 2 and all("engine.base_url" in p for p in comparison.problems)
    assert all("workflow_ms" in level.regressed for level in comparison.levels)
    same = compare_sweeps(sweeps["fast"], sweeps["fast"], alpha=0.05, threshold_pct=5, gate=gate, seed=0)
    assert same.regressed == []
    with pytest.raises(UserError, match=r"NEW_RUN .*: not a sweep directory"):
        compare_sweeps(sweeps["fast"], sweeps["fast"] / "level-00-c1", alpha=0.05, threshold_pct=5, gate=gate,
                       seed=0)  # fmt: skip


def run_sweep_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWEEP_BENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip


def test_the_command_runs_a_sweep_and_writes_html(tmp_path: Path) -> None:
    flows = ["--flows-dir", str(ROOT / "flows"), "--fixtures-dir", str(ROOT / "fixtures")]
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=1, lifetime_s=120)) as server:
        done = run_sweep_cli("sweep", "--engine", "openai", "--base-url", f"http://127.0.0.1:{server.port}",
                             *flows, "-n", "3", "--max-tokens", "4", "--warmup", "0", "--rates", "2,4",
                             "--slo", "workflow_p95_ms=5000", "--out", "runs", "--run-id", "cli", "--html",
                             cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        again = run_sweep_cli("sweep", "--resume", "runs/cli", "--json", cwd=tmp_path)
    timing = [
        line.split()[1].split("=")[0] for line in done.stdout.splitlines() if line.startswith("[TIMING]")
    ]
    assert timing == ["level-00-r2_ms", "level-01-r4_ms"]
    assert "max sustainable load: 4 workflows/s" in done.stdout
    assert (tmp_path / "runs" / "cli" / "sweep.html").read_text().count("data:image/png;base64") == 2
    assert again.returncode == 0 and len(json.loads(again.stdout)["levels"]) == 2  # nothing run again


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "1,2", "--slo", "bogus_p95_ms=1"], "--slo: unknown objective 'bogus_p95_ms'"),
        (["--concurrency", "1,x"], "--concurrency 1,x: expected comma-separated whole numbers"),
        (["--rates", "1,-2"], "--rates 1,-2: rates must be positive"),
        (
            ["--rates", "1", "--concurrency", "2"],
            "--rates: give one of --concurrency, --rates or --auto, not --concurrency and --rates",
        ),
        (["--auto", "2", "--find-max"], "--find-max: needs --slo"),
        ([], "--concurrency, --rates or --auto: give the sweep's levels"),
        (["--resume", "runs/nothing"], "--resume runs/nothing: not a sweep directory"),
        (["--resume", "runs/x", "--max-tokens", "4"], "--max-tokens: --resume continues with the sweep's"),
        (
            ["--resume", "runs/nothing", "--slo", "ttft_p99_ms=1"],
            "--slo: --resume continues with the sweep's own",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    where = [] if "--resume" in args else ["--out", "runs", "--run-id", "bad"]
    done = run_sweep_cli("sweep", *where, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists() and done.stdout == ""


def test_a_duration_window_counts_from_the_windows_own_start(tmp_path: Path, monkeypatch) -> None:
    """Templates that take 1.5 s to compile (they compile as the window opens) must not eat into a 2 s
    --duration: the level's watch starts on the window's clock, so the measured window (first step
    submitted to last step finished) is about 2 s, not 0.5 s. The margin (1 s) is far above scheduling
    noise on shared cores."""
    from flowperf.flows.expand import ExpandedFlowSet

    compile_templates = ExpandedFlowSet.compile_templates

    def slow_compile(self: Any) -> None:
        time.sleep(1.5)
        compile_templates(self)

    monkeypatch.setattr(ExpandedFlowSet, "compile_templates", slow_compile)
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=1, lifetime_s=60)) as server:
        flags = mock_flags(tmp_path, "dur", server.port, num_flows=2000, max_tokens=2, grace_s=0.5)
        asyncio.run(run_sweep(plan_for(flags, concurrency="1", duration_s=2.0), QUIET))
    (row,) = read_rows(tmp_path / "runs" / "dur")
    assert row.stopped_early is not None and row.stopped_early.startswith("duration")
    assert 1.5 <= row.window_s < 4.0, row.window_s


def session_trace(tmp_path: Path, count: int) -> Path:
    """`count` sessions of two turns (the second after a 5 ms pause), all recorded at once."""
    from flowperf.sessions.format import TraceHeader, TraceRequest, write_trace

    requests = []
    for k in range(count):
        first = TraceRequest(session=f"s{k}", id=f"s{k}-1", start_ms=0, prompt_tokens=40, output_tokens=4,
                             hash_ids=[1, k])  # fmt: skip
        second = first.model_copy(update={"id": f"s{k}-2", "needs": [f"s{k}-1"], "think_ms": 5.0,
                                          "prompt_tokens": 70, "hash_ids": [1, k, 2]})  # fmt: skip
        requests += [first, second]
    path = tmp_path / "sessions.jsonl"
    write_trace(path, TraceHeader(block_size=32, hash_scope="global", source="synthetic"), requests)
    return path


@pytest.mark.server
def test_a_sweep_of_a_session_trace_levels_sessions_in_flight(tmp_path: Path) -> None:
    """`bench sweep --trace SESSIONS --concurrency 1,3`: each level replays every session closed loop
    with that many in flight; its latency is the sessions' (the level's own `sessions` summary) and its
    SLO attainment and goodput count sessions meeting `session_p95_ms`."""
    trace = session_trace(tmp_path, 6)
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=1, lifetime_s=120)) as server:
        flags = mock_flags(tmp_path, "sessions", server.port, **{"trace.source": str(trace)})
        plan = plan_for(flags, concurrency="1,3", slo="session_p95_ms=60000")
        document = asyncio.run(run_sweep(plan, QUIET))
    assert document["status"] == "complete"
    rows = read_rows(tmp_path / "runs" / "sessions")
    assert [(row.mode, row.concurrency, row.workflows) for row in rows] == [
        ("closed_loop", 1, 6),
        ("closed_loop", 3, 6),
    ]
    for row in rows:
        run = load_run(tmp_path / "runs" / "sessions" / row.name)
        assert run.summary is not None and run.summary["run"]["concurrency"] == row.concurrency
        assert run.config["config"]["trace"]["sessions"] == row.concurrency
        sessions = run.summary["sessions"]
        assert (sessions["sessions_ok"], sessions["requests"]) == (6, 12)
        assert row.latency_p95_ms == pytest.approx(sessions["session_latency_ms"]["p95"], rel=1e-6)
        assert row.attainment == 1.0 and row.goodput_per_s == pytest.approx(6 / row.window_s, rel=1e-3)
    assert rows[1].achieved_per_s > rows[0].achieved_per_s  # three sessions at once, not one


def test_a_sweep_refuses_a_request_trace(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--trace mooncake: not a session trace"):
        plan_for(base_flags(tmp_path, "x", **{"trace.source": "mooncake"}), concurrency="1")
