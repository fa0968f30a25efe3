"""The engine model under agent sessions: requests released by their dependencies, per-GPU prefix caches.

A session's request is released when every request it needs has finished, plus its think time (a root
request: its session's start plus its think time), and goes to a GPU chosen at release: the session's own
GPU (session-affine routing, sessions dealt to GPUs in start order) or the next GPU in turn (round-robin).
Each GPU runs the scheduler of `flowperf.stress.engine` (vLLM V1: running requests first, chunked
prefill, preemption by recompute of the last admitted) with its own prefix cache: prompt blocks named by
hash, registered when their slots are allocated and kept in an LRU as large as the GPU's KV cache, so
sessions starting together share a system prompt being prefilled, and a session whose pause is long while
others fill the cache finds its blocks evicted and pays its prefill again.

A closed loop (`concurrency` > 0) keeps that many sessions in flight: the first `concurrency` start at 0,
and each finished session starts the next one in the list at its finish. Otherwise every session starts at
its own `session_start`.

Unlike the open-loop engine model, arrivals depend on completions, so the GPUs cannot be simulated one
after another: one loop advances whichever GPU's clock is earliest, delivering every release due by then
first. Iteration i (counted over all GPUs) costs the linear model times `scale[i % scale.size]`, the
per-iteration multipliers of a perturbed replica (all ones for the model's expectation).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from flowperf.stress.engine import _lru_touch, cache_allocated, iteration_cost
from flowperf.stress.heap import heap_remove, heap_set

NO_GPU = -1


@njit(cache=True)
def _queue_push(head, tail, link, gpu, r, front):
    """Put request `r` at the back (or the front) of `gpu`'s waiting queue, a linked list over `link`."""
    if head[gpu] < 0:
        head[gpu], tail[gpu], link[r] = r, r, -1
    elif front:
        link[r] = head[gpu]
        head[gpu] = r
    else:
        link[tail[gpu]] = r
        link[r] = -1
        tail[gpu] = r


@njit(cache=True)
def _release_children(r, at, child_offsets, children, remaining, ready, think, release, heap, pos, size):
    """Request `r` finished at `at`: each request that needed it is one need closer to release."""
    for j in range(child_offsets[r], child_offsets[r + 1]):
        child = children[j]
        remaining[child] -= 1
        ready[child] = max(ready[child], at)
        if remaining[child] == 0:
            size = heap_set(heap, pos, release, size, child, ready[child] + think[child])
    return size


@njit(cache=True)
def _start_session(s, at, session_offsets, session_start, remaining, ready, think, release, heap, pos, size):
    """Session `s` starts at `at` (recorded in `session_start`): its root requests are released after
    their think time."""
    session_start[s] = at
    for r in range(session_offsets[s], session_offsets[s + 1]):
        ready[r] = at
        if remaining[r] == 0:
            size = heap_set(heap, pos, release, size, r, at + think[r])
    return size


