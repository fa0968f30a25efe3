"""`bench replay`: a trace's requests on an engine, with its prefix structure, lengths and timing.

What is sent is checked on the deterministic mock server (token ids, lengths, arrival times against the
trace's timestamps); what the real engine makes of it (prefix-cache hits exactly where the trace shares
hash blocks, exact output lengths) on the in-process engine.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.flows.trace_source import prompt_ids, token_range
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.store import RunStore
from flowperf.stress.traces import Trace, load_trace
from helpers import ROOT, run_bench

# (ms, prompt tokens, output tokens, hash ids): request 1 shares request 0's first 3 blocks, request 3
# shares all of request 2's; with --token-scale 0.125 a 512-token block is 64 tokens.
ROWS = [
    (0, 2048, 16, [1, 2, 3, 4]),
    (100, 2048, 24, [1, 2, 3, 9]),
    (400, 1024, 8, [20, 21]),
    (700, 1536, 16, [20, 21, 22]),
    (750, 512, 8, [30]),
]


def write_trace(tmp_path: Path) -> Path:
    path = tmp_path / "small.jsonl"
    lines = [
        json.dumps({"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": ids})
        for ms, n, m, ids in ROWS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompts_share_exactly_the_blocks_their_hash_ids_share(tmp_path: Path) -> None:
    trace = load_trace(write_trace(tmp_path), token_scale=0.125)
    ids = token_range(512)
    prompts = [prompt_ids(trace, index, ids, seed=0) for index in range(trace.size)]
    assert [len(p) for p in prompts] == [256, 256, 128, 192, 64]
    assert np.array_equal(prompts[0][:192], prompts[1][:192]) and prompts[0][192] != prompts[1][192]
    assert np.array_equal(prompts[2], prompts[3][:128]) and not np.array_equal(
        prompts[3][128:], prompts[0][:64]
    )
    assert all(ids[0] <= p.min() and p.max() < ids[1] for p in prompts)
    again = [prompt_ids(trace, index, ids, seed=0) for index in range(trace.size)]
    assert all(np.array_equal(a, b) for a, b in zip(prompts, again, strict=True))


def test_a_trace_without_hash_ids_gets_a_unique_prompt_per_request() -> None:
    trace = Trace.of_lengths(np.array([0.0, 1.0]), np.array([100, 100]), np.array([5, 5]))
    first, second = (prompt_ids(trace, index, token_range(32000), seed=0) for index in (0, 1))
    assert len(first) == len(second) == 100
    assert (first != second).mean() > 0.99


def replay_config(tmp_path: Path, trace: Path, **overrides) -> RunConfig:
    settings = {
        "trace": {"source": str(trace), "token_scale": 0.125},
        "fixtures_dir": str(ROOT / "fixtures"),
        "warmup": 0,
        "monitor": {"sample_interval_s": 0},
        "output": {"out_dir": str(tmp_path / "runs"), "run_id": "replay"},
    }
    return RunConfig.model_validate(settings | overrides)


def test_the_mock_server_sees_the_trace_its_ids_lengths_and_timing(tmp_path: Path) -> None:
    """At --time-scale 2 requests arrive at half the trace's offsets (0, 50, 200, 350, 375 ms), each as a
    completion with the token-id prompt and exactly its output length."""
    trace = write_trace(tmp_path)
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=1)) as server:
        engine = {"kind": "openai", "base_url": f"http://127.0.0.1:{server.port}", "model": "mock"}
        config = replay_config(tmp_path, trace, engine=engine)
        config.trace.time_scale = 2.0
        result = asyncio.run(run_benchmark(config, RunHooks(echo=lambda _: None)))
        logs = sorted(server.logs, key=lambda log: log.arrived)
    expected = load_trace(trace, token_scale=0.125)
    ids = token_range(32000)  # a remote model: flowperf cannot read its vocabulary
    for index, log in enumerate(logs):
        assert log.body["prompt"] == prompt_ids(expected, index, ids, seed=0).tolist()
        assert log.body["max_tokens"] == [2, 3, 1, 2, 1][index] and log.body["ignore_eos"] is True
    offsets = np.array([(log.arrived - logs[0].arrived) * 1000.0 for log in logs])
    assert np.abs(offsets - np.array([0, 50, 200, 350, 375])).max() < 20
    assert result.summary.counts.workflows_ok == 5 and result.summary.run.mode == "open_loop"


@pytest.mark.engine
def test_the_engine_caches_exactly_the_shared_blocks(engine, engine_loop, tmp_path: Path) -> None:
    """On the real engine (KV blocks of 32 tokens) request 1 finds request 0's three shared 64-token
    blocks (192 tokens) cached and request 3 all 128 of request 2's; every request generates exactly its
    trace's output length; a resume of the finished directory has nothing left to do."""
    config = replay_config(tmp_path, write_trace(tmp_path), max_tokens=None)
    config.trace.time_scale = 1.0
    result = engine_loop.run(
        run_benchmark(config, RunHooks(echo=lambda _: None), engine=FaultyEngine(engine))
    )
    steps = sorted(RunStore(result.run_dir).read_steps(), key=lambda s: s.flow_index)
    assert [s.prompt_tokens for s in steps] == [256, 256, 128, 192, 64]
    assert [s.output_tokens for s in steps] == [2, 3, 1, 2, 1]
    assert [s.cached_prompt_tokens for s in steps] == [0, 192, 0, 128, 0]
    assert all(s.engine_ttft_ms is not None and s.engine_queue_ms is not None for s in steps)
    resumed = engine_loop.run(
        run_benchmark(
            config, RunHooks(echo=lambda _: None), resume_from=result.run_dir, engine=FaultyEngine(engine)
        )
    )
    assert resumed.summary.counts.workflows_done == 5 and resumed.summary.counts.sessions == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.jsonl"], "error: TRACE nope.jsonl: no such trace file"),
        (["mooncake", "--token-scale", "0"], "--token-scale"),
        (["mooncake", "--max-requests", "50"], "error: --max-model-len 10240: "),
        (["mooncake", "--start", "5000"], "error: --start/--duration: the window"),
    ],
)
def test_bad_replays_stop_with_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_bench("replay", *args, "--out", str(tmp_path / "runs"), "--no-progress", timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "runs").exists()
