"""Exactly-once through a machine crash: any unsynced suffix of any append-only file may be lost.

steps.jsonl, workflows.csv and metrics.jsonl reach the disk independently (an fsync thread per file, and
the kernel's own write-back in any order), so after a power loss each holds some prefix of what was
appended, cut at any byte. Each seeded case writes a run the way the runner does (a workflow's steps,
then its row; workflows finishing interleaved, some failing), cuts every file at its own random offset,
then resumes as `bench run --resume` does (reopen, count, drop) and re-runs what is not counted, in a
new session. However the files were cut, every workflow must end up counted exactly once, with every
step its row accounts for, from the session that wrote the row, and no other step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from flowperf.rundir.live_summary import RunTables
from flowperf.rundir.records import StepRecord, WorkflowRecord
from flowperf.rundir.rundata import load_run
from flowperf.rundir.store import METRICS, STEPS, WORKFLOWS, RunStore, counted_workflows
from flowperf.rundir.summary import SummaryContext
from flowperf.rundir.summary_schema import RunInfo

FLOWS = 12
STEPS_PER_FLOW = 3
CASES = 300


def step(flow: int, session: int, index: int, ok: bool = True) -> StepRecord:
    return StepRecord(
        flow_index=flow,
        flow_id=f'f-{flow:06d}, "quoted"',  # a CSV cell that needs quoting
        session=session,
        step_index=index,
        step_id=f"s{index}",
        max_tokens=8,
        inflight_at_start=1,
        start_offset_ms=float(index),
        status="ok" if ok else "failed",
        step_ms=1.5,
        output_tokens=8 if ok else None,
        error_type=None if ok else "EngineError",
        error_message=None if ok else "injected",
    )


def workflow(flow: int, session: int, steps_ok: int, failed: bool) -> WorkflowRecord:
    return WorkflowRecord(
        flow_index=flow,
        flow_id=f'f-{flow:06d}, "quoted"',
        session=session,
        status="failed" if failed else "ok",
        workflow_ms=5.0,
        step_ms_sum=4.5,
        steps=STEPS_PER_FLOW,
        steps_ok=steps_ok,
        prompt_tokens=10,
        output_tokens=8 * steps_ok,
        cached_prompt_tokens=0,
        start_offset_ms=0.0,
        end_offset_ms=5.0,
        error_type="EngineError" if failed else "",
        error_message="injected" if failed else "",
    )


def run_session(store: RunStore, flows: list[int], session: int, rng: random.Random) -> None:
    """Append what a session of the runner would: workflows interleaved, each one's steps before its
    row, a third of them failing at a random step; metric lines in between."""
    plans = {flow: rng.choice([None, *range(STEPS_PER_FLOW)]) for flow in flows}  # step that fails
    progress = dict.fromkeys(flows, 0)
    while progress:
        flow = rng.choice(list(progress))
        index, fails_at = progress[flow], plans[flow]
        failed = index == fails_at
        store.append_step(step(flow, session, index, ok=not failed))
        if rng.random() < 0.3:
            store.append_metric_line(session)
        if failed or index == STEPS_PER_FLOW - 1:
            store.append_workflow(
                workflow(flow, session, index, failed)
                if failed
                else workflow(flow, session, STEPS_PER_FLOW, False)
            )
            del progress[flow]
        else:
            progress[flow] = index + 1


class Store(RunStore):
    def append_metric_line(self, session: int) -> None:
        self._append(METRICS, json.dumps({"type": "phase", "session": session, "name": "workflow"}) + "\n")


def make_run(run_dir: Path, rng: random.Random) -> None:
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}\n")
    store = Store(run_dir)
    run_session(store, list(range(FLOWS)), 0, rng)
    store.close()


def power_loss(run_dir: Path, rng: random.Random) -> None:
    """Keep a random prefix of every append-only file, each cut independently (at any byte)."""
    for name in (STEPS, WORKFLOWS, METRICS):
        data = (run_dir / name).read_bytes()
        cut = rng.choice([0, len(data), rng.randrange(len(data) + 1), rng.randrange(len(data) + 1)])
        (run_dir / name).write_bytes(data[:cut])


def resume(run_dir: Path, rng: random.Random) -> None:
    """What `benchmark.open_run` does on --resume, then a session that runs what is not counted."""
    store = Store.reopen(run_dir)
    completed = store.completed_flow_indices()
    store.drop_unfinished_steps(completed)
    session = store.next_session()
    run_session(store, [flow for flow in range(FLOWS) if flow not in completed], session, rng)
    store.close()


def check_exactly_once(run_dir: Path) -> None:
    store = RunStore(run_dir)
    steps = store.read_steps()
    keys = [(s.flow_index, s.session, s.step_index) for s in steps]
    rows = store.read_workflows()
    counted = counted_workflows(rows, set(keys))
    # every workflow once, every row counted (none left without its steps)
    assert sorted(int(row["flow_index"]) for row in rows) == list(range(FLOWS))
    assert sorted(int(row["flow_index"]) for row in counted) == list(range(FLOWS))
    # each with all its steps, of its row's session, and no step of anything else, no step twice
    expected = sorted(
        (int(row["flow_index"]), int(row["session"]), index)
        for row in rows
        for index in range(int(row["steps_ok"]) + (row["status"] == "failed"))
    )
    assert sorted(keys) == expected


@pytest.mark.parametrize("chunk", range(CASES // 50))
def test_every_workflow_exactly_once_with_all_its_steps_after_power_loss(tmp_path: Path, chunk: int) -> None:
    for case in range(chunk * 50, (chunk + 1) * 50):
        rng = random.Random(case)
        run_dir = tmp_path / f"case{case}"
        make_run(run_dir, rng)
        power_loss(run_dir, rng)
        resume(run_dir, rng)
        # a second crash, during the resumed session's appends, and a second resume
        power_loss(run_dir, rng)
        resume(run_dir, rng)
        try:
            check_exactly_once(run_dir)
        except AssertionError as error:
            raise AssertionError(f"seed {case}: {error}") from None


def test_a_row_whose_steps_were_lost_is_not_counted(tmp_path: Path) -> None:
    """The case the rule exists for: the row reached the disk, its last step did not."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}\n")
    store = RunStore(run_dir)
    for index in range(STEPS_PER_FLOW):
        store.append_step(step(0, 0, index))
    store.append_workflow(workflow(0, 0, STEPS_PER_FLOW, False))
    store.close()
    lines = (run_dir / STEPS).read_text().splitlines(keepends=True)
    (run_dir / STEPS).write_text("".join(lines[:2]))
    reopened = RunStore.reopen(run_dir)
    assert reopened.completed_flow_indices() == set()
    assert reopened.drop_unfinished_steps(set()) == 2
    assert reopened.read_workflows() == [] and reopened.read_steps() == []
    assert reopened.next_session() == 0


