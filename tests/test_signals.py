"""Signals and crashes against `bench run` in a subprocess on the real engine.

Only processes these tests start are signalled: each `bench run` gets its own process group (its engine
processes are in it too), and that group is what receives Ctrl-C or SIGKILL, as from a terminal.
The SIGKILL trials run against a managed vLLM server (the real engine, started once) so each costs seconds;
`FLOWPERF_KILL_TRIALS` raises their number for nightly runs (default 10) and
`FLOWPERF_KILL_SEED` varies where the kills land (scripts/nightly_faults.sh sets both). A few trials run on
the default in-process engine too (`FLOWPERF_INPROCESS_KILL_TRIALS`, default 3), each checked on its own.
A signal in each phase before the measured window (expansion, model build, engine or server start-up) and
after it (the final summary) is timed by what the phase leaves behind (a pipe opened, a staging
directory, an engine process, a server record), never by a hook in the product.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.engines.server import ServerRegistry
from flowperf.rundir.records import StepRecord
from flowperf.rundir.store import STEPS, SUMMARY, WORKFLOWS, RunStore
from flowperf.rundir.summary_schema import RunSummary
from helpers import BENCH, ROOT, run_bench

pytestmark = [pytest.mark.engine, pytest.mark.slow]

STEPS_PER_WORKFLOW = 3
STARTED: list[subprocess.Popen] = []


class BenchProcess:
    """`bench run` in its own process group, output captured to files."""

    def __init__(
        self, tmp_path: Path, name: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
    ) -> None:
        self.stdout_path = tmp_path / f"{name}.out"
        self.stderr_path = tmp_path / f"{name}.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [*BENCH, "run", "--no-progress", *args],
                cwd=cwd,
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
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


def test_sigkill_during_graph_workflows_then_resume_exactly_once(tmp_path: Path) -> None:
    """map_reduce fans out 4-8 branches per workflow and joins them: a kill lands while branches of
    several workflows are in flight. Each workflow must end counted once, with exactly its own plan's
    step lines, however many kills it lived through (an in-flight graph restarts whole)."""
    rng = random.Random(int(os.environ.get("FLOWPERF_KILL_SEED", "20261129")))
    total, out = 12, tmp_path / "runs"
    run_dir = out / "graph"
    with serve_in_thread(MockConfig(ttft_ms=150, itl_ms=2, lifetime_s=300)) as server:
        fresh = ["--flow", "map_reduce", "-n", str(total), "--concurrency", "2", "--max-tokens", "4",
                 "--warmup", "0", "--engine", "openai", "--base-url", f"http://127.0.0.1:{server.port}",
                 "--out", str(out), "--run-id", "graph"]  # fmt: skip
        for trial in range(5):
            args = ["--resume", str(run_dir)] if (run_dir / "config.json").exists() else fresh
            bench = BenchProcess(tmp_path, f"graph{trial}", *args)
            target = (len(rows(run_dir)) if run_dir.exists() else 0) + rng.randint(1, 2)
            wait_until(lambda target=target: run_dir.exists() and len(rows(run_dir)) >= target, bench)
            time.sleep(rng.uniform(0.05, 0.3))  # inside a fan-out, a join, or a write
            if bench.process.poll() is None:
                bench.signal_group(signal.SIGKILL)
            bench.process.wait()
        final = BenchProcess(tmp_path, "graph-final", "--resume", str(run_dir))
        assert final.wait(300) == 0, final.stderr[-2000:]
    workflows = rows(run_dir)
    assert sorted(int(row["flow_index"]) for row in workflows) == list(range(total))
    steps = RunStore(run_dir).read_steps()
    keys = [(s.flow_index, s.step_index) for s in steps]
    assert len(keys) == len(set(keys))
    for row in workflows:
        own = [s for s in steps if s.flow_index == int(row["flow_index"])]
        assert {s.session for s in own} == {int(row["session"])}
        assert len(own) == int(row["steps"]) == int(row["steps_ok"]) >= 5  # 4+ branches and the join
        assert sorted(s.step_index for s in own) == list(range(int(row["steps"])))
    summary = read_summary(run_dir)
    assert summary.counts.workflows_ok == total and summary.counts.sessions >= 3  # the kills landed


# --- a signal in every phase: exit 130, one line, no traceback, summary.json wherever a directory exists


def interrupted_cleanly(bench: BenchProcess, timeout: float = 60) -> list[str]:
    """The run ended with 130 and no traceback; its stderr lines."""
    assert bench.wait(timeout) == 130, bench.stderr[-3000:]
    assert "Traceback" not in bench.stderr, bench.stderr[-3000:]
    return [line for line in bench.stderr.splitlines() if line.strip()]


def assert_nothing_was_written(bench: BenchProcess, out: Path) -> None:
    lines = interrupted_cleanly(bench)
    assert lines == ["warning: interrupted before the run started; nothing was written"], lines
    assert not out.exists() or not any(out.iterdir())
    assert "[TIMING]" not in bench.stdout


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def assert_no_process_left(bench: BenchProcess, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while left := group_members(bench.process.pid):
        assert time.monotonic() < deadline, [(p.pid, p.name()) for p in left]
        time.sleep(0.2)


@pytest.fixture
def fifo_project(tmp_path: Path) -> tuple[Path, Path]:
    """A project whose flow reads its fixture from a named pipe: expansion blocks until the test writes."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns(".expanded*"))
    shutil.copytree(ROOT / "fixtures", project / "fixtures")
    pipe = project / "fixtures" / "pipe.jsonl"
    os.mkfifo(pipe)
    template = {
        "name": "piped",
        "fixture": {"path": "../fixtures/pipe.jsonl"},
        "steps": [{"id": "one", "prompt": "{{ fixture.title }}"}],
    }
    (project / "flows" / "piped.yaml").write_text(yaml.safe_dump(template))
    return project, pipe


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_during_flow_expansion_writes_nothing(fifo_project, tmp_path: Path, number) -> None:
    project, pipe = fifo_project
    out = tmp_path / "runs"
    bench = BenchProcess(tmp_path, "expanding", "--flow", "piped", "-n", "2", "--out", str(out), cwd=project)
    deadline = time.monotonic() + 60
    while True:  # opening the write end succeeds once `bench` has the read end open: it is expanding
        with contextlib.suppress(OSError):
            writer = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            break
        assert time.monotonic() < deadline and bench.process.poll() is None, bench.stderr
        time.sleep(0.05)
    try:
        time.sleep(0.3)  # now blocked reading the fixture
        bench.signal_group(number)
        assert_nothing_was_written(bench, out)
    finally:
        os.close(writer)
    assert not (project / "flows" / ".expanded_cache.json").exists()


