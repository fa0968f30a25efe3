"""The engine model: N GPUs, each running vLLM V1's scheduler, fed round-robin by a router.

What it models, per GPU and per iteration, as vLLM V1's scheduler does:
- running requests first, in admission order, each taking the tokens it still needs (one for a decode, the
  rest of its prompt for a prefill) up to what is left of `max_num_batched_tokens` (chunked prefill);
- then waiting requests (preempted ones first), while a slot of `max_num_seqs` and token budget are left
  and the KV cache has the blocks the chunk needs;
- KV cache in blocks of `block_size` tokens: a request holds the blocks of the tokens it has computed; when
  a running request needs a block and none is free, the last-admitted running request is preempted by
  recompute (its blocks freed, back to the front of the queue, all its tokens recomputed later); no new
  request joins in an iteration that preempted;
- prefix caching: a trace's hash ids name prompt blocks; a GPU keeps them in an LRU as large as its KV
  cache, and a request's prefill skips its longest cached prefix (at least one token is always computed,
  as vLLM does). A request's blocks join the LRU when it is given their slots (`cache_allocated`), as
  vLLM V1's `allocate_slots` caches them, so a request scheduled later in the same iteration hits blocks
  still being prefilled. Without hash ids a request may bring its measured cache hit instead.

One iteration costs `d * decodes + e * their context tokens`, plus `a + b * prefill tokens + f * attention
pairs` if it prefills anything, else `c`, where a chunk of k prompt tokens after `before` tokens already in
the KV cache attends to k * (before + (k + 1) / 2) (query, key) pairs: piecewise linear in the
coefficients, so `a` and `b` keep their meaning from the batching model (the cost of a pass that
prefills) and `bench stress --calibrate` fits them from the same engine timings.

Simplifications (documented in docs/stress.md): a cached prefix shared by running requests is counted
once, in the cache, not in each request's blocks, and the cache's LRU capacity is the whole KV cache (vLLM
keeps blocks in use out of eviction); routing is round-robin, so GPUs are independent and simulated one
after another, each in a tight loop with no global event heap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from flowperf.stress.service import ServiceModel
from flowperf.stress.sim import Outcome, kernel_array


@dataclass(frozen=True)
class EngineConfig:
    """One GPU's vLLM engine settings; `kv_cache_tokens` is rounded down to whole blocks."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_cache_tokens: int = 400_000
    block_size: int = 16
    prefix_caching: bool = True

    @property
    def kv_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size


@dataclass(frozen=True)
class Prefixes:
    """Prefix blocks per request: request i's ids are `ids[offsets[row[i]]:offsets[row[i] + 1]]`, each
    standing for `block_tokens` prompt tokens (a trace's ragged arrays, shared across tiles by `row`)."""

    row: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    block_tokens: int
    dense: bool = False  # ids already numbered 0..distinct-1 (`dense_prefixes`), as the loop indexes them

    def densified(self) -> Prefixes:
        """The same blocks with ids numbered densely, once: replicas of one workload then skip the
        per-simulation `np.unique` over every block id (seconds for a million long prompts)."""
        if self.dense or self.ids.size == 0:
            return self
        dense = np.unique(self.ids, return_inverse=True)[1].astype(np.int64)
        return Prefixes(self.row, self.offsets, dense, self.block_tokens, dense=True)


