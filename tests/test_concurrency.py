"""Concurrent and open-loop workflows on the real engine: same results as sequential, order kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.outputs.report import workflow_text
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.records import StepRecord, WorkflowRecord
from flowperf.rundir.rundata import workflow_frame
from flowperf.rundir.store import SUMMARY, RunStore
from flowperf.rundir.summary_schema import RunSummary
from flowperf.stats import poisson_arrivals
from helpers import ROOT

pytestmark = pytest.mark.engine


def run(engine, engine_loop, tmp_path: Path, run_id: str, **overrides):
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "max_tokens": 12,
            "output": {"out_dir": str(tmp_path / "runs"), "run_id": run_id, "save_text": True},
        }
        | overrides
    )
    return engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=FaultyEngine(engine)))


def steps_by_key(run_dir: Path) -> dict[tuple[int, int], StepRecord]:
    return {(s.flow_index, s.step_index): s for s in RunStore(run_dir).read_steps()}


def test_concurrent_workflows_give_the_sequential_outputs_and_keep_step_order(engine, engine_loop, tmp_path):
    sequential = run(engine, engine_loop, tmp_path, "seq", num_flows=8, concurrency=1)
    concurrent = run(engine, engine_loop, tmp_path, "con", num_flows=8, concurrency=8)
    assert concurrent.exit_code == 0
    one, many = steps_by_key(sequential.run_dir), steps_by_key(concurrent.run_dir)
    assert one.keys() == many.keys() and len(many) == 24
    assert {key: s.output_text for key, s in one.items()} == {key: s.output_text for key, s in many.items()}
    for (flow, position), step in many.items():
        if position:
            before = many[(flow, position - 1)]
            assert step.start_offset_ms >= before.start_offset_ms + before.step_ms
            assert before.output_text in step.prompt_text
    assert max(s.inflight_at_start for s in many.values()) > 1
    load = concurrent.summary.load.achieved_concurrency
    assert load.max == 8 and load.mean > 2
    assert concurrent.summary.run.mode == "closed_loop" and concurrent.summary.run.concurrency == 8
    assert concurrent.summary.timing.measured_window_ms < sequential.summary.timing.measured_window_ms


def test_open_loop_arrivals_follow_the_seeded_poisson_schedule(engine, engine_loop, tmp_path):
    first = run(engine, engine_loop, tmp_path, "open1", num_flows=10, rate=20.0, seed=3, warmup=0)
    again = run(engine, engine_loop, tmp_path, "open2", num_flows=10, rate=20.0, seed=3, warmup=0)
    rows = RunStore(first.run_dir).read_workflows()
    arrivals = [float(r["arrival_offset_ms"]) for r in sorted(rows, key=lambda r: int(r["flow_index"]))]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert arrivals == [
        float(r["arrival_offset_ms"])
        for r in sorted(RunStore(again.run_dir).read_workflows(), key=lambda r: int(r["flow_index"]))
    ]
    assert arrivals == pytest.approx(poisson_arrivals(20.0, 10, 3) * 1000.0, abs=0.001)  # the schedule
    for row in rows:  # with no cap every workflow starts when it arrives
        assert float(row["start_offset_ms"]) - float(row["arrival_offset_ms"]) < 50
    run_info = first.summary.run
    assert (run_info.mode, run_info.rate_per_s, run_info.concurrency) == ("open_loop", 20.0, None)
    assert first.summary.load.start_delay_ms is not None and first.summary.load.start_delay_ms.count == 10
    assert 200 < arrivals[-1] < 2000  # ten arrivals at 20/s: about half a second, seeded
    capped = run(engine, engine_loop, tmp_path, "capped", num_flows=10, rate=200.0, concurrency=1, warmup=0)
    assert capped.summary.load.achieved_concurrency.max == 1
    assert capped.summary.load.start_delay_ms is not None
    assert capped.summary.load.start_delay_ms.max > 100  # arrivals waited for the one slot
    # the summary serialises to plain JSON, and what is on disk reads back as the same summary
    document = json.loads(json.dumps(capped.summary.to_json()))
    assert RunSummary.model_validate(document).to_json() == capped.summary.to_json()
    on_disk = RunSummary.model_validate_json((capped.run_dir / SUMMARY).read_text())
    assert on_disk.to_json() == capped.summary.to_json()


def workflow_records(run_dir: Path) -> list[WorkflowRecord]:
    def present(value: object) -> object:
        return None if isinstance(value, float) and math.isnan(value) else value

    rows = workflow_frame(RunStore(run_dir)).to_dict(orient="records")
    return [WorkflowRecord(**{key: present(value) for key, value in row.items()}) for row in rows]


def test_open_loop_latency_counts_from_the_scheduled_arrival(engine, engine_loop, tmp_path):
    """An overloaded cap: 10 arrivals in ~50 ms, one slot. Each workflow's makespan stays short while
    the later arrivals queue; their latency from arrival must show that wait (no coordinated omission)."""
    capped = run(engine, engine_loop, tmp_path, "late", num_flows=10, rate=200.0, concurrency=1, warmup=0)
    records = workflow_records(capped.run_dir)
    assert len(records) == 10 and all(record.ok for record in records)
    for record in records:  # latency = slot wait + makespan, per workflow, up to the 1 us rounding
        assert record.start_delay_ms is not None and record.start_delay_ms >= 0
        assert record.latency_ms == pytest.approx(record.start_delay_ms + record.workflow_ms, abs=0.003)
    waits = sorted(record.start_delay_ms or 0.0 for record in records)
    makespans = [record.workflow_ms for record in records]
    assert waits[-1] > 4 * min(makespans)  # the last arrival waited for most of the others
    latency = capped.summary.latency
    assert latency.workflow_latency_ms.count == 10
    assert latency.workflow_latency_ms.p50 == pytest.approx(np.median([r.latency_ms for r in records]))
    assert latency.workflow_latency_ms.p50 > latency.workflow_ms.p50 + np.median(waits) / 2
    assert capped.summary.load.start_delay_ms.max == pytest.approx(waits[-1])
    assert "from scheduled arrival" in workflow_text(capped.summary)  # the report shows it beside

    closed = run(engine, engine_loop, tmp_path, "closed", num_flows=4, concurrency=2, warmup=0)
    for record in workflow_records(closed.run_dir):  # closed loop: no schedule, nothing to wait for
        assert record.start_delay_ms is None and record.latency_ms == record.workflow_ms
    assert closed.summary.latency.workflow_latency_ms == closed.summary.latency.workflow_ms
    assert closed.summary.load.start_delay_ms is None
    assert "from scheduled arrival" not in workflow_text(closed.summary)
