"""Periodic summaries from another process: the same figures as a summary computed from the files, each
byte read once, and a worker that can fail, die or hang without harming the run."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowperf.rundir.live_summary import PeriodicSummaries, RunTables
from flowperf.rundir.records import GpuInfoRecord, PhaseRecord, ResourceSample, StepRecord, WorkflowRecord
from flowperf.rundir.rundata import step_frame, workflow_frame
from flowperf.rundir.store import CONFIG, ENGINE_METRICS, METRICS, STEPS, SUMMARY, WORKFLOWS, RunStore
from flowperf.rundir.summary import SummaryContext, build_summary
from flowperf.rundir.summary_schema import RunInfo, RunSummary

STEP_IDS = ("plan", "draft", "check")


def context(planned: int = 100) -> SummaryContext:
    return SummaryContext(planned_workflows=planned, run=RunInfo(run_id="synthetic", flow="synthetic"))


def step(rng: random.Random, flow: int, session: int, index: int, offset: float) -> StepRecord:
    ok = rng.random() > 0.1
    tokens = rng.randint(2, 16)
    gaps = [round(rng.expovariate(1 / 8.0), 3) for _ in range(tokens - 1)]
    ttft = rng.uniform(5, 60)
    return StepRecord(
        flow_index=flow,
        flow_id=f"f-{flow:06d}",
        session=session,
        step_index=index,
        step_id=STEP_IDS[index],
        max_tokens=16,
        inflight_at_start=rng.randint(1, 8),
        start_offset_ms=offset,
        status="ok" if ok else "failed",
        step_ms=ttft + sum(gaps),
        ttft_ms=ttft if ok else None,
        tpot_ms=sum(gaps) / len(gaps) if ok else None,
        itl_ms=gaps if ok else None,
        prompt_tokens=rng.randint(50, 500),
        output_tokens=tokens if ok else None,
        cached_prompt_tokens=rng.choice([None, 0, 32, 64]),
        finish_reason="length" if ok else None,
        error_type=None if ok else "engine_error",
        error_message=None if ok else "boom",
    )


def run_workflow(store: RunStore, rng: random.Random, flow: int, session: int, finish: bool = True) -> None:
    """One workflow's steps, then (if it finished) its row; a step line is sometimes written twice."""
    start = rng.uniform(0, 5000)
    steps = [step(rng, flow, session, index, start + 30 * index) for index in range(3)]
    for record in steps:
        store.append_step(record)
        if rng.random() < 0.05:
            store.append_step(record)
    if not finish:
        return
    ok = all(s.status == "ok" for s in steps)
    store.append_workflow(
        WorkflowRecord(
            flow_index=flow,
            flow_id=f"f-{flow:06d}",
            session=session,
            status="ok" if ok else "failed",
            workflow_ms=sum(s.step_ms for s in steps),
            step_ms_sum=sum(s.step_ms for s in steps),
            steps=3,
            steps_ok=sum(s.status == "ok" for s in steps),
            prompt_tokens=sum(s.prompt_tokens or 0 for s in steps),
            output_tokens=sum(s.output_tokens or 0 for s in steps),
            cached_prompt_tokens=0,
            arrival_offset_ms=start - rng.uniform(0, 20) if flow % 2 else None,
            start_offset_ms=start,
            end_offset_ms=start + 100,
            error_type="" if ok else "engine_error",
        )
    )


def add_metrics(store: RunStore, rng: random.Random, session: int, samples: int) -> None:
    store.append_metric(GpuInfoRecord(session=session, available=False, reason="no NVML"))
    for k in range(samples):
        store.append_metric(
            ResourceSample(
                session=session,
                t_s=k * 0.25,
                steps_done=k * 20,
                rss_mb=300 + k + rng.random(),
                cpu_percent=rng.uniform(0, 200),
                children_rss_mb=900.0 + k,
                children_cpu_percent=50.0,
            )
        )
    store.append_metric(
        PhaseRecord(
            session=session, name="warmup", start_s=0, duration_ms=12.5, rss_before_mb=1, rss_after_mb=2
        )
    )