def simulate_engine(
    arrival_s: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    n_gpus: int,
    engine: EngineConfig,
    service: ServiceModel,
    prefixes: Prefixes | None = None,
    cached_tokens: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> Outcome:
    """Serve requests sorted by arrival; request i goes to GPU i mod `n_gpus`.

    `cached_tokens` (per request, optional) is a known prefix-cache hit for requests without hash ids,
    e.g. what the engine reported for a measured run. `start` is each request's first scheduling.
    `scale` (optional) multiplies iteration i's cost by `scale[i % scale.size]`, counting iterations over
    all GPUs: the cost multipliers of one perturbed replica (`flowperf.stress.noise`).
    """
    arrival = kernel_array(arrival_s, np.float64)
    prompt, output = kernel_array(prompt_tokens, np.int64), kernel_array(output_tokens, np.int64)
    n = arrival.size
    _check(arrival, prompt, output, n_gpus, engine)
    if prefixes is None or prefixes.ids.size == 0:
        row, offsets, dense, n_hash, block_tokens = np.zeros(n, np.int64), np.zeros(2, np.int64), None, 0, 0
    else:
        prefixes = prefixes.densified()  # dense ids index the LRU's arrays
        row, offsets, block_tokens = prefixes.row, prefixes.offsets, prefixes.block_tokens
        dense = prefixes.ids
        n_hash = int(dense.max()) + 1
    hit = np.zeros(n, np.int64) if cached_tokens is None else kernel_array(cached_tokens, np.int64)
    start, first, finish = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    busy, iterations, occupancy, preemptions = _engine_loop(
        arrival, prompt, output, hit, kernel_array(row, np.int64), kernel_array(offsets, np.int64),
        kernel_array(np.zeros(0) if dense is None else dense, np.int64), n_hash, block_tokens, n_gpus,
        engine.max_num_seqs, engine.max_num_batched_tokens, engine.kv_blocks, engine.block_size,
        engine.prefix_caching, service.decode_base_s, service.decode_per_request_s,
        service.decode_per_context_token_s, service.prefill_base_s, service.prefill_per_token_s,
        service.prefill_attention_s, kernel_array(np.ones(1) if scale is None else scale, np.float64),
        start, first, finish,
    )  # fmt: skip
    fill = occupancy / max(iterations, 1) / engine.max_num_seqs
    return Outcome(start, first, finish, busy, n, fill, float(iterations), iterations + n, preemptions)


def _check(
    arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, n_gpus: int, engine: EngineConfig
) -> None:
    """Refuse what would make the loop wrong or endless: unsorted arrivals, no output, or a request whose
    tokens cannot all be held in one GPU's KV cache (vLLM refuses it too)."""
    if arrival.size and not bool(np.all(np.diff(arrival) >= 0)):
        raise ValueError("arrival times must be sorted")
    if n_gpus < 1 or min(engine.max_num_seqs, engine.max_num_batched_tokens, engine.block_size) < 1:
        raise ValueError("need at least one GPU, one sequence slot, one batched token and a block size >= 1")
    if arrival.size == 0:
        return
    if int(output.min()) < 1 or int(prompt.min()) < 0:
        raise ValueError("every request needs at least one output token and a prompt length >= 0")
    largest = int((prompt + output - 1).max())
    if math.ceil(largest / engine.block_size) > engine.kv_blocks:
        raise ValueError(
            f"a request of {largest} tokens needs more KV cache than one GPU has "
            f"({engine.kv_blocks} blocks of {engine.block_size} tokens)"
        )


@njit(cache=True)
def _lru_touch(block, prev, nxt, present, state, capacity):
    """Make `block` the most recently used cached block, inserting it (and evicting the least recently
    used when full) if absent. `state` is [least recent, most recent, count]; -1 marks an empty end."""
    if capacity <= 0:
        return
    if present[block]:
        if state[1] == block:
            return
        before, after = prev[block], nxt[block]
        if before >= 0:
            nxt[before] = after
        else:
            state[0] = after
        prev[after] = before
    else:
        if state[2] >= capacity:
            oldest = state[0]
            present[oldest] = False
            state[0] = nxt[oldest]
            if state[0] >= 0:
                prev[state[0]] = -1
            else:
                state[1] = -1
            state[2] -= 1
        present[block] = True
        state[2] += 1
    prev[block] = state[1]
    nxt[block] = -1
    if state[1] >= 0:
        nxt[state[1]] = block
    else:
        state[0] = block
    state[1] = block


@njit(cache=True)
def cache_allocated(
    r, upto, prompt_r, lo, hi, block_tokens, cached_blocks, ids, prev, nxt, present, state, capacity
):
    """Request `r` was given KV slots up to token `upto`: register its prompt hash blocks `ids[lo:hi]`
    that those tokens fill in the LRU now, as vLLM V1's `allocate_slots` does (`cache_blocks` up to the
    computed plus newly scheduled tokens), so a request scheduled later, in this iteration too, finds them
    while they are still being prefilled. Full hash blocks only until the prompt is scheduled to its end,
    then all of its blocks; `cached_blocks[r]` counts those registered."""
    if capacity <= 0:
        return
    done = hi - lo if upto >= prompt_r else upto // block_tokens
    while cached_blocks[r] < min(done, hi - lo):
        _lru_touch(ids[lo + cached_blocks[r]], prev, nxt, present, state, capacity)
        cached_blocks[r] += 1


# One hot compiled loop, exempt from the size rules: splitting it costs a call per iteration in nopython mode.
@njit(cache=True)
def iteration_cost(run, chunk, scheduled, generated, prompt, computed, a, b, c, d, e, f):
    """One engine step's time by the fitted model (docs/stress.md): a + b per prefill token + f per
    prefill attention pair (each chunk token times the context before it, its own causal half included)
    when the step prefills, else c; plus d per decoding sequence and e per context token decoded. The one
    cost both compiled loops (requests and sessions) charge."""
    prefill = 0
    pairs = 0.0
    decodes = 0
    context = 0
    for i in range(scheduled):
        r = run[i]
        if generated[r] > 0 and prompt[r] + generated[r] - computed[r] == 1:
            decodes += 1
            context += computed[r]
        else:
            prefill += chunk[i]
            pairs += chunk[i] * (computed[r] + (chunk[i] + 1) / 2.0)
    return (a + b * prefill + f * pairs if prefill > 0 else c) + d * decodes + e * context


@njit(cache=True)
def _engine_loop(  # noqa: C901
    arrival,
    prompt,
    output,
    known_hit,
    row,
    offsets,
    ids,
    n_hash,
    block_tokens,
    n_gpus,
    max_seqs,
    budget_cap,
    kv_blocks,
    block_size,
    caching,
    c,
    d,
    e,
    a,
    b,
    f,
    scale,
    start,
    first,
    finish,
):
    """Every GPU's iterations, one GPU after another; returns (busy GPU-s, iterations, sum over iterations
    of sequences scheduled, preemptions). See the module docstring for the scheduling rules."""
    n = arrival.size
    computed = np.zeros(n, np.int64)  # tokens whose KV is computed
    generated = np.zeros(n, np.int64)  # output tokens emitted
    held = np.zeros(n, np.int64)  # KV blocks held, beyond the cached prefix
    shared = np.zeros(n, np.int64)  # KV blocks of the cached prefix it started from
    cached_blocks = np.zeros(n, np.int64)  # prompt hash blocks it has put in the cache
    run = np.zeros(max_seqs, np.int64)
    chunk = np.zeros(max_seqs, np.int64)
    waiting_again = np.zeros(n, np.int64)  # preempted requests, a stack: the latest goes first
    prev = np.full(max(n_hash, 1), -1, np.int64)
    nxt = np.full(max(n_hash, 1), -1, np.int64)
    present = np.zeros(max(n_hash, 1), np.bool_)
    lru = np.full(3, -1, np.int64)
    capacity = kv_blocks * block_size // block_tokens if caching and block_tokens > 0 else 0
    busy = 0.0
    iterations = 0
    occupancy = 0
    preemptions = 0
    for gpu in range(n_gpus):
        present[:] = False
        lru[0], lru[1], lru[2] = -1, -1, 0
        mine = (n - gpu + n_gpus - 1) // n_gpus  # requests gpu, gpu + n_gpus, ...
        head = 0  # next of mine never scheduled
        tail = 0  # mine[head:tail] have arrived and wait
        n_again = 0
        n_run = 0
        free = kv_blocks
        now = 0.0
        while True:
            while tail < mine and arrival[gpu + tail * n_gpus] <= now:
                tail += 1
            if n_run == 0 and n_again == 0 and head == tail:
                if tail == mine:
                    break
                now = arrival[gpu + tail * n_gpus]
                continue
            budget = budget_cap
            preempted = False
            scheduled = 0
            while scheduled < n_run and budget > 0:
                r = run[scheduled]
                tokens = min(prompt[r] + generated[r] - computed[r], budget)
                need = (computed[r] + tokens + block_size - 1) // block_size - shared[r] - held[r]
                while need > free and n_run > scheduled:
                    n_run -= 1
                    victim = run[n_run]
                    free += held[victim]
                    held[victim] = 0
                    shared[victim] = 0
                    computed[victim] = 0
                    waiting_again[n_again] = victim
                    n_again += 1
                    preemptions += 1
                    preempted = True
                if n_run == scheduled:
                    break
                chunk[scheduled] = tokens
                budget -= tokens
                free -= need
                held[r] += need
                lo = offsets[row[r]]
                cache_allocated(
                    r, computed[r] + tokens, prompt[r], lo, offsets[row[r] + 1], block_tokens, cached_blocks,
                    ids, prev, nxt, present, lru, capacity,
                )  # fmt: skip
                scheduled += 1
            while (
                not preempted
                and scheduled == n_run
                and n_run < max_seqs
                and budget > 0
                and (n_again > 0 or head < tail)
            ):
                r = waiting_again[n_again - 1] if n_again > 0 else gpu + head * n_gpus
                total = prompt[r] + generated[r]
                hit = 0
                blocks = 0
                if caching:
                    lo, hi = offsets[row[r]], offsets[row[r] + 1]
                    while lo + blocks < hi and present[ids[lo + blocks]]:
                        blocks += 1
                    hit = max(blocks * block_tokens, known_hit[r])
                    hit = (max(min(hit, total - 1), 0) // block_size) * block_size
                tokens = min(total - hit, budget)
                need = (hit + tokens + block_size - 1) // block_size - hit // block_size
                if need > free:
                    break
                lo = offsets[row[r]]
                for j in range(blocks):
                    _lru_touch(ids[lo + j], prev, nxt, present, lru, capacity)
                cache_allocated(
                    r, hit + tokens, prompt[r], lo, offsets[row[r] + 1], block_tokens, cached_blocks, ids,
                    prev, nxt, present, lru, capacity,
                )  # fmt: skip
                if n_again > 0:
                    n_again -= 1
                else:
                    head += 1
                    start[r] = now
                computed[r] = hit
                shared[r] = hit // block_size
                held[r] = need
                free -= need
                run[n_run] = r
                chunk[n_run] = tokens
                n_run += 1
                budget -= tokens
                scheduled = n_run
            if scheduled == 0:
                continue  # everything was preempted; the next pass readmits from the freed cache
            took = iteration_cost(run, chunk, scheduled, generated, prompt, computed, a, b, c, d, e, f)
            took *= scale[iterations % scale.size]
            now += took
            busy += took
            iterations += 1
            occupancy += scheduled
            kept = 0
            for i in range(n_run):
                r = run[i]
                if i < scheduled:
                    computed[r] += chunk[i]
                    if computed[r] >= prompt[r] + generated[r]:
                        generated[r] += 1
                        if generated[r] == 1:
                            first[r] = now
                        if generated[r] >= output[r]:
                            finish[r] = now
                            free += held[r]
                            held[r] = 0
                            continue
                run[kept] = r
                kept += 1
            n_run = kept
            # A decode-only stretch: while every running request decodes, nothing can be admitted (no one
            # waits, or every slot is taken), no one finishes and the free blocks cannot run out, each
            # iteration is the last one plus one token of context per request: step only the clock.
            if n_run == 0 or n_run > budget_cap or (n_run < max_seqs and (n_again > 0 or head < tail)):
                continue
            left = (free // n_run) * block_size - 1  # no preemption: each request needs <= free // n_run
            context = 0
            for i in range(n_run):
                r = run[i]
                if generated[r] == 0 or prompt[r] + generated[r] - computed[r] != 1:
                    left = 0
                    break
                left = min(left, output[r] - generated[r] - 1)
                context += computed[r]
            steps = 0
            while steps < left and (n_run == max_seqs or tail >= mine or arrival[gpu + tail * n_gpus] > now):
                took = c + d * n_run + e * context
                took *= scale[iterations % scale.size]
                now += took
                busy += took
                iterations += 1
                occupancy += n_run
                context += n_run
                steps += 1
            for i in range(n_run if steps > 0 else 0):
                r = run[i]
                computed[r] += steps
                generated[r] += steps
                grown = (computed[r] + block_size - 1) // block_size - shared[r] - held[r]
                held[r] += grown
                free -= grown
    return busy, iterations, occupancy, preemptions
