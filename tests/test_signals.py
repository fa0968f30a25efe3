"""Signals and crashes against `bench run` in a subprocess on the real engine.

Only processes these tests start are signalled: each `bench run` gets its own process group (its engine
processes are in it too), and that group is what receives Ctrl-C or SIGKILL, as from a terminal.
The SIGKILL trials run against a managed vLLM server (the real engine, started once) so each costs seconds;
`FLOWPERF_KILL_TRIALS` raises their number for nightly runs (default 10) and
`FLOWPERF_KILL_SEED` varies where the kills land (scripts/nightly_faults.sh sets both).
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from flowperf.engines.server import ServerRegistry
from flowperf.records import StepRecord
from flowperf.store import STEPS, SUMMARY, WORKFLOWS, RunStore
from flowperf.summary_schema import RunSummary
from helpers import BENCH, ROOT, run_bench

pytestmark = [pytest.mark.engine, pytest.mark.slow]

STEPS_PER_WORKFLOW = 3
STARTED: list[subprocess.Popen] = []


class BenchProcess:
    """`bench run` in its own process group, output captured to files."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.stdout_path = tmp_path / f"{name}.out"
        self.stderr_path = tmp_path / f"{name}.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [*BENCH, "run", "--no-progress", *args],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        STARTED.append(self.process)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def signal_group(self, number: int) -> None:
        os.killpg(self.process.pid, number)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"bench run did not end within {timeout}s:\n{self.stderr[-2000:]}") from None


@pytest.fixture(autouse=True)
def kill_leftovers():
    """Whatever a test ends with, no process group it started survives it."""
    yield
    while STARTED:
        process = STARTED.pop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def rows(run_dir: Path) -> list[dict[str, str]]:
    return RunStore(run_dir).read_workflows()


def read_summary(run_dir: Path) -> RunSummary:
    return RunSummary.model_validate_json((run_dir / SUMMARY).read_text())


def wait_until(condition: Callable[[], bool], process: BenchProcess, timeout: float = 180) -> bool:
    """True once `condition` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.process.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s:\n{process.stderr[-2000:]}")


def assert_exactly_once(run_dir: Path, total: int) -> None:
    with (run_dir / WORKFLOWS).open() as handle:
        indices = [int(row["flow_index"]) for row in csv.DictReader(handle)]
    assert sorted(indices) == list(range(total)), indices
    keys = [
        (s.flow_index, s.step_index)
        for s in map(StepRecord.model_validate_json, (run_dir / STEPS).read_text().splitlines())
    ]
    assert len(keys) == len(set(keys)) == total * STEPS_PER_WORKFLOW
    summary = read_summary(run_dir)
    assert summary.status == "complete"
    assert summary.counts.workflows_ok == summary.counts.workflows_done == total
    assert summary.counts.steps_ok == total * STEPS_PER_WORKFLOW


def engine_pids(process: BenchProcess) -> list[int]:
    return [
        child.pid
        for child in psutil.Process(process.process.pid).children(recursive=True)
        if "EngineCore" in child.name() or "Worker" in child.name()
    ]


def test_ctrl_c_stops_gracefully_and_the_run_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "int"
    args = [
        "-n",
        "30",
        "--max-tokens",
        "8",
        "--out",
        str(tmp_path / "runs"),
        "--run-id",
        "int",
        "--grace-s",
        "20",
    ]
    bench = BenchProcess(tmp_path, "first", *args)
    assert wait_until(lambda: len(rows(run_dir)) >= 3, bench)
    bench.signal_group(signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    assert bench.wait(120) == 130, bench.stderr[-2000:]
    assert read_summary(run_dir).status == "interrupted"
    done = rows(run_dir)
    assert 3 <= len(done) < 30
    # in-flight steps were allowed to finish on an engine that Ctrl-C did not kill
    assert all(row["status"] == "ok" for row in done)
    assert f"--resume {run_dir}" in bench.stderr

    resumed = BenchProcess(tmp_path, "resume", "--resume", str(run_dir))
    assert resumed.wait(300) == 0, resumed.stderr[-2000:]
    assert f"{len(done)} of 30 workflows done, {30 - len(done)} to run" in resumed.stdout
    assert_exactly_once(run_dir, 30)


def test_second_ctrl_c_exits_at_once_leaving_a_resumable_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "twice"
    args = [
        "-n",
        "200",
        "--max-tokens",
        "32",
        "--out",
        str(tmp_path / "runs"),
        "--run-id",
        "twice",
        "--grace-s",
        "60",
    ]
    bench = BenchProcess(tmp_path, "twice", *args)
    assert wait_until(lambda: len(rows(run_dir)) >= 1, bench)
    children = engine_pids(bench)
    assert children
    bench.signal_group(signal.SIGINT)
    time.sleep(0.2)
    bench.signal_group(signal.SIGINT)
    started = time.monotonic()
    assert bench.wait(30) == 130
    assert time.monotonic() - started < 5
    # the engine processes notice their parent is gone and exit too
    deadline = time.monotonic() + 30
    while any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in children
    ):
        assert time.monotonic() < deadline, "engine processes outlived the harness"
        time.sleep(0.2)
    store = RunStore.reopen(run_dir)
    assert store.completed_flow_indices()
    for line in (run_dir / STEPS).read_text().splitlines():
        StepRecord.model_validate_json(line)  # every line left is a whole record


@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "exited"])
def test_engine_core_death_fails_the_rest_and_ends_the_run(tmp_path: Path, death: signal.Signals) -> None:
    """A killed core is noticed by vLLM; one that exits cleanly leaves in-flight requests waiting forever
    in vLLM, which the engine's watchdog turns into failures. Either way the run ends, it never hangs."""
    run_dir = tmp_path / "runs" / "dead"
    args = ["-n", "40", "--max-tokens", "16", "--out", str(tmp_path / "runs"), "--run-id", "dead"]
    bench = BenchProcess(tmp_path, "dead", *args)
    assert wait_until(lambda: len(rows(run_dir)) >= 2, bench)
    core = [pid for pid in engine_pids(bench) if "EngineCore" in psutil.Process(pid).name()]
    assert len(core) == 1
    os.kill(core[0], death)
    assert bench.wait(120) == 3, bench.stderr[-2000:]
    summary = read_summary(run_dir)
    assert summary.counts.workflows_done == 40
    assert summary.counts.failures_by_type.get("EngineError", 0) >= 1
    failed = [row for row in rows(run_dir) if row["status"] == "failed"]
    assert failed and all(
        "EngineDeadError: the vLLM engine core process has died" in r["error_message"] for r in failed
    )
    assert all("engine.log" in row["error_message"] for row in failed)


