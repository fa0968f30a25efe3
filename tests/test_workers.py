"""Client workers (`--workers N`, `--executor process|ray`) against the deterministic mock server.

What must hold: every session is run once by the worker that owns it; the workers send the one schedule
the coordinator drew, from one window start (checked against the server's own arrival clock, not the
harness's); the run directory is one ordinary directory; exactly-once survives SIGKILL and resume; a
worker dies with its coordinator; a worker that dies alone fails the run with its reason.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowperf.config import RunConfig
from flowperf.diagnostics.mockserver import MockConfig, MockOpenAIServer, serve_in_thread
from flowperf.flows.expand import ExpandedFlow
from flowperf.run.benchmark import RunResult
from flowperf.run.timing import parse_timing_line
from flowperf.rundir.durable import DurableLog, read_complete_lines
from flowperf.rundir.store import TIMING_LOG, RunStore
from flowperf.stats import poisson_arrivals
from flowperf.workers.clock import align
from flowperf.workers.plan import share_out, slot_share
from helpers import run_bench, run_in_process
from test_signals import BenchProcess, read_summary, rows, wait_until

MOCK = MockConfig(ttft_ms=20, itl_ms=2, lifetime_s=300)


def flows(count: int) -> list[ExpandedFlow]:
    return [ExpandedFlow(index=i, flow_id=f"f-{i:06d}", record_index=i) for i in range(count)]


# --- sharing sessions out, and aligning clocks: pure


@given(
    count=st.integers(0, 60),
    workers=st.integers(1, 8),
    concurrency=st.one_of(st.none(), st.integers(1, 20)),
    skip=st.sets(st.integers(0, 59)),
)
def test_every_session_goes_to_exactly_one_worker_with_its_own_arrival(count, workers, concurrency, skip):
    todo = [flow for flow in flows(count) if flow.index not in skip]  # a resume runs what is left
    arrivals = np.arange(len(todo), dtype=float) / 7.0
    shares = share_out(todo, arrivals, workers, concurrency)
    assert len(shares) <= workers and (concurrency is None or len(shares) <= concurrency)
    owned = [
        (flow.index, float(arrival))
        for share in shares
        for flow, arrival in zip(share.flows, share.arrivals_s, strict=True)
    ]
    assert sorted(owned) == [(flow.index, float(a)) for flow, a in zip(todo, arrivals, strict=True)]
    if concurrency is not None:
        assert sum(share.concurrency for share in shares) == concurrency
        assert all(share.concurrency >= 1 for share in shares)
    # the owner depends on the index alone, so a resume sends a session to the worker it had
    again = share_out(todo[::-1], None, workers, concurrency)
    assert {f.index: s.worker for s in shares for f in s.flows} == {
        f.index: s.worker for s in again for f in s.flows
    }


def test_sessions_follow_the_share_of_concurrency() -> None:
    shares = share_out(flows(300), None, 2, 3)
    assert [share.concurrency for share in shares] == [2, 1] == [slot_share(3, 2, w) for w in (0, 1)]
    assert [len(share.flows) for share in shares] == [200, 100]


def test_clock_alignment_keeps_the_tightest_exchange_and_bounds_the_offset() -> None:
    rng = random.Random(3)
    true_offset = 1234.5
    exchanges = []
    for _ in range(20):
        sent = rng.uniform(0, 100)
        there, back = rng.uniform(0.0001, 0.01), rng.uniform(0.0001, 0.01)
        exchanges.append((sent, sent + there + true_offset, sent + there + back))
    alignment = align(exchanges)
    tightest = min(exchanges, key=lambda e: e[2] - e[0])
    assert alignment.error_s == pytest.approx((tightest[2] - tightest[0]) / 2)
    assert abs(alignment.offset_s - true_offset) <= alignment.error_s + 1e-12
    assert alignment.to_worker(10.0) == pytest.approx(10.0 + alignment.offset_s)
    with pytest.raises(ValueError):
        align([])


def write_lines(path: str, worker: int) -> None:
    log = DurableLog(Path(path))
    for n in range(300):
        log.append(json.dumps({"worker": worker, "n": n, "pad": "x" * (20_000 + worker)}) + "\n")
    log.close()


def test_processes_appending_to_one_log_never_tear_each_others_lines(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "steps.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=write_lines, args=(str(path), w)) for w in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    lines = [json.loads(line) for line in read_complete_lines(path)]
    assert sorted((line["worker"], line["n"]) for line in lines) == [
        (w, n) for w in range(3) for n in range(300)
    ]
    assert all(len(line["pad"]) == 20_000 + line["worker"] for line in lines)


# --- real runs on the mock server


def run_with_workers(tmp_path: Path, server: MockOpenAIServer, **settings: Any) -> RunResult:
    engine = {"kind": "openai", "base_url": f"http://127.0.0.1:{server.port}", "model": "mock"}
    return run_in_process(tmp_path / "runs", "w", engine, num_flows=16, max_tokens=4, **settings)


def window_starts(result: RunResult, server: MockOpenAIServer) -> np.ndarray:
    """Per workflow, the server's arrival time of its first request minus the offset the harness recorded
    for that request's start: the window start on the server's clock, as each worker saw it."""
    arrived = {log.request_id: log.arrived for log in server.logs}
    steps = [step for step in RunStore(result.run_dir).read_steps() if step.step_index == 0]
    return np.array([arrived[f"w-{s.flow_id}-{s.node}"] - s.start_offset_ms / 1000.0 for s in steps])


def assert_every_workflow_once(result: RunResult, total: int, steps_each: int = 3) -> None:
    store = RunStore(result.run_dir)
    assert sorted(int(row["flow_index"]) for row in store.read_workflows()) == list(range(total))
    keys = [(step.flow_index, step.step_index) for step in store.read_steps()]
    assert len(keys) == len(set(keys)) == total * steps_each
    assert result.summary.counts.workflows_ok == total and result.summary.status == "complete"


@pytest.mark.slow
def test_two_worker_processes_send_the_one_schedule_from_one_window_start(tmp_path: Path) -> None:
    with serve_in_thread(MOCK) as server:
        result = run_with_workers(tmp_path, server, rate=25.0, seed=7, client={"workers": 2})
        starts = window_starts(result, server)
    assert_every_workflow_once(result, 16)
    rows_ = RunStore(result.run_dir).read_workflows()
    schedule = poisson_arrivals(25.0, 16, 7) * 1000.0
    assert [float(r["arrival_offset_ms"]) for r in sorted(rows_, key=lambda r: int(r["flow_index"]))] == (
        pytest.approx(schedule, abs=0.001)
    )
    # both workers counted from the same instant: one worker's own start would shift its half by its
    # start-up, which this run measured (workers_start_ms); what is left is the request's way to the
    # server, so the spread must stay well under half that start-up (and 10 ms at the least)
    timing = (result.run_dir / TIMING_LOG).read_text()
    assert "workers_start_ms=" in timing and "workers=2 executor=process" in timing
    line = next(line for line in timing.splitlines() if "workers_start_ms=" in line)
    start_up_s = float(parse_timing_line(line)["workers_start_ms"]) / 1000.0
    assert starts.max() - starts.min() < max(0.010, start_up_s / 2), (starts - starts.min(), start_up_s)


@pytest.mark.slow
def test_ray_actors_stream_records_back_on_an_aligned_clock(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    with serve_in_thread(MOCK) as server:
        result = run_with_workers(tmp_path, server, concurrency=2, client={"workers": 2, "executor": "ray"})
        starts = window_starts(result, server)
    assert_every_workflow_once(result, 16)
    assert min(step.start_offset_ms for step in RunStore(result.run_dir).read_steps()) >= 0
    line = next(
        line for line in (result.run_dir / TIMING_LOG).read_text().splitlines() if "workers_start" in line
    )
    error_ms = float(line.split("clock_error_ms=")[1].split()[0])
    assert "executor=ray" in line and 0 < error_ms < 20
    # closed loop, each worker's first workflow starts at its window start: the same instant within the
    # stated alignment error and the request's way to the server
    firsts = starts[:2]
    assert abs(firsts[0] - firsts[1]) < 2 * error_ms / 1000.0 + 0.010


def test_how_the_load_is_sent_is_not_part_of_the_experiment() -> None:
    """A run resumed with another number of workers continues the same experiment (same fingerprint)."""
    engine = {"kind": "openai", "base_url": "http://127.0.0.1:1"}
    one = RunConfig.model_validate({"engine": engine})
    two = RunConfig.model_validate({"engine": engine, "client": {"workers": 2, "executor": "ray"}})
    assert one.fingerprint() == two.fingerprint()


def test_workers_with_the_in_process_engine_is_a_usage_error(tmp_path: Path) -> None:
    done = run_bench("run", "--workers", "2", "--out", str(tmp_path / "runs"), timeout=60)
    assert done.returncode == 2
    assert (
        done.stderr.strip().count("\n") == 0
        and "--workers 2" in done.stderr
        and "Traceback" not in done.stderr
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_sweep_level_with_workers_stops_at_its_duration_counted_from_the_window(tmp_path: Path) -> None:
    """The sweep stops a level through whatever runs its window (the workers here, not the coordinator's
    own runner), and counts --duration from the window, after the workers have started."""
    with serve_in_thread(MOCK) as server:
        url = f"http://127.0.0.1:{server.port}"
        done = run_bench("sweep", "--concurrency", "2", "--duration", "2", "--workers", "2", "--max-tokens",
                         "4", "--engine", "openai", "--base-url", url, "--no-progress",
                         "--out", str(tmp_path / "runs"), "--run-id", "s", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (level,) = [
        json.loads(line) for line in (tmp_path / "runs" / "s" / "sweep.jsonl").read_text().splitlines()
    ]
    assert level["stopped_early"].startswith("duration") and level["status"] == "complete"
    # the window opens WINDOW_LEAD_S after the watch starts; start-up counted in would cost ~0.5 s
    assert 1.85 <= level["window_s"] < 3.0, level["window_s"]


def test_an_unreachable_ray_cluster_is_a_usage_error_before_anything_is_written(tmp_path: Path) -> None:
    done = run_bench("run", "--engine", "openai", "--base-url", "http://127.0.0.1:9", "--executor", "ray",
                     "--ray-address", "127.0.0.1:9", "--out", str(tmp_path / "runs"), timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: --ray-address: nothing answers at 127.0.0.1:9")
    assert "\n" not in done.stderr.strip() and not (tmp_path / "runs").exists()


# --- crashes and signals (subprocesses in their own process group)


def worker_processes(bench: BenchProcess, count: int = 2) -> list[psutil.Process]:
    """The client workers: the newest spawned children (the periodic-summary process came before)."""
    children = psutil.Process(bench.process.pid).children(recursive=True)
    spawned = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
    return sorted(spawned, key=lambda child: child.create_time())[-count:]


def graph_args(tmp_path: Path, server: MockOpenAIServer, run_id: str, total: int) -> list[str]:
    return ["--flow", "map_reduce", "-n", str(total), "--concurrency", "4", "--max-tokens", "4",
            "--warmup", "0", "--engine", "openai", "--base-url", f"http://127.0.0.1:{server.port}",
            "--workers", "2", "--out", str(tmp_path / "runs"), "--run-id", run_id]  # fmt: skip


@pytest.mark.slow
def test_sigkill_with_two_workers_then_resume_runs_each_workflow_once(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("FLOWPERF_KILL_SEED", "20261130")))
    total, run_dir = 16, tmp_path / "runs" / "kill"
    with serve_in_thread(MockConfig(ttft_ms=150, itl_ms=2, lifetime_s=300)) as server:
        for trial in range(3):
            args = (
                ["--resume", str(run_dir)]
                if (run_dir / "config.json").exists()
                else graph_args(tmp_path, server, "kill", total)
            )
            bench = BenchProcess(tmp_path, f"kill{trial}", *args)
            target = (len(rows(run_dir)) if run_dir.exists() else 0) + rng.randint(1, 3)
            wait_until(lambda target=target: run_dir.exists() and len(rows(run_dir)) >= target, bench)
            time.sleep(rng.uniform(0.05, 0.3))  # inside fan-outs of both workers, or a write
            if bench.process.poll() is None:
                bench.signal_group(signal.SIGKILL)
            bench.process.wait()
        final = BenchProcess(tmp_path, "final", "--resume", str(run_dir))
        assert final.wait(300) == 0, final.stderr[-2000:]
    workflows = rows(run_dir)
    assert sorted(int(row["flow_index"]) for row in workflows) == list(range(total))
    steps = RunStore(run_dir).read_steps()
    assert len({(s.flow_index, s.step_index) for s in steps}) == len(steps)
    for row in workflows:
        own = [s for s in steps if s.flow_index == int(row["flow_index"])]
        assert {s.session for s in own} == {int(row["session"])}
        assert sorted(s.step_index for s in own) == list(range(int(row["steps"])))
    assert read_summary(run_dir).counts.sessions >= 2


def running_with_workers(
    tmp_path: Path, server: MockOpenAIServer, run_id: str, total: int, done: int
) -> tuple[BenchProcess, Path]:
    """A map_reduce run on two workers, once `done` workflows are recorded (so both workers are busy)."""
    bench = BenchProcess(tmp_path, run_id, *graph_args(tmp_path, server, run_id, total))
    run_dir = tmp_path / "runs" / run_id
    wait_until(lambda: run_dir.exists() and len(rows(run_dir)) >= done, bench)
    return bench, run_dir


@pytest.mark.slow
def test_workers_die_with_their_coordinator(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(ttft_ms=150, itl_ms=2, lifetime_s=300)) as server:
        bench, _ = running_with_workers(tmp_path, server, "orphan", 400, 1)
        workers = worker_processes(bench)
        os.kill(bench.process.pid, signal.SIGKILL)  # the coordinator alone, not its process group
        bench.process.wait()
        alive = psutil.wait_procs(workers, timeout=10)[1]
        for process in alive:
            process.kill()  # only what this test started, and only so that a failure leaves nothing behind
        assert not alive, [process.pid for process in alive]


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_run_naming_it_and_the_run_resumes(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(ttft_ms=150, itl_ms=2, lifetime_s=300)) as server:
        bench, run_dir = running_with_workers(tmp_path, server, "dies", 16, 1)
        victim = worker_processes(bench)[1]
        victim.kill()
        assert bench.wait(60) == 1, bench.stderr[-2000:]
        errors = [line for line in bench.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and "client worker" in errors[0] and f"--resume {run_dir}" in errors[0], (
            errors
        )
        assert "Traceback" not in bench.stderr
        resumed = BenchProcess(tmp_path, "dies-resume", "--resume", str(run_dir))
        assert resumed.wait(300) == 0, resumed.stderr[-2000:]
    assert sorted(int(row["flow_index"]) for row in rows(run_dir)) == list(range(16))


@pytest.mark.slow
def test_ctrl_c_with_workers_stops_them_gracefully(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(ttft_ms=150, itl_ms=2, lifetime_s=300)) as server:
        bench, run_dir = running_with_workers(tmp_path, server, "int", 60, 2)
        workers = worker_processes(bench)
        bench.signal_group(signal.SIGINT)  # a terminal's Ctrl-C reaches the workers too: they leave it to us
        assert bench.wait(60) == 130, bench.stderr[-2000:]
        assert "Traceback" not in bench.stderr
        assert not psutil.wait_procs(workers, timeout=5)[1]
    summary = read_summary(run_dir)
    assert summary.status == "interrupted" and 2 <= summary.counts.workflows_done < 60
    assert all(row["status"] == "ok" for row in rows(run_dir))  # in-flight steps were let finish
