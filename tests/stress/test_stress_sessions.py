"""Sessions in the simulator: release by dependencies and think time, per-GPU LRU prefix caches, routing."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowperf.errors import UserError
from flowperf.sessions.format import TraceHeader, TraceRequest, read_trace, write_trace
from flowperf.stress.engine import EngineConfig, Prefixes, _lru_touch, simulate_engine
from flowperf.stress.service import ServiceModel
from flowperf.stress.session_plan import Slo, find_gpus
from flowperf.stress.sessions import (
    repeat_sessions,
    session_figures,
    simulate_sessions,
    workload_from_trace,
)

# Round costs so hand-worked times are exact sums: prefill 10 ms + 1 ms per token, decode 5 ms.
ROUND = ServiceModel(
    prefill_base_s=0.01, prefill_per_token_s=0.001, decode_base_s=0.005, decode_per_request_s=0.0
)
ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=4096, kv_cache_tokens=100_000, block_size=16)


def _trace(tmp_path: Path, requests: list[TraceRequest], scope: str = "global"):
    path = tmp_path / f"trace-{len(list(tmp_path.iterdir()))}.jsonl"
    write_trace(path, TraceHeader(block_size=16, source="synthetic", hash_scope=scope), requests)
    return workload_from_trace(read_trace(path))


def _req(session, id, *, needs=(), think=0.0, start=0.0, prompt=16, output=2, hashes=None):
    hashes = list(range(-(-prompt // 16))) if hashes is None else hashes
    return TraceRequest(
        session=session,
        id=id,
        needs=list(needs),
        think_ms=think,
        start_ms=start,
        prompt_tokens=prompt,
        output_tokens=output,
        hash_ids=hashes,
    )


def test_dependency_and_think_time_by_hand(tmp_path):
    """a: prefill 32 tokens (42 ms) then 3 decodes (15 ms): ends at 57 ms; b needs a and thinks 1 s, so
    it is released at 1.057 s, finds a's two blocks cached (32 tokens), prefills 16 (26 ms) and decodes
    once (5 ms); c, another session starting at 0.5 s, shares block 1 but must compute its one block."""
    workload = _trace(
        tmp_path,
        [
            _req("s1", "a", prompt=32, output=4, hashes=[1, 2]),
            _req("s1", "b", needs=["a"], think=1000, start=10, prompt=48, output=2, hashes=[1, 2, 3]),
            _req("s2", "c", start=500, prompt=16, output=3, hashes=[1]),
        ],
    )
    outcome = simulate_sessions(workload, 1, ENGINE, ROUND)
    np.testing.assert_allclose(outcome.release, [0.0, 1.057, 0.5])
    np.testing.assert_allclose(outcome.first_token, [0.042, 1.083, 0.526])
    np.testing.assert_allclose(outcome.finish, [0.057, 1.088, 0.536])
    np.testing.assert_array_equal(outcome.hit_tokens, [0, 32, 0])
    figures = session_figures(workload, outcome, ENGINE)
    assert figures["sessions_completed"] == 2
    assert figures["ttft_by_depth"]["2"]["p50_s"] == pytest.approx(0.026)
    assert figures["cache_hit_by_think"]["1-10s"]["hit"] == pytest.approx(32 / 48)


def test_sub_agents_run_in_parallel_and_join(tmp_path):
    """Two sub-agents released together by their parent run in the same iterations (so each finishes
    long before twice its solo time), and the join waits for the later one plus its think time."""
    workload = _trace(
        tmp_path,
        [
            _req("s", "root", output=1),
            _req("s", "x", needs=["root"], prompt=64, output=20, hashes=[10, 11, 12, 13]),
            _req("s", "y", needs=["root"], prompt=64, output=40, hashes=[20, 21, 22, 23]),
            _req("s", "join", needs=["x", "y"], think=200, output=1, hashes=[30]),
        ],
    )
    outcome = simulate_sessions(workload, 1, ENGINE, ROUND)
    root_end = 0.026
    assert outcome.release[1] == outcome.release[2] == pytest.approx(root_end)
    # one prefill of both prompts (10 + 128 ms), then x's 19 and y's 39 decodes side by side
    assert outcome.first_token[1] == outcome.first_token[2] == pytest.approx(root_end + 0.138)
    assert outcome.finish[1] == pytest.approx(root_end + 0.138 + 19 * 0.005)
    assert outcome.finish[2] == pytest.approx(root_end + 0.138 + 39 * 0.005)
    assert outcome.release[3] == pytest.approx(outcome.finish[2] + 0.2)


def test_closed_loop_starts_the_next_session_when_one_ends(tmp_path):
    workload = _trace(tmp_path, [_req(f"s{k}", f"r{k}", start=k * 1000.0, hashes=[k]) for k in range(3)])
    outcome = simulate_sessions(workload, 1, ENGINE, ROUND, concurrency=1)
    np.testing.assert_allclose(outcome.session_start[1:], outcome.finish[:2])


@pytest.mark.parametrize("spread_s", [300, 0])
def test_single_request_sessions_match_the_open_loop_engine(tmp_path, spread_s):
    """Sessions of one request each under round-robin routing are the open-loop engine model's requests
    (request i to GPU i mod n), which is checked against its plain-Python reference elsewhere. Starts
    all at 0 make requests with the shared blocks meet in one iteration."""
    rng = np.random.default_rng(3)
    n = 60
    starts = np.sort(rng.uniform(0, spread_s, n)).round(3)
    prompts = rng.integers(1, 300, n)
    shared = [int(v) for v in rng.integers(0, 4, 3)]
    requests = [
        _req(
            f"s{i:03d}",
            f"r{i}",
            start=float(starts[i]),
            prompt=int(prompts[i]),
            output=int(rng.integers(1, 60)),
            hashes=(shared + list(range(1000 * i, 1000 * i + 40)))[: -(-int(prompts[i]) // 16)],
        )
        for i in range(n)
    ]
    workload = _trace(tmp_path, requests)
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=256, kv_cache_tokens=512, block_size=16)
    outcome = simulate_sessions(workload, 2, engine, ROUND, routing="round-robin")
    row = np.arange(n)
    prefixes = Prefixes(row, workload.hash_offsets, workload.ids, 16)
    expected = simulate_engine(
        workload.session_start_s, workload.prompt_tokens, workload.output_tokens, 2, engine, ROUND, prefixes
    )
    np.testing.assert_allclose(outcome.first_token, expected.first_token)
    np.testing.assert_allclose(outcome.finish, expected.finish)
    assert int(outcome.per_gpu[:, 2].sum()) == expected.preemptions > 0


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 6),
    touches=st.lists(st.integers(0, 9), min_size=1, max_size=80),
)
def test_lru_matches_an_ordered_dict(capacity, touches):
    prev, nxt = np.full(10, -1, np.int64), np.full(10, -1, np.int64)
    present, state = np.zeros(10, np.bool_), np.array([-1, -1, 0], np.int64)
    reference: OrderedDict[int, None] = OrderedDict()
    for block in touches:
        _lru_touch(block, prev, nxt, present, state, capacity)
        reference[block] = None
        reference.move_to_end(block)
        while len(reference) > capacity:
            reference.popitem(last=False)
        assert set(np.flatnonzero(present)) == set(reference)
    order, block = [], state[0]
    while block >= 0:
        order.append(int(block))
        block = nxt[block]
    assert order == list(reference)


def _pause_trace(tmp_path, pause_ms):
    """Session a: two turns on 4 private blocks, with `pause_ms` between; session b meanwhile streams
    requests of 4 fresh blocks each through a cache of 8 blocks."""
    requests = [
        _req("a", "a1", prompt=64, output=1, hashes=[0, 1, 2, 3]),
        _req("a", "a2", needs=["a1"], think=pause_ms, prompt=64, output=1, hashes=[0, 1, 2, 3]),
    ]
    previous: list[str] = []
    for k in range(6):
        requests.append(
            _req(
                "b",
                f"b{k}",
                needs=previous,
                think=100,
                prompt=64,
                output=1,
                hashes=[100 + 4 * k + j for j in range(4)],
            )
        )
        previous = [f"b{k}"]
    return _trace(tmp_path, requests)


def test_a_long_pause_while_others_fill_the_cache_pays_the_prefill_again(tmp_path):
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=4096, kv_cache_tokens=128, block_size=16)
    short = simulate_sessions(_pause_trace(tmp_path, 50), 1, engine, ROUND)
    long = simulate_sessions(_pause_trace(tmp_path, 2000), 1, engine, ROUND)
    assert short.hit_tokens[1] == 48  # all but the last block (one token is always computed)
    assert long.hit_tokens[1] == 0


def test_session_affine_routing_keeps_a_sessions_hits(tmp_path):
    """Three sessions of three turns on two GPUs: affine routing keeps each session on its GPU, so later
    turns hit their cached prefix; round-robin deals turns to GPUs in release order, moving sessions."""
    requests = []
    for s in ("a", "b", "c"):
        base = 100 * "abc".index(s)
        requests += [
            _req(s, f"{s}1", prompt=64, output=1, hashes=[base + j for j in range(4)]),
            _req(
                s,
                f"{s}2",
                needs=[f"{s}1"],
                think=10,
                prompt=80,
                output=1,
                hashes=[base + j for j in range(5)],
            ),
            _req(
                s,
                f"{s}3",
                needs=[f"{s}2"],
                think=10,
                prompt=96,
                output=1,
                hashes=[base + j for j in range(6)],
            ),
        ]
    workload = _trace(tmp_path, requests)
    affine = simulate_sessions(workload, 2, ENGINE, ROUND, routing="session")
    spread = simulate_sessions(workload, 2, ENGINE, ROUND, routing="round-robin")
    assert affine.hit_tokens.sum() == 3 * (64 + 80)
    assert all(len(set(affine.gpu_of[3 * k : 3 * k + 3])) == 1 for k in range(3))
    assert spread.hit_tokens.sum() < affine.hit_tokens.sum()


def test_a_request_scheduled_with_another_hits_the_blocks_it_allocated(tmp_path):
    """vLLM V1 caches a prompt's full blocks when it allocates them, so of two sessions whose first turns
    have the same 4-block prompt and start together, the second, scheduled in the same iteration, finds
    all 4 blocks and, as a full-prompt hit recomputes the last token (its whole block: hits are whole
    blocks), skips 3 blocks: 48 tokens (blocks cached only once computed would give it 0)."""
    requests = [_req(s, f"{s}1", prompt=64, output=1, hashes=[0, 1, 2, 3]) for s in ("a", "b")]
    outcome = simulate_sessions(_trace(tmp_path, requests), 1, ENGINE, ROUND)
    assert list(outcome.hit_tokens) == [0, 48]
    assert list(outcome.first_token) == pytest.approx([0.01 + 0.001 * (64 + 16)] * 2)  # one iteration


def test_a_chunked_prefill_still_running_serves_its_allocated_blocks(tmp_path):
    """A 128-token prompt chunked by a 100-token budget: its first step allocates 6 full blocks, its
    second the last 28 tokens and so all 8 blocks; the same prompt, waiting for budget, joins that second
    step and finds all 8 (hit 112, the last block recomputed), not just the 6 computed before it."""
    requests = [_req(s, f"{s}1", prompt=128, output=1, hashes=list(range(8))) for s in ("a", "b")]
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=100, kv_cache_tokens=100_000, block_size=16)
    outcome = simulate_sessions(_trace(tmp_path, requests), 1, engine, ROUND)
    assert list(outcome.hit_tokens) == [0, 112]
    assert outcome.first_token[1] == pytest.approx((0.01 + 0.1) + (0.01 + 0.001 * (28 + 16)))


def test_local_hash_scope_does_not_share_blocks_between_sessions(tmp_path):
    requests = [
        _req("a", "a1", prompt=64, output=1, hashes=[0, 1, 2, 3]),
        _req("b", "b1", start=1000, prompt=64, output=1, hashes=[0, 1, 2, 3]),
    ]
    assert simulate_sessions(_trace(tmp_path, requests), 1, ENGINE, ROUND).hit_tokens[1] == 48
    assert simulate_sessions(_trace(tmp_path, requests, "local"), 1, ENGINE, ROUND).hit_tokens[1] == 0


def test_repeated_sessions_keep_shared_blocks_and_renumber_private_ones(tmp_path):
    requests = [
        _req("a", "a1", prompt=32, output=1, hashes=[7, 1]),
        _req("b", "b1", start=10, prompt=32, output=1, hashes=[7, 2]),
    ]
    workload = _trace(tmp_path, requests)
    more = repeat_sessions(workload, 6, np.random.default_rng(0))
    assert more.sessions == 6
    first_blocks = more.ids[more.hash_offsets[:-1]]
    assert len(set(first_blocks)) == 1  # block 7 is shared by both sessions: one id in every copy
    second_blocks = more.ids[more.hash_offsets[:-1] + 1]
    assert len(set(second_blocks)) == 6  # each copy's private block is its own


def _fake_bands(medians: dict[int, float]):
    """An evaluation whose SLO figure at n GPUs is `medians[n]` with a band of +-10%."""

    def evaluate(load, n):
        value = medians[n]
        bands = {"session_p95_s": {"median": value, "p5": 0.9 * value, "p95": 1.1 * value}}
        return {"n_gpus": n, "bands": bands, "expected": {}}

    return evaluate


def test_find_gpus_bisects_each_answer():
    medians = {
        n: 100.0 / n for n in range(1, 65)
    }  # limit 10.5 s: median met from 10 GPUs, p95 from 11, p5 from 9
    slo = Slo.parse("session_p95_ms=10500")
    found = find_gpus(None, slo, 64, _fake_bands(medians))
    assert found["gpus"] == {"sure": 11, "median": 10, "optimistic": 9}
    assert len(found["evaluated"]) < 15  # doubled then bisected, not scanned
    assert find_gpus(None, slo, 8, _fake_bands(medians))["gpus"] == {
        "sure": None,
        "median": None,
        "optimistic": None,
    }


def test_slo_names_are_checked():
    with pytest.raises(ValueError, match="session_p95_ms"):
        Slo.parse("makespan=3")
    assert Slo.parse("ttft_p95_ms=250").limit_s == 0.25


def test_bench_stress_sessions_finds_gpus_with_a_band(tmp_path, bench_stress):
    """Eight sessions of four turns, closed loop of 8 over 24 sessions, replicas from a noisy
    calibration: the answer is the GPU count whose replicas meet the SLO, and one fewer does not."""
    requests = []
    for s in range(8):
        for turn in range(4):
            requests.append(
                _req(
                    f"s{s}",
                    f"s{s}t{turn}",
                    needs=[f"s{s}t{turn - 1}"] if turn else [],
                    think=50,
                    start=s,
                    prompt=256 + 64 * turn,
                    output=40,
                    hashes=[1000 * s + j for j in range(16 + 4 * turn)],
                )
            )
    trace = tmp_path / "sessions.jsonl"
    write_trace(trace, TraceHeader(block_size=16, source="synthetic"), requests)
    rng = np.random.default_rng(0)
    logs = np.zeros(2000)
    for i in range(1, logs.size):
        logs[i] = 0.6 * logs[i - 1] + rng.normal(0, 0.2)
    from flowperf.stress.noise import fit_noise

    calibration = tmp_path / "calibration.json"
    calibration.write_text(
        json.dumps({"service": ROUND.model_dump(), "noise": fit_noise(np.exp(logs)).as_dict()})
    )
    out = tmp_path / "out"
    shown = bench_stress(
        "--sessions",
        trace,
        "--calibration",
        calibration,
        "--concurrency",
        8,
        "--num-sessions",
        24,
        "--slo",
        "session_p95_ms=3000",
        "--find-gpus",
        "--max-gpus",
        16,
        "--replicas",
        20,
        "--out",
        out,
        "--batch-size",
        64,
    )
    assert shown.exit_code == 0, shown.output
    result = json.loads((out / "sessions.json").read_text())["result"]
    sure = result["gpus"]["sure"]
    assert sure is not None and result["gpus"]["optimistic"] <= result["gpus"]["median"] <= sure
    by_gpus = {row["n_gpus"]: row for row in result["evaluated"]}
    assert by_gpus[sure]["bands"]["session_p95_s"]["p95"] <= 3.0
    if sure > 1:
        assert by_gpus[sure - 1]["bands"]["session_p95_s"]["p95"] > 3.0
    assert by_gpus[sure]["expected"]["sessions_completed"] == 24


def test_session_flags_need_a_trace(bench_stress, tmp_path):
    shown = bench_stress("--find-gpus", "--out", tmp_path)
    assert isinstance(shown.exception, UserError)
    assert str(shown.exception) == "--find-gpus: goes with --sessions TRACE"