SERVER_FLAGS = [
    "--engine",
    "server",
    "--max-model-len",
    "1280",
]  # a server configuration only these tests use


def test_a_server_whose_starter_was_killed_is_reused_not_orphaned(tmp_path: Path) -> None:
    registry = ServerRegistry()
    starter = subprocess.Popen(
        [*BENCH, "serve", "start", *SERVER_FLAGS[2:]], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    STARTED.append(starter)
    deadline = time.monotonic() + 120
    while not [record for record in registry.servers() if "1280" in record.argv]:
        assert time.monotonic() < deadline and starter.poll() is None
        time.sleep(0.1)
    os.killpg(starter.pid, signal.SIGKILL)  # the starter dies; the server, in its own session, goes on
    starter.wait()
    (record,) = [record for record in registry.servers() if "1280" in record.argv]
    assert not record.ready
    again = run_bench("serve", "start", *SERVER_FLAGS[2:], timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"server {record.id} already running" in again.stdout
    assert [r.id for r in registry.servers() if "1280" in r.argv] == [record.id]


def test_sigkill_at_random_points_then_resume_exactly_once(tmp_path: Path) -> None:
    trials = int(os.environ.get("FLOWPERF_KILL_TRIALS", "10"))
    rng = random.Random(int(os.environ.get("FLOWPERF_KILL_SEED", "20261122")))
    total = 24
    out = tmp_path / "runs"
    run_dir = out / "kill"
    # against a managed server (the real engine, started once before the trials), so that a trial costs
    # seconds rather than an engine start-up; the in-process engine's kills are covered above
    started = run_bench("serve", "start", *SERVER_FLAGS[2:], timeout=600)
    assert started.returncode == 0, started.stderr
    fresh = ["-n", str(total), "--max-tokens", "8", "--out", str(out), "--run-id", "kill", *SERVER_FLAGS]
    for trial in range(trials):
        args = ["--resume", str(run_dir)] if (run_dir / "config.json").exists() else fresh
        bench = BenchProcess(tmp_path, f"trial{trial}", *args)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.5, 3.0))  # often during start-up (imports, expansion, connecting)
        else:
            target = len(rows(run_dir)) + rng.randint(0, 2) if run_dir.exists() else rng.randint(0, 2)
            wait_until(lambda target=target: run_dir.exists() and len(rows(run_dir)) >= target, bench)
            time.sleep(rng.uniform(0.0, 0.3))  # anywhere inside a step, a write, a workflow
        if bench.process.poll() is None:
            bench.signal_group(signal.SIGKILL)
        bench.process.wait()
        # whatever the moment of the kill, what is on disk reads cleanly and holds no duplicate
        if run_dir.exists():
            indices = [int(row["flow_index"]) for row in rows(run_dir)]
            assert len(indices) == len(set(indices))
    final = BenchProcess(tmp_path, "final", "--resume", str(run_dir))
    assert final.wait(300) == 0, final.stderr[-2000:]
    assert_exactly_once(run_dir, total)
    for record in ServerRegistry().servers():
        if "1280" in record.argv:
            ServerRegistry().stop(record.id)
