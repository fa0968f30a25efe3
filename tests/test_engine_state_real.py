"""The engine's own state (telemetry/) on real vLLM engines, checked against what flowperf records per
request: a managed vLLM server overloaded (two sequences at a time, twelve clients: seconds of queue),
the in-process engine (the session's, its own Prometheus registry), and a server whose KV cache is made
tiny (preemptions).

Each run is short (few workflows, few tokens) and scraped every 50 ms. A busy CPU server answers /metrics
in up to ~1.2 s and can hold streams back to deliver them in a burst after its engine went idle, so the
overload must last seconds of engine time for several samples to land in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.engines.server import ServerRegistry
from flowperf.run.benchmark import RunHooks, RunResult, run_benchmark
from flowperf.rundir.records import EngineSample, ServerSeries
from flowperf.rundir.store import RunStore
from flowperf.telemetry.summarize import KV_USAGE, WAITING, gauge_series
from helpers import ROOT, run_in_process

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SCRAPE = {"sample_interval_s": 0, "server_metrics_interval_s": 0.05}
FLOW = str(ROOT / "flows" / "plan_draft_check.yaml")


def run_on_server(tmp_path: Path, run_id: str, engine: dict, **settings) -> RunResult:
    """A run on a managed server of these settings, which is stopped afterwards (by its id)."""
    registry = ServerRegistry()
    before = {record.id for record in registry.servers()}
    try:
        return run_in_process(tmp_path, run_id, {"kind": "server"} | engine, monitor=SCRAPE, **settings)
    finally:
        for record in registry.servers():
            if record.id not in before:
                registry.stop(record.id)


def llm_steps(result: RunResult) -> list:
    return [
        step for step in RunStore(result.run_dir).read_steps() if step.kind == "llm" and step.status == "ok"
    ]


def check_ttft_within_bucket(state, steps: list) -> None:
    """The histogram's TTFT estimates against the per-request TTFTs flowperf records.

    Three nested intervals: engine_ttft_ms (the engine core's queue to the core making the first token)
    lies inside vLLM's histogram interval (the front end's arrival to the front end handling that token),
    which lies inside the client's ttft_ms (request written to first token read). So the histogram's
    median lies between the two medians, each widened by the width of the bucket the estimate falls in
    (its resolution); the same holds for the exact means (sum / count, no buckets). On a quiet host the
    three agree closely; on a busy CPU the front end's own time moves the histogram towards the client."""
    engine_ttft = np.array([step.engine_ttft_ms for step in steps], dtype=float)
    client_ttft = np.array([step.ttft_ms for step in steps], dtype=float)
    assert state.ttft_ms.count == len(steps) and not np.isnan(engine_ttft).any()
    bucket = state.ttft_ms.p50_bucket_ms + 1e-6
    low, high = np.percentile(engine_ttft, 50), np.percentile(client_ttft, 50)
    assert low - bucket <= state.ttft_ms.p50 <= high + bucket, (state.ttft_ms, low, high)
    assert engine_ttft.mean() - 1e-3 <= state.ttft_ms.mean <= client_ttft.mean() + 1e-3, state.ttft_ms


def test_an_overloaded_vllm_server_shows_its_queue_and_its_own_counts_agree_with_the_requests(
    tiny_model: Path, tmp_path: Path
) -> None:
    result = run_on_server(
        tmp_path, "overload", {"max_num_seqs": 2}, flow=FLOW, num_flows=12, concurrency=12, max_tokens=128
    )
    assert result.exit_code == 0
    records = RunStore(result.run_dir).read_engine_metrics()
    (info,) = [record for record in records if isinstance(record, ServerSeries)]
    assert info.vllm and info.missing == [] and info.endpoint == 0
    samples = [record for record in records if isinstance(record, EngineSample)]
    assert gauge_series(samples, WAITING).max() > 0 and gauge_series(samples, KV_USAGE).max() > 0
    (state,) = result.summary.engine_state
    assert state.waiting_max and state.waiting_max > 0 and state.saturated_ms and state.saturated_ms > 0
    assert state.running_max == 2 and state.kv_usage_max and state.kv_usage_max > 0
    steps = llm_steps(result)
    assert len(steps) == 36
    assert state.prompt_tokens == sum(step.prompt_tokens for step in steps)
    assert state.generation_tokens == sum(step.output_tokens for step in steps)
    client_ratio = sum(step.cached_prompt_tokens for step in steps) / sum(
        step.prompt_tokens for step in steps
    )
    assert client_ratio > 0.2  # later steps share the task context
    assert state.prefix_cache_hit_ratio == pytest.approx(client_ratio, abs=0.02)
    check_ttft_within_bucket(state, steps)
    assert state.queue_ms.p99 and state.queue_ms.p99 > 0


def test_the_in_process_engine_fills_the_same_records(engine, engine_loop, tmp_path: Path) -> None:
    config = RunConfig.model_validate({
        "flow": FLOW, "fixtures_dir": str(ROOT / "fixtures"), "warmup": 0, "num_flows": 4, "concurrency": 4,
        "max_tokens": 8, "monitor": SCRAPE, "output": {"out_dir": str(tmp_path), "run_id": "inproc"},
    })  # fmt: skip
    shared = FaultyEngine(engine)  # passes every call through, and never shuts the session's engine down
    shared.metrics_in_process = True
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=shared))
    assert result.exit_code == 0
    records = RunStore(result.run_dir).read_engine_metrics()
    (info,) = [record for record in records if isinstance(record, ServerSeries)]
    assert info.server == "in-process" and info.vllm and info.missing == []
    (state,) = result.summary.engine_state
    steps = llm_steps(result)
    assert state.samples > 2 and state.running_max and state.running_max > 0
    assert state.kv_usage_max and state.kv_usage_max > 0
    assert state.generation_tokens == sum(step.output_tokens for step in steps)
    client_ratio = sum(step.cached_prompt_tokens for step in steps) / sum(
        step.prompt_tokens for step in steps
    )
    assert state.prefix_cache_hit_ratio == pytest.approx(client_ratio, abs=0.02)
    check_ttft_within_bucket(state, steps)


def test_a_tiny_kv_cache_counts_preemptions(tiny_model: Path, tmp_path: Path) -> None:
    """Room for 40 blocks of 32 tokens and eight growing requests of some 300 tokens each: vLLM must
    preempt, and the server's counter says so."""
    engine = {"max_model_len": 1024, "kv_cache_gib": 40 * 32 * KV_BYTES_PER_TOKEN / 1024**3}
    result = run_on_server(tmp_path, "tiny-kv", engine, flow=FLOW, num_flows=8, concurrency=8, max_tokens=64)
    assert result.exit_code == 0
    (state,) = result.summary.engine_state
    assert state.preemptions and state.preemptions > 0
    # the counter is exact; the gauge is sampled (every 50 ms, each scrape taking tens of ms on a busy
    # server), so a sample lands near, not at, the fullest moment
    assert state.kv_usage_max and state.kv_usage_max > 0.5


KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 2
"""The tiny model's KV bytes per token: layers x (K, V) x KV heads x head size x bfloat16."""
