"""Concurrent and open-loop workflows on the real engine: same results as sequential, order kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faults import FaultyEngine
from flowperf.benchmark import RunHooks, run_benchmark
from flowperf.config import RunConfig
from flowperf.records import StepRecord
from flowperf.store import SUMMARY, RunStore
from flowperf.summary_schema import RunSummary
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
