"""`bench run` end to end on the real engine: in process (shared engine) and through the CLI."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from flowperf.config import RunConfig
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.records import StepRecord
from flowperf.rundir.store import RunStore
from flowperf.rundir.summary_schema import RunSummary
from helpers import ROOT, run_bench

pytestmark = pytest.mark.engine

RUN_FILES = {"config.json", "steps.jsonl", "workflows.csv", "summary.json", "timing.log", "engine.log"}


def run_config(tmp_path: Path, **overrides) -> RunConfig:
    settings = {
        "flows_dir": str(ROOT / "flows"),
        "fixtures_dir": str(ROOT / "fixtures"),
        "output": {"out_dir": str(tmp_path / "runs"), "run_id": "r"},
    } | overrides
    return RunConfig.model_validate(settings)


def test_25_flows_reuse_the_one_engine(engine, engine_loop, tmp_path: Path) -> None:
    lines: list[str] = []
    config = run_config(tmp_path, num_flows=25, max_tokens=16, flow="plan_draft_check")
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lines.append), shutdown_engine=False))
    assert result.exit_code == 0
    assert engine.info().init_count == 1
    assert result.summary.engine is not None and result.summary.engine["init_count"] == 1
    assert any(line.startswith("[TIMING] engine_init_ms=") and "reused=true" in line for line in lines)
    with (result.run_dir / "workflows.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["flow_index"]) for r in rows] == list(range(25))
    assert all(r["status"] == "ok" and r["output_tokens"] == "48" for r in rows)
    counts = result.summary.counts
    assert counts.workflows_ok == 25 and counts.steps_ok == 75
    # sequential: a workflow's steps account for all of its time but the harness's between-step work,
    # which is less than any one step (a step missing from the sum, or steps overlapping, would be off
    # by a whole step); the overhead's size is a benchmark figure (benchmarks/agentic.py), not a test's
    step_ms = {}
    for step in RunStore(result.run_dir).read_steps():
        step_ms.setdefault(step.flow_index, []).append(step.step_ms)
    for row in rows:
        between = float(row["workflow_ms"]) - float(row["step_ms_sum"])
        assert 0 <= between < min(step_ms[int(row["flow_index"])])


def test_cli_run_end_to_end(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "runs"
    done = run_bench(
        "run", "--num-flows", "3", "--save-text", "--out", str(out), "--run-id", "e2e", "--no-progress"
    )
    assert done.returncode == 0, done.stderr[-3000:]

    timing = done.timing()
    keys = [next(iter(pairs)) for pairs in timing]
    assert keys[0] == "flow_expansion_ms" and timing[0]["source"] in {"cache", "generated"}
    assert "engine_init_ms" in keys and timing[keys.index("engine_init_ms")]["reused"] == "false"
    assert [k for k in keys if k.startswith("workflow_")] == [
        "workflow_0_ms",
        "workflow_1_ms",
        "workflow_2_ms",
    ]
    total = timing[-1]
    assert keys[-1] == "benchmark_total_ms" and total["workflows"] == "3" and total["failed"] == "0"
    for pairs in timing:
        float(next(iter(pairs.values())))

    run_dir = out / "e2e"
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES
    assert (run_dir / "timing.log").read_text().splitlines() == [
        line for line in done.stdout.splitlines() if line.startswith("[TIMING]")
    ]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["engine"]["init_count"] == 1
    if len(os.sched_getaffinity(0)) > 1:  # the harness moved off the cores the engine computes on
        assert config["engine"]["details"]["harness_placement"].startswith("engine compute threads on cores")
    assert config["versions"]["vllm"] and config["versions"]["torch"]
    assert config["model"] == {"path": str(tiny_model), "name": str(tiny_model), "tiny": True}
    summary = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    assert summary.schema_version == 3
    assert summary.status == "complete"
    assert summary.counts.workflows_ok == 3
    for metric in ("workflow_ms", "step_ms", "ttft_ms"):
        block = getattr(summary.latency, metric)
        assert block.p50 <= block.p95 <= block.p99 <= block.max
    assert summary.throughput.output_tokens_per_s > 0

    steps = RunStore(run_dir).read_steps()
    assert len(steps) == len((run_dir / "steps.jsonl").read_text().splitlines()) == 9
    by_flow: dict[int, dict[str, StepRecord]] = {}
    for step in steps:
        by_flow.setdefault(step.flow_index, {})[step.step_id] = step
    for flow_steps in by_flow.values():
        summarize, critique, refine = flow_steps["summarize"], flow_steps["critique"], flow_steps["refine"]
        assert summarize.output_tokens == 64
        assert summarize.output_text and summarize.output_text in critique.prompt_text
        assert critique.output_text in refine.prompt_text
        assert summarize.output_text in refine.prompt_text
    assert "results:" in done.stderr