def test_every_reader_leaves_out_a_row_whose_steps_were_lost(tmp_path: Path) -> None:
    """Reports, compare and live summaries count what resume counts: a row whose last step a power loss
    took is not a finished workflow (workflow 1), whichever reader looks (`load_run` feeds report,
    compare and the final summary; `RunTables` the periodic ones)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}\n")
    store = RunStore(run_dir)
    for flow in (0, 1):
        for index in range(STEPS_PER_FLOW):
            store.append_step(step(flow, 0, index))
        store.append_workflow(workflow(flow, 0, STEPS_PER_FLOW, False))
    store.close()
    lines = (run_dir / STEPS).read_text().splitlines(keepends=True)
    (run_dir / STEPS).write_text("".join(lines[:-1]))  # workflow 1's last step lost
    assert RunStore(run_dir).completed_flow_indices() == {0}
    run = load_run(run_dir)
    assert run.workflows["flow_index"].tolist() == [0]
    assert sorted(run.steps["flow_index"].tolist()) == [0] * STEPS_PER_FLOW
    tables = RunTables(RunStore(run_dir))
    context = SummaryContext(planned_workflows=2, run=RunInfo(run_id="run", flow="synthetic"))
    summary = tables.summary("interrupted", context)
    assert summary.counts.workflows_done == 1
