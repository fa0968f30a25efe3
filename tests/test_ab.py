"""`bench ab` end to end: interleaved blocks into two ordinary run directories, paired verdicts, exit
codes, Ctrl-C, and usage errors that write nothing. Real engines: the session's vLLM engine in process,
two mock OpenAI servers for two engines at once, and the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.errors import UserError
from flowperf.modes.ab.run import SHARED_ENGINE, TWO_ENGINES, AbHooks, AbPlan, build_plan, run_ab
from flowperf.outputs.compare import comparability_problems
from flowperf.rundir.rundata import load_run
from helpers import BENCH, ROOT, run_bench


def make_plan(
    tmp_path: Path, a: str = "", b: str = "", *, pairs: int = 8, block_workflows: int = 1, **common: Any
) -> AbPlan:
    """A plan as the CLI would build it. Tests that expect a verdict use blocks of 3 workflows: a block's
    median then ignores one workflow stalled by a loaded machine, which could flip its pair (8 pairs at
    Holm over 4 metrics need all 8 to agree)."""
    flags = {
        "flows_dir": ROOT / "flows",
        "fixtures_dir": ROOT / "fixtures",
        "output.out_dir": tmp_path / "runs",
        "output.run_id": "ab",
        "warmup": 0,
        "monitor.sample_interval_s": 0.0,
    } | common
    return build_plan(None, flags, a, b, pairs=pairs, block_workflows=block_workflows, order_seed=0,
                      alpha=0.05, threshold_pct=5.0, gate=None)  # fmt: skip


def verdicts(document: dict[str, Any]) -> dict[str, str]:
    return {result["metric"]: result["verdict"] for result in document["analysis"]["metrics"]}


def check_arm_directories(plan: AbPlan, document: dict[str, Any]) -> None:
    """Blocks ran in the planned order, each one session of its arm's ordinary run directory, and
    ab.json on disk says what the call returned."""
    assert [(block["pair"], block["arm"]) for block in document["blocks"]] == plan.schedule
    assert json.loads((plan.ab_dir / "ab.json").read_text()) == document
    for arm in plan.arms:
        run = load_run(arm.run_dir)
        assert run.summary is not None and run.summary["status"] == "complete"
        assert sorted(set(run.workflows["session"])) == list(range(plan.pairs))
        assert len(run.ok_workflows) == plan.pairs * plan.block_workflows
        blocks = [block for block in document["blocks"] if block["arm"] == arm.label]
        size = plan.block_workflows
        expected = [list(range(pair * size, (pair + 1) * size)) for pair in range(plan.pairs)]
        assert [block["flow_indices"] for block in blocks] == expected
        assert all(block["start_s"] < block["end_s"] for block in blocks)


def test_two_engines_a_real_slowdown_is_a_regression(tmp_path: Path) -> None:
    """Arm B's server streams tokens twice as far apart (2 vs 4 ms, same 30 ms first-token time): every
    workflow and TPOT metric regresses, TTFT does not, and `regressed` (exit 1) names them."""
    slow, fast = (
        MockConfig(ttft_ms=5, itl_ms=3, lifetime_s=120),
        MockConfig(ttft_ms=5, itl_ms=2, lifetime_s=120),
    )
    with serve_in_thread(fast) as a_server, serve_in_thread(slow) as b_server:
        plan = make_plan(
            tmp_path,
            f"--engine openai --base-url http://127.0.0.1:{a_server.port}",
            f"--engine openai --base-url http://127.0.0.1:{b_server.port}",
            block_workflows=3,
            max_tokens=8,
        )
        assert plan.mode == TWO_ENGINES
        document = asyncio.run(run_ab(plan, AbHooks()))
    check_arm_directories(plan, document)
    judged = verdicts(document)
    assert judged["workflow_p50_ms"] == judged["tpot_p50_ms"] == "regression", judged
    assert judged["ttft_p50_ms"] != "regression", judged
    assert {"workflow_p50_ms", "workflow_mean_ms", "tpot_p50_ms"} <= set(document["regressed"])
    assert "ttft_p50_ms" not in document["regressed"]
    assert document["status"] == "complete" and document["mode"] == TWO_ENGINES


def test_identical_arms_share_one_engine_and_do_not_regress(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=2, lifetime_s=120)) as server:
        endpoint = {"engine.kind": "openai", "engine.base_url": f"http://127.0.0.1:{server.port}"}
        plan = make_plan(tmp_path, max_tokens=8, **endpoint)
        assert plan.mode == SHARED_ENGINE
        document = asyncio.run(run_ab(plan, AbHooks()))
    check_arm_directories(plan, document)
    assert document["regressed"] == []
    assert document["setting_differences"] == []


@pytest.mark.engine
def test_in_process_engine_serves_both_arms(engine, engine_loop, tmp_path: Path) -> None:
    """64-style vs 96-style output lengths in miniature (4 vs 16 tokens) on the one in-process engine:
    found as a regression; each arm is a run directory `bench compare` reads (and refuses to compare
    without --force, naming the difference)."""
    plan = make_plan(tmp_path, "--max-tokens 4", "--max-tokens 16", block_workflows=3)
    assert plan.mode == SHARED_ENGINE
    document = engine_loop.run(run_ab(plan, AbHooks(), shutdown_engines=False))
    assert engine.info().init_count == 1
    check_arm_directories(plan, document)
    assert "workflow_p50_ms" in document["regressed"]
    assert document["setting_differences"] == ["max_tokens (4 -> 16)"]
    a, b = (load_run(arm.run_dir) for arm in plan.arms)
    assert any("max_tokens (4 -> 16)" in problem for problem in comparability_problems(a, b))
    assert set(b.ok_steps["output_tokens"]) == {16}


def test_usage_errors_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    cases = {
        ("--max-tokens 0", ""): "--a '--max-tokens 0': Invalid value for '--max-tokens'",
        ("", "--out elsewhere"): "--b '--out elsewhere': No such option: --out",
        ("", "--run-id x"): "No such option: --run-id",
        ('"open', ""): "No closing quotation",
        ("--eager", "--compiled"): "two different in-process engines",
        ("--model /no/such/model", ""): "--model /no/such/model: no such model directory",
    }
    for (a, b), message in cases.items():
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            make_plan(tmp_path, a, b)
    with pytest.raises(UserError, match="--max-servers"):
        make_plan(tmp_path, "--engine server --max-servers 1", "--engine server --max-servers 1 --eager")
    with pytest.raises(UserError, match="--gate nope"):
        build_plan(None, {}, "", "", pairs=2, block_workflows=1, order_seed=0, alpha=0.05, threshold_pct=5,
                   gate="nope")  # fmt: skip
    (tmp_path / "runs" / "ab").mkdir(parents=True)
    with pytest.raises(UserError, match="exists already"):
        make_plan(tmp_path)
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["ab"]


def test_cli_usage_error_is_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    for arguments in (["--a", "--max-tokens nope"], ["--pairs", "0"], ["--gate", "bogus"]):
        done = run_bench("ab", *arguments, "--out", str(out), "--no-progress", timeout=60)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert done.stdout == ""
    assert not out.exists()


@pytest.mark.engine
@pytest.mark.slow
def test_cli_exit_1_on_regression_with_plain_table_and_html(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    done = run_bench(
        "ab", "--a", "--max-tokens 4", "--b", "--max-tokens 16", "--pairs", "8", "--block-workflows", "1",
        "--warmup", "0", "--out", str(out), "--run-id", "cli", "--html", "--no-progress", timeout=400,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    header = done.stdout.splitlines()[1]
    assert header.split()[:2] == ["metric", "pairs"] and "\x1b[" not in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("workflow_p50_ms"))
    assert "regression" in row and "yes" in row
    assert done.stderr.strip().splitlines()[-1].startswith("regression in gated metric(s): workflow_p50_ms")
    page = (out / "cli" / "ab.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "paired difference" in page
    assert {path.name for path in (out / "cli").iterdir()} >= {"a", "b", "ab.json", "ab.html", "engine.log"}


def completed_blocks(ab_json: Path) -> int:
    return sum(block["status"] == "complete" for block in json.loads(ab_json.read_text())["blocks"])


@pytest.mark.engine
@pytest.mark.slow
def test_ctrl_c_keeps_every_finished_block_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    process = subprocess.Popen(
        [*BENCH, "ab", "--pairs", "50", "--block-workflows", "2", "--max-tokens", "8", "--out", str(out),
         "--run-id", "int", "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    ab_json = out / "int" / "ab.json"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if ab_json.exists() and completed_blocks(ab_json) >= 3:
                break
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    assert [line for line in stderr.splitlines() if "interrupted" in line] == [
        stderr.strip().splitlines()[-1]
    ]
    document = json.loads(ab_json.read_text())
    assert document["status"] == "interrupted"
    done = [block for block in document["blocks"] if block["status"] == "complete"]
    assert len(done) >= 3 and any(block["status"] == "pending" for block in document["blocks"])
    for label in ("a", "b"):
        run = load_run(out / "int" / label)
        ran = [
            block
            for block in document["blocks"]
            if block["arm"].lower() == label and block["session"] is not None
        ]
        assert sum(block["workflows_ok"] for block in ran) == len(run.ok_workflows) > 0
        assert run.summary is not None and run.summary["status"] in ("complete", "interrupted")


@pytest.mark.server
def test_both_arms_replay_the_same_sessions_of_a_session_trace(tmp_path: Path) -> None:
    """`bench ab --trace SESSIONS --sessions 2`: a block is the next 2 sessions, the same ones in both
    arms of a pair, replayed closed loop; arm B's server streams 15x slower (a session's 6 gaps take
    180 ms instead of 12, far beyond a loaded host's noise), so session latency (the workflow metrics)
    regresses and the first token (the same 5 ms) does not."""
    from flowperf.rundir.store import RunStore
    from test_sweep import session_trace

    trace = session_trace(tmp_path, 16)
    fast, slow = (
        MockConfig(ttft_ms=5, itl_ms=2, lifetime_s=120),
        MockConfig(ttft_ms=5, itl_ms=30, lifetime_s=120),
    )
    with serve_in_thread(fast) as a_server, serve_in_thread(slow) as b_server:
        plan = make_plan(
            tmp_path,
            f"--engine openai --base-url http://127.0.0.1:{a_server.port}",
            f"--engine openai --base-url http://127.0.0.1:{b_server.port}",
            block_workflows=2,
            **{"trace.source": str(trace), "trace.sessions": 2},
        )
        document = asyncio.run(run_ab(plan, AbHooks()))
    check_arm_directories(plan, document)
    blocks = {}
    for arm in plan.arms:
        assert arm.config.effective_concurrency == 2 and not arm.config.open_loop
        for step in RunStore(arm.run_dir).read_steps():
            blocks.setdefault((arm.label, step.session), set()).add(step.request_id)
    assert all(blocks[("A", pair)] == blocks[("B", pair)] for pair in range(plan.pairs))
    assert len(set().union(*blocks.values())) == 32  # 16 sessions of 2 requests, each once per arm
    assert {"workflow_p50_ms", "workflow_mean_ms"} <= set(document["regressed"])
    assert "ttft_p50_ms" not in document["regressed"]


def test_an_arm_needs_as_many_sessions_as_its_blocks(tmp_path: Path) -> None:
    from test_sweep import session_trace

    with pytest.raises(UserError, match="3 sessions, fewer than the 8 an arm needs"):
        make_plan(tmp_path, **{"trace.source": str(session_trace(tmp_path, 3))})