def append_raw(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def canonical(summary: RunSummary) -> str:
    return json.dumps(summary.to_json(), sort_keys=True)


def assert_same_as_from_files(tables: RunTables, store: RunStore) -> None:
    """The tables and the summary equal what `rundata` and `build_summary` make of the files now."""
    ctx = context()
    live = tables.summary("running", ctx)
    assert canonical(live) == canonical(build_summary(store, "running", ctx))
    expected_workflows = workflow_frame(store)
    pd.testing.assert_frame_equal(tables._workflows.frame(tables._steps.key_set), expected_workflows)
    expected_steps = step_frame(store, expected_workflows)
    steps = tables._steps.frame(expected_workflows)
    if expected_workflows.empty:
        pd.testing.assert_frame_equal(steps, expected_steps)
        return
    pd.testing.assert_frame_equal(steps.drop(columns="itl_ms"), expected_steps.drop(columns="itl_ms"))
    assert all(np.array_equal(a, b) for a, b in zip(steps["itl_ms"], expected_steps["itl_ms"], strict=True))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    run = RunStore.create(tmp_path, "run")
    run.write_json(CONFIG, {"schema_version": 2, "config": {}})
    yield run
    run.close()


def test_summaries_equal_the_files_through_a_torn_line_and_later_appends(store: RunStore) -> None:
    rng = random.Random(7)
    tables = RunTables(store)
    assert_same_as_from_files(tables, store)  # nothing written yet
    for flow in range(40):
        run_workflow(store, rng, flow, session=0, finish=flow != 17)  # 17 in flight: steps, no row
    add_metrics(store, rng, session=0, samples=12)
    torn = step(rng, 41, 0, 0, 1.0).to_line()
    append_raw(store.path(STEPS), torn[:25])  # a step line being written
    append_raw(store.path(WORKFLOWS), "99,f-000099,0,o")  # and a row
    append_raw(store.path(METRICS), '{"type": "sam')
    assert_same_as_from_files(tables, store)
    append_raw(store.path(STEPS), torn[25:])
    append_raw(store.path(WORKFLOWS), "k,1,1,1,1,1,1,1,,0,1,,\n")
    append_raw(store.path(METRICS), 'ple"}\n')  # completed, but not a valid sample: skipped by both
    for flow in range(40, 70):
        run_workflow(store, rng, flow, session=0)
    assert_same_as_from_files(tables, store)


def test_summaries_follow_a_crash_and_a_resume_into_a_second_session(store: RunStore) -> None:
    rng = random.Random(11)
    tables = RunTables(store)
    for flow in range(30):
        run_workflow(store, rng, flow, session=0, finish=flow not in (3, 12))
    add_metrics(store, rng, session=0, samples=10)
    append_raw(store.path(STEPS), step(rng, 30, 0, 0, 1.0).to_line()[:40])  # the crash tore this line
    assert_same_as_from_files(tables, store)
    store.close()
    resumed = RunStore.reopen(store.run_dir)  # cuts the torn tail: the file got shorter
    resumed.drop_unfinished_steps(resumed.completed_flow_indices())  # rewrites steps.jsonl (a new file)
    assert_same_as_from_files(tables, resumed)
    for flow in (3, 12, *range(30, 60)):
        run_workflow(resumed, rng, flow, session=1)
    add_metrics(resumed, rng, session=1, samples=14)
    assert_same_as_from_files(tables, resumed)
    assert build_summary(resumed, "running", context()).counts.sessions == 2
    resumed.close()


def test_steps_of_an_unfinished_session_are_not_counted_when_a_later_one_finished_the_workflow(
    store: RunStore,
) -> None:
    """Read mid-run without a reopen between sessions: flow 5 has steps from both, a row from session 1."""
    rng = random.Random(3)
    tables = RunTables(store)
    for flow in range(10):
        run_workflow(store, rng, flow, session=0, finish=flow != 5)
    for flow in (5, 10, 11):
        run_workflow(store, rng, flow, session=1)
    assert_same_as_from_files(tables, store)
    assert len(tables._steps.frame(workflow_frame(store)).query("flow_index == 5")) == 3


def test_each_byte_is_read_once_however_many_summaries(store: RunStore) -> None:
    """Linear work over a run: a summary reads what was appended since the last one, never the start."""
    rng = random.Random(5)
    tables = RunTables(store)
    for batch in range(20):
        for flow in range(batch * 5, batch * 5 + 5):
            run_workflow(store, rng, flow, session=0)
        add_metrics(store, rng, session=0, samples=2)
        tables.summary("running", context())
    sizes = sum(store.path(name).stat().st_size for name in (STEPS, WORKFLOWS, METRICS))
    assert tables.bytes_read == sizes


# --- the worker process ---------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def written_summary(store: RunStore) -> str | None:
    try:
        return json.dumps(store.read_json(SUMMARY), sort_keys=True)
    except Exception:
        return None


def expected_summary(store: RunStore) -> str:
    summary = build_summary(store, "running", context()).to_json()
    return json.dumps(json.loads(json.dumps(summary, default=str)), sort_keys=True)


def test_the_worker_writes_what_the_files_say_and_ends_with_finish(store: RunStore) -> None:
    rng = random.Random(1)
    warnings: list[str] = []
    periodic = PeriodicSummaries(store, every=1, interval_s=0.0, context=context(), warn=warnings.append)
    asyncio.run(periodic.started())  # as a run does before it measures
    for flow in range(20):
        run_workflow(store, rng, flow, session=0)
    periodic.workflow_done()
    wait_until(lambda: written_summary(store) == expected_summary(store))
    for flow in range(20, 50):
        run_workflow(store, rng, flow, session=0)

    def asked_and_written() -> bool:
        periodic.workflow_done()  # sent once the previous summary is answered
        return written_summary(store) == expected_summary(store)

    wait_until(asked_and_written)
    process = periodic._worker.process
    asyncio.run(periodic.finish())
    assert not process.is_alive() and process.exitcode == 0
    assert warnings == []


def test_no_worker_is_started_when_no_summary_can_fall_due(store: RunStore) -> None:
    periodic = PeriodicSummaries(store, every=10, interval_s=0.0, context=context(planned=9))
    asyncio.run(periodic.started())  # as a run does before it measures
    assert periodic.worker_pid is None
    asyncio.run(periodic.finish())


def test_a_failing_summary_is_a_warning_and_the_worker_carries_on(store: RunStore) -> None:
    store.path(SUMMARY).mkdir()  # summary.json cannot be replaced
    warnings: list[str] = []
    periodic = PeriodicSummaries(store, every=1, interval_s=0.0, context=context(), warn=warnings.append)
    asyncio.run(periodic.started())  # as a run does before it measures
    run_workflow(store, random.Random(2), 0, session=0)
    periodic.workflow_done()
    wait_until(lambda: (periodic.workflow_done(), warnings)[1] != [])
    assert "summary.json was not written" in warnings[0]
    store.path(SUMMARY).rmdir()
    wait_until(lambda: (periodic.workflow_done(), written_summary(store))[1] is not None)
    asyncio.run(periodic.finish())


def test_a_killed_worker_is_a_warning_and_finish_returns(store: RunStore) -> None:
    warnings: list[str] = []
    periodic = PeriodicSummaries(store, every=1, interval_s=0.0, context=context(), warn=warnings.append)
    asyncio.run(periodic.started())  # as a run does before it measures
    os.kill(periodic.worker_pid, signal.SIGKILL)
    periodic._worker.process.join(30)
    periodic.workflow_done()
    assert len(warnings) == 1 and "worker ended" in warnings[0]
    started = time.monotonic()
    asyncio.run(periodic.finish())
    assert time.monotonic() - started < 5


def test_a_hung_worker_is_killed_at_finish_with_a_warning(store: RunStore) -> None:
    warnings: list[str] = []
    periodic = PeriodicSummaries(store, every=1, interval_s=0.0, context=context(), warn=warnings.append)
    asyncio.run(periodic.started())  # as a run does before it measures
    periodic.stop_timeout_s = 1.0
    process = periodic._worker.process
    os.kill(process.pid, signal.SIGSTOP)
    run_workflow(store, random.Random(4), 0, session=0)
    periodic.workflow_done()
    started = time.monotonic()
    asyncio.run(periodic.finish())
    assert time.monotonic() - started < 10
    assert not process.is_alive()
    assert any("did not stop within 1s and was killed" in w for w in warnings)


def test_ctrl_c_to_the_process_group_leaves_the_worker_to_the_run(store: RunStore) -> None:
    """SIGINT reaches every process of the terminal's group; the worker must not die of it (nor print a
    traceback), the run stops it in order."""
    warnings: list[str] = []
    periodic = PeriodicSummaries(store, every=1, interval_s=0.0, context=context(), warn=warnings.append)
    asyncio.run(periodic.started())  # as a run does before it measures
    wait_until(lambda: _imported(periodic.worker_pid))
    os.kill(periodic.worker_pid, signal.SIGINT)
    run_workflow(store, random.Random(6), 0, session=0)
    wait_until(lambda: (periodic.workflow_done(), written_summary(store))[1] is not None)
    process = periodic._worker.process
    asyncio.run(periodic.finish())
    assert process.exitcode == 0 and warnings == []


def _imported(pid: int) -> bool:
    """Whether the worker has got as far as its loop (its SIGINT handler is set once it runs `serve`)."""
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def test_the_worker_imports_neither_vllm_nor_torch() -> None:
    probe = "import sys, flowperf.rundir.live_summary; print(sorted({'vllm', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_started_returns_once_the_worker_has_imported_what_it_needs(store: RunStore) -> None:
    """A run waits for this before its warm-up, so the worker's start-up CPU is never measured."""
    periodic = PeriodicSummaries(store, every=1, interval_s=0.0, context=context())
    assert periodic._worker is not None and not periodic._worker.ready()  # spawning takes ~1 s here
    asyncio.run(periodic.started())
    assert periodic._worker.ready()
    asyncio.run(periodic.finish())


def test_the_periodic_summary_has_the_engine_state_read_so_far(store: RunStore) -> None:
    from flowperf.rundir.records import EngineSample, ServerSeries

    rng = random.Random(5)
    tables = RunTables(store)
    for flow in range(6):
        run_workflow(store, rng, flow, session=0)
    server = "http://127.0.0.1:1/metrics"
    store.append_engine_metric(ServerSeries(session=0, server=server, vllm=True, families=3, endpoint=0))
    for index in range(5):
        gauges = {"vllm:num_requests_waiting": float(index), "vllm:kv_cache_usage_perc": 0.1 * index}
        store.append_engine_metric(
            EngineSample(session=0, server=server, t_ms=50.0 * index, interval_ms=50.0, gauges=gauges)
        )
    append_raw(store.path(ENGINE_METRICS), '{"type": "sam')  # being written: skipped by both
    assert_same_as_from_files(tables, store)
    (state,) = tables.summary("running", context()).engine_state
    assert state.waiting_max == 4.0 and state.samples == 5