# One hot compiled loop, exempt from the size rules: splitting it costs a call per iteration in nopython mode.
@njit(cache=True)
def session_loop(  # noqa: C901
    session_offsets,
    session_start,
    session_gpu,
    concurrency,
    needs_count,
    child_offsets,
    children,
    think,
    prompt,
    output,
    hash_offsets,
    ids,
    n_hash,
    block_tokens,
    n_gpus,
    round_robin,
    max_seqs,
    budget_cap,
    kv_blocks,
    block_size,
    caching,
    coefficients,
    scale,
    release,
    start,
    first,
    finish,
    hit_tokens,
    gpu_of,
    per_gpu,
):
    """Serve every session; fills the per-request arrays and `per_gpu` rows of (busy s, iterations,
    preemptions, KV block-seconds held, peak KV blocks held). `coefficients` is (a, b, c, d, e, f): f
    prices the prefill's attention, per (query, key) pair of each prompt chunk over its context."""
    n = prompt.size
    n_sessions = session_offsets.size - 1
    a, b, c = coefficients[0], coefficients[1], coefficients[2]
    d, e, f = coefficients[3], coefficients[4], coefficients[5]
    remaining = needs_count.copy()
    ready = np.zeros(n)
    left_in_session = np.diff(session_offsets).copy()
    session_of = np.zeros(n, np.int64)
    for s in range(n_sessions):
        session_of[session_offsets[s] : session_offsets[s + 1]] = s
    computed = np.zeros(n, np.int64)
    generated = np.zeros(n, np.int64)
    held = np.zeros(n, np.int64)
    shared = np.zeros(n, np.int64)
    cached_blocks = np.zeros(n, np.int64)
    link = np.full(n, -1, np.int64)
    qhead = np.full(n_gpus, -1, np.int64)
    qtail = np.full(n_gpus, -1, np.int64)
    run = np.zeros((n_gpus, max_seqs), np.int64)
    chunk = np.zeros(max_seqs, np.int64)
    n_run = np.zeros(n_gpus, np.int64)
    free = np.full(n_gpus, kv_blocks, np.int64)
    now = np.zeros(n_gpus)
    slots = max(n_hash, 1)
    prev = np.full((n_gpus, slots), -1, np.int64)
    nxt = np.full((n_gpus, slots), -1, np.int64)
    present = np.zeros((n_gpus, slots), np.bool_)
    lru = np.full((n_gpus, 3), -1, np.int64)
    lru[:, 2] = 0
    capacity = kv_blocks * block_size // block_tokens if caching and block_tokens > 0 else 0
    heap = np.zeros(n, np.int64)
    pos = np.full(n, -1, np.int64)
    size = 0
    started = n_sessions if concurrency <= 0 else min(concurrency, n_sessions)
    for s in range(started):
        size = _start_session(
            s, 0.0 if concurrency > 0 else session_start[s], session_offsets, session_start, remaining,
            ready, think, release, heap, pos, size,
        )  # fmt: skip
    turn = 0
    iterations = 0
    while True:
        g = -1
        earliest = np.inf
        for k in range(n_gpus):
            if (n_run[k] > 0 or qhead[k] >= 0) and now[k] < earliest:
                g, earliest = k, now[k]
        if size > 0 and release[heap[0]] <= earliest:
            r = heap[0]
            size = heap_remove(heap, pos, release, size, r)
            k = turn % n_gpus if round_robin else session_gpu[session_of[r]]
            turn += 1
            gpu_of[r] = k
            if n_run[k] == 0 and qhead[k] < 0:
                now[k] = max(now[k], release[r])
            _queue_push(qhead, qtail, link, k, r, False)
            continue
        if g < 0:
            break
        budget = budget_cap
        preempted = False
        scheduled = 0
        while scheduled < n_run[g] and budget > 0:
            r = run[g, scheduled]
            tokens = min(prompt[r] + generated[r] - computed[r], budget)
            need = (computed[r] + tokens + block_size - 1) // block_size - shared[r] - held[r]
            while need > free[g] and n_run[g] > scheduled:
                n_run[g] -= 1
                victim = run[g, n_run[g]]
                free[g] += held[victim]
                held[victim] = 0
                shared[victim] = 0
                computed[victim] = 0
                _queue_push(qhead, qtail, link, g, victim, True)
                per_gpu[g, 2] += 1
                preempted = True
            if n_run[g] == scheduled:
                break
            chunk[scheduled] = tokens
            budget -= tokens
            free[g] -= need
            held[r] += need
            cache_allocated(
                r, computed[r] + tokens, prompt[r], hash_offsets[r], hash_offsets[r + 1], block_tokens,
                cached_blocks, ids, prev[g], nxt[g], present[g], lru[g], capacity,
            )  # fmt: skip
            scheduled += 1
        while (
            not preempted and scheduled == n_run[g] and n_run[g] < max_seqs and budget > 0 and qhead[g] >= 0
        ):
            r = qhead[g]
            total = prompt[r] + generated[r]
            hit = 0
            blocks = 0
            lo, hi = hash_offsets[r], hash_offsets[r + 1]
            if caching:
                while lo + blocks < hi and present[g, ids[lo + blocks]]:
                    blocks += 1
                hit = (max(min(blocks * block_tokens, total - 1), 0) // block_size) * block_size
            tokens = min(total - hit, budget)
            need = (hit + tokens + block_size - 1) // block_size - hit // block_size
            if need > free[g]:
                break
            for j in range(blocks):
                _lru_touch(ids[lo + j], prev[g], nxt[g], present[g], lru[g], capacity)
            cache_allocated(
                r, hit + tokens, prompt[r], lo, hi, block_tokens, cached_blocks, ids, prev[g], nxt[g],
                present[g], lru[g], capacity,
            )  # fmt: skip
            qhead[g] = link[r]
            if math.isnan(start[r]):
                start[r] = now[g]
                hit_tokens[r] = hit
            computed[r] = hit
            shared[r] = hit // block_size
            held[r] = need
            free[g] -= need
            run[g, n_run[g]] = r
            chunk[n_run[g]] = tokens
            n_run[g] += 1
            budget -= tokens
            scheduled = n_run[g]
        if scheduled == 0:
            continue
        took = iteration_cost(run[g], chunk, scheduled, generated, prompt, computed, a, b, c, d, e, f)
        took *= scale[iterations % scale.size]
        iterations += 1
        now[g] += took
        per_gpu[g, 0] += took
        per_gpu[g, 1] += 1
        used = kv_blocks - free[g]
        per_gpu[g, 3] += used * took
        per_gpu[g, 4] = max(per_gpu[g, 4], used)
        kept = 0
        for i in range(n_run[g]):
            r = run[g, i]
            if i < scheduled:
                computed[r] += chunk[i]
                if computed[r] >= prompt[r] + generated[r]:
                    generated[r] += 1
                    if generated[r] == 1:
                        first[r] = now[g]
                    if generated[r] >= output[r]:
                        finish[r] = now[g]
                        free[g] += held[r]
                        held[r] = 0
                        size = _release_children(
                            r, now[g], child_offsets, children, remaining, ready, think, release, heap, pos,
                            size,
                        )  # fmt: skip
                        s = session_of[r]
                        left_in_session[s] -= 1
                        if left_in_session[s] == 0 and concurrency > 0 and started < n_sessions:
                            size = _start_session(
                                started, now[g], session_offsets, session_start, remaining, ready, think,
                                release, heap, pos, size,
                            )  # fmt: skip
                            started += 1
                        continue
            run[g, kept] = r
            kept += 1
        n_run[g] = kept
    return iterations
