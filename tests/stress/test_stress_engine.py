"""The engine model (vLLM V1's scheduler): the compiled loop against the plain reference, queueing theory,
and the behaviours it exists for (chunked prefill, prefix caching, preemption)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_reference import reference_engine
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ODD_SERVICE
from flowperf.stress.engine import EngineConfig, Prefixes, simulate_engine
from flowperf.stress.service import ServiceModel
from flowperf.stress.sim import SimConfig, simulate

ODD_ENGINE_SERVICE = ODD_SERVICE.model_copy(
    update={"decode_per_context_token_s": 3.1e-6, "prefill_attention_s": 2.3e-9}
)


def shared_prefix_blocks(rng: np.random.Generator, n: int, prompt: np.ndarray, block_tokens: int):
    """Per request, hash ids whose first blocks come from a few shared conversations, the rest fresh."""
    fresh = 1000
    blocks = []
    for i in range(n):
        count = -(-int(prompt[i]) // block_tokens)
        family = int(rng.integers(0, 3))
        common = int(rng.integers(0, count + 1))
        ids = [family * 100 + j for j in range(common)] + list(range(fresh, fresh + count - common))
        fresh += count
        blocks.append(ids)
    return blocks


def prefixes_of(blocks, block_tokens):
    offsets = np.concatenate([[0], np.cumsum([len(ids) for ids in blocks])]).astype(np.int64)
    flat = np.array([h for ids in blocks for h in ids], dtype=np.int64)
    return Prefixes(np.arange(len(blocks)), offsets, flat, block_tokens)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    n_gpus=st.integers(1, 3),
    max_seqs=st.integers(1, 5),
    budget=st.integers(1, 300),
    block_size=st.sampled_from([1, 4, 16]),
    kv_factor=st.floats(1.0, 4.0),
    caching=st.booleans(),
    known=st.booleans(),
    scaled=st.booleans(),
    bunched=st.booleans(),
)
def test_engine_loop_matches_the_reference(
    seed, n, n_gpus, max_seqs, budget, block_size, kv_factor, caching, known, scaled, bunched
):
    rng = np.random.default_rng(seed)
    arrival = np.sort(np.round(rng.exponential(0.05, n).cumsum() / 0.01) * 0.01)
    if bunched:  # requests arriving together, so shared blocks meet within one iteration
        arrival = np.floor(arrival / 0.5) * 0.5
    prompt, output = rng.integers(0, 200, n), rng.integers(1, 40, n)
    block_tokens = int(rng.choice([8, 32]))
    blocks = shared_prefix_blocks(rng, n, prompt, block_tokens)
    largest = int((prompt + output - 1).max())
    engine = EngineConfig(
        max_num_seqs=max_seqs,
        max_num_batched_tokens=budget,
        kv_cache_tokens=int(-(-largest // block_size) * block_size * kv_factor),
        block_size=block_size,
        prefix_caching=caching,
    )
    hit = rng.integers(0, 100, n) if known else None
    scale = rng.uniform(0.5, 2.0, int(rng.integers(1, 50))) if scaled else None  # a replica's multipliers
    prefixes = prefixes_of(blocks, block_tokens)
    outcome = simulate_engine(
        arrival, prompt, output, n_gpus, engine, ODD_ENGINE_SERVICE, prefixes, hit, scale=scale
    )
    *expected, busy, iterations, preemptions = reference_engine(
        arrival, prompt, output, n_gpus, engine, ODD_ENGINE_SERVICE, blocks, block_tokens, hit, scale
    )
    got = np.stack([outcome.start, outcome.first_token, outcome.finish])
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-9, atol=1e-9)
    assert outcome.busy_gpu_s == pytest.approx(busy, rel=1e-9)
    assert (outcome.iterations, outcome.preemptions) == (iterations, preemptions)


def test_one_slot_is_static_batching_of_one():
    """With one slot every iteration is a lone prefill pass or a lone decode, which the batching model
    prices the same way, so one GPU gives the static batch-of-one times exactly."""
    rng = np.random.default_rng(3)
    arrival = np.cumsum(rng.exponential(0.3, 3000))
    prompt, output = rng.integers(1, 400, 3000), rng.integers(1, 60, 3000)
    engine = EngineConfig(max_num_seqs=1, max_num_batched_tokens=10_000, kv_cache_tokens=10_000)
    outcome = simulate_engine(arrival, prompt, output, 1, engine, ODD_SERVICE)
    static = simulate(arrival, prompt, output, SimConfig(1, 1, False, ODD_SERVICE))
    got = np.stack([outcome.start, outcome.first_token, outcome.finish])
    want = np.stack([static.start, static.first_token, static.finish])
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_mean_wait_matches_pollaczek_khinchine():
    """One slot, one output token: each request is one prefill iteration of a + b * prompt, so one GPU is
    M/G/1 and its mean wait is lambda E[S^2] / (2 (1 - rho))."""
    rng = np.random.default_rng(11)
    n, rho = 2_000_000, 0.7
    service = ServiceModel(prefill_base_s=0.2, prefill_per_token_s=0.001, decode_base_s=0.1)
    prompt = rng.integers(1, 1400, n)
    seconds = 0.2 + 0.001 * prompt
    rate = rho / seconds.mean()
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    engine = EngineConfig(max_num_seqs=1, max_num_batched_tokens=2000, kv_cache_tokens=4000)
    outcome = simulate_engine(arrival, prompt, np.ones(n, np.int64), 1, engine, service)
    expected = rate * np.mean(seconds**2) / (2 * (1 - rho))
    assert float(np.mean(outcome.start - arrival)) == pytest.approx(expected, rel=0.03)


def test_a_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding():
    service = ServiceModel(
        prefill_base_s=0.0, prefill_per_token_s=0.001, decode_base_s=0.01, decode_per_request_s=0.0
    )
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=101, kv_cache_tokens=10_000)
    outcome = simulate_engine(
        np.array([0.0, 0.005]), np.array([10, 1000]), np.array([30, 2]), 1, engine, service
    )
    # request 0 decodes one token per iteration; request 1 gets the other 100 tokens of each iteration's
    # budget, so its prefill takes 10 iterations of 0.1 s after request 0's own 0.01 s, and request 0 keeps
    # decoding through them: 10 of its 29 decodes are done when request 1's prefill ends
    assert outcome.first_token[1] == pytest.approx(0.01 + 10 * 0.1)
    assert outcome.finish[0] == pytest.approx(0.01 + 10 * 0.1 + 19 * 0.01)


def test_a_shared_prefix_is_prefilled_once():
    service = ServiceModel(
        prefill_base_s=0.0, prefill_per_token_s=0.001, decode_base_s=0.0, decode_per_request_s=0.0
    )
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=10_000, kv_cache_tokens=100_000)
    blocks = [[1, 2, 3, 4], [1, 2, 3, 9]]
    arrival, prompt, output = np.array([0.0, 10.0]), np.array([2048, 2048]), np.array([1, 1])
    hits = simulate_engine(arrival, prompt, output, 1, engine, service, prefixes_of(blocks, 512))
    assert hits.first_token - arrival == pytest.approx([2.048, 0.512])
    off = EngineConfig(
        max_num_seqs=4, max_num_batched_tokens=10_000, kv_cache_tokens=100_000, prefix_caching=False
    )
    misses = simulate_engine(arrival, prompt, output, 1, off, service, prefixes_of(blocks, 512))
    assert misses.first_token - arrival == pytest.approx([2.048, 2.048])


def test_requests_scheduled_together_share_the_blocks_the_first_allocates():
    """Two requests with the same 4-block prompt arriving together: vLLM V1 caches the first's full blocks
    when it allocates them, so the second, scheduled in the same iteration, skips 3 of them (a full-prompt
    hit recomputes the last token, so its whole block): the one iteration prefills 64 + 16 tokens, where
    caching blocks only once computed prefills 128."""
    service = ServiceModel(
        prefill_base_s=0.0, prefill_per_token_s=0.001, decode_base_s=0.0, decode_per_request_s=0.0
    )
    engine = EngineConfig(max_num_seqs=4, max_num_batched_tokens=10_000, kv_cache_tokens=100_000)
    blocks = [[1, 2, 3, 4], [1, 2, 3, 4]]
    outcome = simulate_engine(
        np.zeros(2), np.array([64, 64]), np.ones(2, np.int64), 1, engine, service, prefixes_of(blocks, 16)
    )
    assert outcome.first_token == pytest.approx([0.080, 0.080])
    assert reference_engine(np.zeros(2), [64, 64], [1, 1], 1, engine, service, blocks, 16)[
        1
    ] == pytest.approx([0.080, 0.080])


def test_running_out_of_kv_blocks_preempts_by_recompute():
    """Two requests that each fit alone but not together: the later one is preempted, recomputed when
    blocks free up, and both finish with all their tokens."""
    engine = EngineConfig(max_num_seqs=2, max_num_batched_tokens=1000, kv_cache_tokens=160, block_size=16)
    outcome = simulate_engine(np.zeros(2), np.array([64, 64]), np.array([60, 60]), 1, engine, ODD_SERVICE)
    assert outcome.preemptions >= 1
    assert np.all(np.isfinite(outcome.finish)) and outcome.finish[1] > outcome.finish[0]


def test_a_request_larger_than_the_kv_cache_is_refused():
    engine = EngineConfig(kv_cache_tokens=64, block_size=16)
    with pytest.raises(ValueError, match="more KV cache than one GPU has"):
        simulate_engine(np.zeros(1), np.array([60]), np.array([10]), 1, engine, ODD_SERVICE)


def test_validate_needs_a_calibration_and_says_so_in_one_line(bench_stress, tmp_path):
    result = bench_stress("--validate", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "--validate: and --calibration go together" in str(result.exception or result.output)
