"""Failure isolation, timeouts, fail-fast, a full disk and resume, on the real engine (faults injected)."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import pytest

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.errors import UserError
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.durable import DurableLog
from flowperf.rundir.records import StepRecord
from flowperf.rundir.store import STEPS, WORKFLOWS, RunStore
from helpers import ROOT, run_bench

pytestmark = pytest.mark.engine


def run_config(tmp_path: Path, run_id: str = "r", **overrides) -> RunConfig:
    return RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "max_tokens": 4,
            "warmup": 0,
            "monitor": {"sample_interval_s": 0},
            "output": {"out_dir": str(tmp_path / "runs"), "run_id": run_id},
        }
        | overrides
    )


def workflow_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / WORKFLOWS).open() as handle:
        return list(csv.DictReader(handle))


def step_lines(run_dir: Path) -> list[StepRecord]:
    """Every line of steps.jsonl as a record; any line that is not a whole record fails the test."""
    return [StepRecord.model_validate_json(line) for line in (run_dir / STEPS).read_text().splitlines()]


def test_failures_are_isolated_and_recorded(engine, engine_loop, tmp_path: Path) -> None:
    faulty = FaultyEngine(engine, fail_flows={1, 3}, fail_step="critique")
    config = run_config(tmp_path, num_flows=5)
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=faulty))
    assert result.exit_code == 3
    rows = workflow_rows(result.run_dir)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "failed", "ok"]
    failed = rows[1]
    assert failed["error_type"] == "EngineError" and "injected failure in flow 1" in failed["error_message"]
    assert failed["steps_ok"] == "1"
    steps = [s for s in step_lines(result.run_dir) if s.flow_index == 1]
    assert [s.status for s in steps] == ["ok", "failed"]  # the third step never ran
    assert steps[1].error_type == "EngineError"
    counts = result.summary.counts
    assert counts.workflows_failed == 2 and counts.failures_by_type == {"EngineError": 2}
    assert result.summary.status == "complete"


def test_fail_fast_stops_at_the_first_failure(engine, engine_loop, tmp_path: Path) -> None:
    faulty = FaultyEngine(engine, fail_flows={2})
    config = run_config(tmp_path, num_flows=6, fail_fast=True)
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=faulty))
    assert result.exit_code == 3
    assert [r["status"] for r in workflow_rows(result.run_dir)] == ["ok", "ok", "failed"]
    assert result.summary.status == "stopped_on_failure"


def test_fail_fast_on_a_failed_warm_up_measures_nothing_and_says_why(
    engine, engine_loop, tmp_path: Path
) -> None:
    """A failed warm-up under --fail-fast ends the run before the measured window: never exit 0."""
    faulty = FaultyEngine(engine, fail_flows={1}, fail_step="critique")
    config = run_config(tmp_path, num_flows=3, warmup=2, fail_fast=True)
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=faulty))
    assert result.exit_code == 3
    assert result.summary.status == "warmup_failed"
    assert result.summary.counts.workflows_done == 0
    assert result.summary.run.warmup_failure == (
        "warm-up workflow 1 failed at step 2 of 3: EngineError: injected failure in flow 1 step critique"
    )
    assert not (result.run_dir / WORKFLOWS).exists()
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["status"] == "warmup_failed" and "injected failure" in on_disk["run"]["warmup_failure"]


def test_a_failed_warm_up_without_fail_fast_warns_and_measures(engine, engine_loop, tmp_path: Path) -> None:
    faulty = FaultyEngine(engine, fail_flows={1}, fail_step="critique")
    warnings: list[str] = []
    config = run_config(tmp_path, num_flows=3, warmup=2)
    hooks = RunHooks(echo=lambda _: None, warn=warnings.append)
    result = engine_loop.run(run_benchmark(config, hooks, engine=faulty))
    assert result.summary.status == "complete" and result.summary.run.warmup_failure is None
    assert result.summary.counts.workflows_done == 3
    assert any(w.startswith("warm-up workflow 1 failed at step 2 of 3") for w in warnings), warnings


def test_a_failed_warm_up_through_the_cli_exits_3_with_its_reason(tmp_path: Path) -> None:
    """Every request of a (mock) server fails: `bench run --fail-fast` says the warm-up failed and why."""
    with serve_in_thread(MockConfig(fault="http_error", ttft_ms=1, itl_ms=1)) as server:
        done = run_bench(
            "run", "--engine", "openai", "--base-url", f"http://127.0.0.1:{server.port}", "-n", "2",
            "--warmup", "1", "--fail-fast", "--max-tokens", "4", "--out", str(tmp_path / "runs"),
            "--run-id", "w", "--no-progress", timeout=120,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "error: nothing was measured: warm-up workflow 0 failed at step 1 of 3: EngineError: HTTP 503" in (
        done.stderr
    )
    summary = json.loads((tmp_path / "runs" / "w" / "summary.json").read_text())
    assert summary["status"] == "warmup_failed" and "HTTP 503" in summary["run"]["warmup_failure"]


def test_step_timeout_fails_the_step(engine, engine_loop, tmp_path: Path) -> None:
    faulty = FaultyEngine(engine, stall_flows={0}, stall_s=30)
    config = run_config(tmp_path, num_flows=2, step_timeout_s=0.5)
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=faulty))
    rows = workflow_rows(result.run_dir)
    assert rows[0]["status"] == "failed" and rows[0]["error_type"] == "StepTimeout"
    assert "--step-timeout-s 0.5" in rows[0]["error_message"]
    assert rows[1]["status"] == "ok"
    assert result.summary.counts.failures_by_type == {"StepTimeout": 1}


def test_full_disk_stops_with_a_clear_error_and_keeps_results(
    engine, engine_loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    appended = {"count": 0}
    real_append = DurableLog.append

    def append_until_full(self: DurableLog, text: str) -> None:
        appended["count"] += 1
        if appended["count"] > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, text)

    monkeypatch.setattr(DurableLog, "append", append_until_full)
    config = run_config(tmp_path, num_flows=6)
    with pytest.raises(
        UserError, match=r"cannot write .* \(No space left on device\); the results written so far"
    ):
        engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=FaultyEngine(engine)))
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "r"
    rows = workflow_rows(run_dir)
    assert rows and all(r["status"] == "ok" for r in rows)
    for step in step_lines(run_dir):
        assert step.status == "ok"
    # and the directory can be resumed to completion once there is space again
    resumed = engine_loop.run(
        run_benchmark(config, RunHooks(echo=lambda _: None), resume_from=run_dir, engine=FaultyEngine(engine))
    )
    assert resumed.exit_code == 0
    assert sorted(int(r["flow_index"]) for r in workflow_rows(run_dir)) == list(range(6))
    assert resumed.summary.counts.workflows_ok == 6


def test_resume_skips_done_workflows_and_reruns_unfinished_ones(engine, engine_loop, tmp_path: Path) -> None:
    config = run_config(tmp_path, num_flows=4)
    first = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=FaultyEngine(engine)))
    run_dir = first.run_dir
    # simulate a crash: the last workflow's row is lost and its steps are left behind, one torn
    lines = (run_dir / WORKFLOWS).read_text().splitlines()
    (run_dir / WORKFLOWS).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    with (run_dir / STEPS).open("a") as steps:
        steps.write('{"flow_index": 3, "step_in')
    faulty = FaultyEngine(engine)
    echoed: list[str] = []
    resumed = engine_loop.run(
        run_benchmark(config, RunHooks(echo=echoed.append), resume_from=run_dir, engine=faulty)
    )
    assert any("3 of 4 workflows done, 1 to run" in line for line in echoed)
    assert faulty.calls == 3  # only flow 3, from its first step
    rows = workflow_rows(run_dir)
    assert sorted(int(r["flow_index"]) for r in rows) == [0, 1, 2, 3]
    keys = [(s.flow_index, s.step_index) for s in step_lines(run_dir)]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12
    assert resumed.summary.counts.workflows_ok == 4
    assert resumed.summary.counts.sessions == 2
    assert resumed.summary.counts.steps_ok == first.summary.counts.steps_ok == 12


def test_resume_refuses_changed_settings(engine, engine_loop, tmp_path: Path) -> None:
    config = run_config(tmp_path, num_flows=2)
    first = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=FaultyEngine(engine)))
    done = run_bench("run", "--resume", str(first.run_dir), "--num-flows", "3", "--no-progress", timeout=60)
    assert done.returncode == 2
    assert "settings differ from the run's: num_flows (2 -> 3)" in done.stderr
    assert "engine_init_ms" not in done.stdout
    not_a_run = run_bench("run", "--resume", str(tmp_path), "--no-progress", timeout=60)
    assert not_a_run.returncode == 2 and "not a run directory" in not_a_run.stderr


def test_reopen_cuts_torn_tails(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / STEPS).write_text('{"flow_index": 0, "session": 0}\n{"flow_in')
    store = RunStore.reopen(run_dir)
    assert (run_dir / STEPS).read_text() == '{"flow_index": 0, "session": 0}\n'
    assert store.drop_unfinished_steps(completed=set()) == 1
    assert (run_dir / STEPS).read_text() == ""


def test_reopen_finds_the_last_complete_line_behind_a_long_torn_tail(tmp_path: Path) -> None:
    """A torn record longer than one read-back chunk, and a file with no complete line at all."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    complete = '{"flow_index": 0, "session": 0}\n'
    (run_dir / STEPS).write_text(complete + '{"text": "' + "x" * 300_000)
    (run_dir / WORKFLOWS).write_text("flow_index,sess")
    RunStore.reopen(run_dir)
    assert (run_dir / STEPS).read_text() == complete
    assert (run_dir / WORKFLOWS).read_text() == ""


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = run_bench("run", "-n", "1", "--out", str(blocker / "runs"), "--no-progress", timeout=60)
    assert done.returncode == 2
    assert f"--out {blocker / 'runs'}: cannot create the run directory" in done.stderr
    assert "Traceback" not in done.stderr
