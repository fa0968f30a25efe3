"""Per-step metrics on the real engine: every field present and consistent, warm-up left out, cache reset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.records import RUN_SCHEMA_VERSION
from flowperf.rundir.store import STEPS, SUMMARY, RunStore
from flowperf.rundir.summary_schema import Distribution, RunSummary
from helpers import ROOT

pytestmark = pytest.mark.engine

STEP_FIELDS = {
    "flow_index", "flow_id", "session", "step_index", "step_id", "max_tokens", "inflight_at_start",
    "start_offset_ms", "status", "step_ms", "ttft_ms", "tpot_ms", "itl_ms", "prompt_tokens", "output_tokens",
    "cached_prompt_tokens", "finish_reason", "engine_queue_ms", "engine_ttft_ms",
}  # fmt: skip


def run(engine, engine_loop, tmp_path: Path, run_id: str, lines: list[str] | None = None, **overrides):
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "output": {"out_dir": str(tmp_path / "runs"), "run_id": run_id},
            "monitor": {"sample_interval_s": 0.05},
        }
        | overrides
    )
    hooks = RunHooks(echo=(lines.append if lines is not None else lambda _: None))
    return engine_loop.run(run_benchmark(config, hooks, engine=FaultyEngine(engine)))


def test_every_step_record_is_complete_and_consistent(engine, engine_loop, tmp_path: Path) -> None:
    result = run(engine, engine_loop, tmp_path, "fields", num_flows=4, max_tokens=24)
    steps = [json.loads(line) for line in (result.run_dir / STEPS).read_text().splitlines()]
    assert len(steps) == 12
    for step in steps:
        assert set(step) >= STEP_FIELDS
        assert step["output_tokens"] == 24 and step["finish_reason"] == "length"
        assert 1 <= len(step["itl_ms"]) <= 23
        assert 0 < step["ttft_ms"] < step["step_ms"]
        # TPOT against the token timestamps: 23 tokens after the first span the recorded gaps (first
        # token to last) plus the short tail from the last token to the step's end
        decode_ms, gaps_ms = step["tpot_ms"] * 23, sum(step["itl_ms"])
        assert gaps_ms <= decode_ms + 0.01 and decode_ms - gaps_ms <= max(10.0, 0.2 * decode_ms)
        assert 0 <= step["cached_prompt_tokens"] <= step["prompt_tokens"]
        assert step["engine_queue_ms"] >= 0 and step["engine_ttft_ms"] > 0
    summary = result.summary
    for metric in ("workflow_ms", "step_ms", "ttft_ms", "itl_ms", "tpot_ms"):
        block = getattr(summary.latency, metric)
        assert isinstance(block, Distribution)
        for stat in ("mean", "std", "p50", "p90", "p95", "p99", "max"):
            assert getattr(block, stat) is not None, (metric, stat)
    assert summary.latency_by_step.keys() == {"summarize", "critique", "refine"}
    for block in summary.latency_by_step.values():
        assert block.step_ms.count == 4 and block.request_output_tokens_per_s > 0
    hits = {row.step_index: row.hit_ratio for row in summary.prefix_cache}
    assert hits[0] == 0.0  # first steps share no prefix across different documents (cache reset first)
    assert hits[1] > 0.5 and hits[2] > 0.5  # later steps reuse the document prefix of step 1
    assert summary.throughput.steps_per_s > 0 and summary.throughput.workflows_per_s > 0
    resources = summary.resources
    assert resources.samples > 0 and resources.peak_rss_mb > 0
    assert resources.peak_engine_rss_mb > 0  # the engine core and worker are this process's children
    assert resources.phases_ms["workflow"].count == 4

    # summary.json on disk is the same document, and reads back into the same model
    on_disk = (result.run_dir / SUMMARY).read_text()
    loaded = RunSummary.model_validate_json(on_disk)
    assert loaded.schema_version == RUN_SCHEMA_VERSION == 3
    assert loaded.to_json() == summary.to_json()
    # the on-disk shape itself (what users script against): the renamed per-step rate, not the old name
    document = json.loads(on_disk)
    assert document["schema_version"] == 3
    for block in document["latency_by_step"].values():
        assert "request_output_tokens_per_s" in block and "output_tokens_per_s" not in block
    assert "output_tokens_per_s" in document["throughput"]


def test_warmup_is_logged_but_left_out_and_the_cache_is_reset(engine, engine_loop, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(engine, engine_loop, tmp_path, "warm", lines, num_flows=3, max_tokens=4, warmup=2)
    assert [line.split("=")[0] for line in lines if "warmup_" in line] == [
        "[TIMING] warmup_0_ms",
        "[TIMING] warmup_1_ms",
    ]
    store = RunStore(result.run_dir)
    assert sorted(store.completed_flow_indices()) == [0, 1, 2]
    assert not [s for s in store.read_steps() if "warmup" in s.flow_id]
    assert result.summary.counts.steps_done == 9
    assert result.summary.run.warmup_workflows == 2 and result.summary.run.prefix_cache_reset
    assert (result.run_dir / "timing.log").read_text().count("warmup_") == 2
    first = next(s for s in store.read_steps() if s.flow_index == 0 and s.step_index == 0)
    assert first.cached_prompt_tokens == 0

    kept = run(
        engine, engine_loop, tmp_path, "kept", num_flows=1, max_tokens=4, warmup=1, reset_prefix_cache=False
    )
    first_kept = next(s for s in RunStore(kept.run_dir).read_steps() if s.step_index == 0)
    assert first_kept.cached_prompt_tokens > 0  # the warm-up ran the same record, and the cache kept it
    assert kept.summary.run.prefix_cache_reset is False