def test_a_signal_during_the_model_build_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "runs"
    bench = BenchProcess(tmp_path, "building", "-n", "2", "--out", str(out), env={"FLOWPERF_HOME": str(home)})
    models = home / "models"
    assert wait_until(lambda: models.is_dir() and any(models.glob(".tiny-llama-*")), bench, timeout=60)
    bench.signal_group(signal.SIGINT)
    assert_nothing_was_written(bench, out)
    assert not any(models.iterdir()), list(models.iterdir())  # no half-built model left behind


def test_a_signal_during_in_process_engine_start_up_ends_the_run_as_interrupted(tmp_path: Path) -> None:
    """Ctrl-C (to the whole group) while vLLM starts its engine core: no process outlives the run."""
    out = tmp_path / "runs"
    bench = BenchProcess(
        tmp_path, "starting", "-n", "4", "--max-tokens", "4", "--out", str(out), "--run-id", "s"
    )
    assert wait_until(lambda: any("EngineCore" in p.name() for p in group_members(bench.process.pid)), bench)
    bench.signal_group(signal.SIGINT)
    lines = interrupted_cleanly(bench)
    assert f"warning: interrupted; continue with: bench run --resume {out / 's'}" in lines
    summary = read_summary(out / "s")
    assert summary.status == "interrupted" and summary.counts.workflows_done == 0
    assert "engine_init_ms" not in bench.stdout
    assert_no_process_left(bench)


def test_sigterm_during_a_managed_server_start_ends_at_once_and_leaves_the_server_tracked(
    tmp_path: Path,
) -> None:
    """The run does not wait for the server (up to its start timeout); the server, starting in a session
    of its own, stays recorded, so later runs reuse it and `bench serve stop` stops it."""
    out = tmp_path / "runs"
    flags = ["--engine", "server", "--max-model-len", "1152"]  # a server configuration only this test uses
    bench = BenchProcess(tmp_path, "server", "-n", "2", "--out", str(out), "--run-id", "m", *flags)
    registry = ServerRegistry()

    def starting() -> list:
        return [record for record in registry.servers() if "1152" in record.argv]

    try:
        assert wait_until(lambda: bool(starting()), bench, timeout=120)
        bench.process.send_signal(signal.SIGTERM)  # like `kill PID`: to the harness alone
        signalled = time.monotonic()
        interrupted_cleanly(bench, timeout=60)
        assert time.monotonic() - signalled < 10
        assert read_summary(out / "m").status == "interrupted"
        (record,) = starting()
        assert psutil.pid_exists(record.pid)
    finally:
        for record in starting():
            registry.stop(record.id)


SIGNAL_IN_FINAL_SUMMARY = """
import os, signal
import flowperf.run.benchmark as benchmark
from flowperf.cli.main import main

build = benchmark.build_summary

def build_and_be_interrupted(store, status, context):
    if status != "running":
        os.kill(os.getpid(), signal.SIGTERM)
    return build(store, status, context)

benchmark.build_summary = build_and_be_interrupted
main()
"""


def test_a_signal_while_the_final_summary_is_built_ends_as_interrupted(tmp_path: Path) -> None:
    """The run itself completed; a signal while its summary is computed still ends it as interrupted."""
    out = tmp_path / "runs"
    with serve_in_thread(MockConfig(ttft_ms=1, itl_ms=1)) as server:
        done = subprocess.run(
            [sys.executable, "-c", SIGNAL_IN_FINAL_SUMMARY, "run", "--engine", "openai", "--base-url",
             f"http://127.0.0.1:{server.port}", "-n", "2", "--max-tokens", "4", "--out", str(out),
             "--run-id", "f", "--no-progress"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    summary = read_summary(out / "f")
    assert summary.status == "interrupted" and summary.counts.workflows_done == 2


def assert_finished_workflows_whole(run_dir: Path) -> None:
    """What a kill leaves: each workflow row once, and each such workflow with every one of its steps,
    once, from the session of its row (steps of unfinished workflows may linger: resume drops them)."""
    finished = {int(row["flow_index"]): int(row["session"]) for row in rows(run_dir)}
    assert len(finished) == len(rows(run_dir)), rows(run_dir)
    steps: dict[int, list[tuple[int, int]]] = {}
    for step in RunStore(run_dir).read_steps():
        steps.setdefault(step.flow_index, []).append((step.step_index, step.session))
    for flow, session in finished.items():
        expected = [(index, session) for index in range(STEPS_PER_WORKFLOW)]
        assert sorted(steps.get(flow, [])) == expected, (flow, steps.get(flow))


def test_sigkill_on_the_in_process_engine_then_resume_exactly_once(tmp_path: Path) -> None:
    """The default engine: each trial starts vLLM in the run's own process (tens of seconds), so there
    are few; `FLOWPERF_INPROCESS_KILL_TRIALS` raises their number (scripts/nightly_faults.sh)."""
    trials = int(os.environ.get("FLOWPERF_INPROCESS_KILL_TRIALS", "3"))
    rng = random.Random(int(os.environ.get("FLOWPERF_KILL_SEED", "20261122")) + 1)
    total = 12
    out = tmp_path / "runs"
    run_dir = out / "inproc"
    fresh = ["-n", str(total), "--max-tokens", "8", "--out", str(out), "--run-id", "inproc", "--warmup", "0"]
    for trial in range(trials):
        if run_dir.exists() and not (run_dir / "config.json").exists():
            shutil.rmtree(run_dir)  # killed between creating the directory and writing its config.json
        args = ["--resume", str(run_dir)] if (run_dir / "config.json").exists() else fresh
        bench = BenchProcess(tmp_path, f"inproc{trial}", *args)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(1.0, 20.0))  # during start-up: imports, expansion, the engine's start
        else:
            wait_until(lambda bench=bench: "engine_init_ms" in bench.stdout, bench)
            target = len(rows(run_dir)) + rng.randint(0, 3)
            wait_until(lambda target=target: len(rows(run_dir)) >= target, bench)
            time.sleep(rng.uniform(0.0, 0.5))  # anywhere inside a step, a write, a workflow
        if bench.process.poll() is None:
            bench.signal_group(signal.SIGKILL)
        bench.process.wait()
        if run_dir.exists():
            assert_finished_workflows_whole(run_dir)
    final = BenchProcess(tmp_path, "inproc-final", "--resume", str(run_dir))
    assert final.wait(300) == 0, final.stderr[-2000:]
    assert_finished_workflows_whole(run_dir)
    assert_exactly_once(run_dir, total)
