"""Agent sessions for the simulator: a session trace as arrays, its simulation, and its figures.

`workload_from_trace` turns a `flowperf.sessions.format` trace into the arrays the compiled loop
(`session_engine.session_loop`) reads: requests grouped by session, each with its needs (as a count and
the reverse edges), think time, lengths and prompt hash blocks. Hash ids are made dense; under a `local`
hash scope the same id in two sessions is two different blocks. Everything here is a pure function of
arrays and a config: no I/O.

Loads other than the trace's own come from `at_rate` (sessions starting as a Poisson process) or a closed
loop of N sessions in flight (`concurrency`); both may need more sessions than the trace has, and
`repeat_sessions` draws them with replacement. A copy keeps the blocks its session shares with others in
the trace (a system prompt, a repository's files) and gets fresh ids for the blocks only its session used,
so copies of one session do not serve each other's private context from cache.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flowperf.sessions.format import SessionTrace
from flowperf.stats import percentile
from flowperf.stress.engine import EngineConfig
from flowperf.stress.service import ServiceModel
from flowperf.stress.session_engine import NO_GPU, session_loop
from flowperf.stress.sim import kernel_array

ROUTINGS = ("session", "round-robin")
# Think-gap bins (seconds) for the cache hit figure: a tool call, a human reply, a coffee, a meeting.
THINK_EDGES_S = (0.0, 1.0, 10.0, 60.0, 300.0)


@dataclass(frozen=True)
class SessionWorkload:
    """Requests of session s are rows `session_offsets[s]:session_offsets[s + 1]`; request r's hash
    blocks are `ids[hash_offsets[r]:hash_offsets[r + 1]]` (dense, `block_tokens` prompt tokens each)."""

    session_offsets: np.ndarray
    session_start_s: np.ndarray
    needs_count: np.ndarray
    child_offsets: np.ndarray
    children: np.ndarray
    think_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_offsets: np.ndarray
    ids: np.ndarray
    block_tokens: int
    depth: np.ndarray  # turn depth: 1 for a request with no needs, else 1 + the deepest of its needs

    @property
    def sessions(self) -> int:
        return self.session_offsets.size - 1

    @property
    def requests(self) -> int:
        return self.prompt_tokens.size


@dataclass(frozen=True)
class SessionOutcome:
    release: np.ndarray
    start: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    hit_tokens: np.ndarray
    gpu_of: np.ndarray
    session_start: np.ndarray
    per_gpu: np.ndarray  # rows: busy s, iterations, preemptions, KV block-seconds, peak KV blocks
    iterations: int


def workload_from_trace(trace: SessionTrace) -> SessionWorkload:
    """The trace's sessions as arrays, in the trace's session order (by first start)."""
    requests = [request for session in trace.sessions for request in session.requests]
    row = {request.id: index for index, request in enumerate(requests)}
    sizes = [len(session.requests) for session in trace.sessions]
    session_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    edges = [(row[need], row[request.id]) for request in requests for need in request.needs]
    parents = np.array([edge[0] for edge in edges], np.int64)
    order = np.argsort(parents, kind="stable")
    children = np.array([edge[1] for edge in edges], np.int64)[order]
    child_offsets = np.searchsorted(parents[order], np.arange(len(requests) + 1)).astype(np.int64)
    session_of = np.repeat(np.arange(len(sizes)), sizes)
    raw = [np.asarray(request.hash_ids, np.int64) for request in requests]
    lengths = np.array([part.size for part in raw], np.int64)
    flat = np.concatenate(raw) if raw else np.zeros(0, np.int64)
    if trace.header.hash_scope == "local":
        keys = np.column_stack([np.repeat(session_of, lengths), flat])
        ids = np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1) if flat.size else flat
    else:
        ids = np.unique(flat, return_inverse=True)[1].reshape(-1)
    return SessionWorkload(
        session_offsets=session_offsets,
        session_start_s=np.array([session.start_ms for session in trace.sessions]) / 1000.0,
        needs_count=np.array([len(request.needs) for request in requests], np.int64),
        child_offsets=child_offsets,
        children=children,
        think_s=np.array([request.think_ms for request in requests]) / 1000.0,
        prompt_tokens=np.array([request.prompt_tokens for request in requests], np.int64),
        output_tokens=np.array([request.output_tokens for request in requests], np.int64),
        hash_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        ids=ids.astype(np.int64),
        block_tokens=trace.header.block_size,
        depth=turn_depths([request.needs for request in requests], row),
    )


def turn_depths(needs: list[list[str]], row: dict[str, int]) -> np.ndarray:
    """1 + the longest chain of needs below each request (the trace is checked to be acyclic)."""
    depth = np.zeros(len(needs), np.int64)

    def of(index: int) -> int:
        stack = [index]
        while stack:
            top = stack[-1]
            pending = [row[need] for need in needs[top] if depth[row[need]] == 0]
            if pending:
                stack.extend(pending)
                continue
            depth[top] = 1 + max((depth[row[need]] for need in needs[top]), default=0)
            stack.pop()
        return int(depth[index])

    for index in range(len(needs)):
        if depth[index] == 0:
            of(index)
    return depth


def repeat_sessions(workload: SessionWorkload, count: int, rng: np.random.Generator) -> SessionWorkload:
    """`count` sessions: the trace's own first (in order, as far as they go), then draws with
    replacement; each copy's private blocks (used by no other session of the trace) get fresh ids."""
    own = np.arange(min(count, workload.sessions))
    drawn = rng.integers(0, workload.sessions, size=max(count - workload.sessions, 0))
    chosen = np.concatenate([own, drawn]).astype(np.int64)
    sizes = np.diff(workload.session_offsets)
    rows = np.concatenate(
        [np.arange(workload.session_offsets[s], workload.session_offsets[s + 1]) for s in chosen]
    )
    shift = np.concatenate([[0], np.cumsum(sizes[chosen])])[:-1] - workload.session_offsets[chosen]
    copy_of_row = np.repeat(np.arange(chosen.size), sizes[chosen])
    hash_lengths = np.diff(workload.hash_offsets)[rows]
    block_rows = np.concatenate(
        [np.arange(workload.hash_offsets[r], workload.hash_offsets[r + 1]) for r in rows]
    )
    ids = workload.ids[block_rows]
    owners = np.repeat(np.repeat(np.arange(workload.sessions), sizes), np.diff(workload.hash_offsets))
    sessions_per_id = np.zeros(int(workload.ids.max(initial=-1)) + 1, np.int64)
    pairs = np.unique(np.column_stack([workload.ids, owners]), axis=0) if ids.size else np.zeros((0, 2), int)
    np.add.at(sessions_per_id, pairs[:, 0], 1)
    private = sessions_per_id[ids] == 1 if ids.size else np.zeros(0, bool)
    copy_of_block = np.repeat(copy_of_row, hash_lengths)
    ids = np.where(private, ids + (copy_of_block + 1) * (sessions_per_id.size + 1), ids)
    children, child_offsets = [], [0]
    for copy, s in enumerate(chosen):
        for r in range(workload.session_offsets[s], workload.session_offsets[s + 1]):
            kids = workload.children[workload.child_offsets[r] : workload.child_offsets[r + 1]]
            children.append(kids + shift[copy])
            child_offsets.append(child_offsets[-1] + kids.size)
    return replace(
        workload,
        session_offsets=np.concatenate([[0], np.cumsum(sizes[chosen])]).astype(np.int64),
        session_start_s=workload.session_start_s[chosen],
        needs_count=workload.needs_count[rows],
        child_offsets=np.array(child_offsets, np.int64),
        children=np.concatenate(children).astype(np.int64) if children else np.zeros(0, np.int64),
        think_s=workload.think_s[rows],
        prompt_tokens=workload.prompt_tokens[rows],
        output_tokens=workload.output_tokens[rows],
        hash_offsets=np.concatenate([[0], np.cumsum(hash_lengths)]).astype(np.int64),
        ids=np.unique(ids, return_inverse=True)[1].reshape(-1).astype(np.int64),
        depth=workload.depth[rows],
    )


def at_rate(workload: SessionWorkload, sessions_per_s: float, rng: np.random.Generator) -> SessionWorkload:
    """The same sessions starting as a Poisson process of `sessions_per_s`, in their order."""
    gaps = rng.exponential(1.0 / sessions_per_s, size=workload.sessions)
    return replace(workload, session_start_s=np.cumsum(gaps) - gaps[0])


def simulate_sessions(
    workload: SessionWorkload,
    n_gpus: int,
    engine: EngineConfig,
    service: ServiceModel,
    routing: str = "session",
    concurrency: int = 0,
    scale: np.ndarray | None = None,
) -> SessionOutcome:
    """Serve the sessions on `n_gpus` GPUs; `concurrency` > 0 is a closed loop of that many sessions.
    `scale` is a replica's per-iteration cost multipliers (default: none)."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, not {routing!r}")
    _check(workload, n_gpus, engine)
    n = workload.requests
    release, start, first, finish = (np.full(n, np.nan) for _ in range(4))
    hit, gpu_of, per_gpu = np.zeros(n, np.int64), np.full(n, NO_GPU, np.int64), np.zeros((n_gpus, 5))
    session_start = kernel_array(workload.session_start_s, np.float64).copy()
    # sessions dealt to GPUs in start order, so session-affine routing spreads them evenly
    order = np.argsort(workload.session_start_s, kind="stable")
    session_gpu = np.empty(workload.sessions, np.int64)
    session_gpu[order] = np.arange(workload.sessions) % n_gpus
    coefficients = np.array(
        [
            service.prefill_base_s, service.prefill_per_token_s, service.decode_base_s,
            service.decode_per_request_s, service.decode_per_context_token_s, service.prefill_attention_s,
        ]
    )  # fmt: skip
    iterations = session_loop(
        kernel_array(workload.session_offsets, np.int64), session_start, session_gpu, concurrency,
        kernel_array(workload.needs_count, np.int64), kernel_array(workload.child_offsets, np.int64),
        kernel_array(workload.children, np.int64), kernel_array(workload.think_s, np.float64),
        kernel_array(workload.prompt_tokens, np.int64), kernel_array(workload.output_tokens, np.int64),
        kernel_array(workload.hash_offsets, np.int64), kernel_array(workload.ids, np.int64),
        int(workload.ids.max(initial=-1)) + 1, workload.block_tokens, n_gpus, routing == "round-robin",
        engine.max_num_seqs, engine.max_num_batched_tokens, engine.kv_blocks, engine.block_size,
        engine.prefix_caching, coefficients, kernel_array(np.ones(1) if scale is None else scale, np.float64),
        release, start, first, finish, hit, gpu_of, per_gpu,
    )  # fmt: skip
    return SessionOutcome(release, start, first, finish, hit, gpu_of, session_start, per_gpu, int(iterations))


def _check(workload: SessionWorkload, n_gpus: int, engine: EngineConfig) -> None:
    if n_gpus < 1:
        raise ValueError("need at least one GPU")
    if workload.requests == 0:
        raise ValueError("no requests to simulate")
    largest = int((workload.prompt_tokens + workload.output_tokens - 1).max())
    if -(-largest // engine.block_size) > engine.kv_blocks:
        raise ValueError(
            f"a request of {largest} tokens needs more KV cache than one GPU has "
            f"({engine.kv_blocks} blocks of {engine.block_size} tokens)"
        )


def session_figures(
    workload: SessionWorkload, outcome: SessionOutcome, engine: EngineConfig
) -> dict[str, Any]:
    """Per-test figures: sessions completed, makespan percentiles, TTFT by turn depth, cache hit by think
    gap, KV utilisation (mean and peak share of the KV blocks held by running requests), preemptions."""
    session_of = np.repeat(np.arange(workload.sessions), np.diff(workload.session_offsets))
    end = np.full(workload.sessions, -np.inf)
    np.maximum.at(end, session_of, outcome.finish)
    done = np.isfinite(end)
    makespan = (end - outcome.session_start)[done]
    ttft = outcome.first_token - outcome.release
    span = float(np.nanmax(outcome.finish) - outcome.session_start.min())
    busy = outcome.per_gpu[:, 0]
    return {
        "sessions": workload.sessions,
        "sessions_completed": int(done.sum()),
        **{f"session_p{q}_s": percentile(makespan, q) for q in (50, 95, 99)},
        "sessions_per_s": float(done.sum()) / span if span > 0 else float("nan"),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "ttft_by_depth": _ttft_by_depth(workload.depth, ttft),
        "cache_hit_by_think": _hit_by_think(workload, outcome),
        "cache_hit": float(outcome.hit_tokens.sum() / workload.prompt_tokens.sum()),
        "kv_utilisation": float(outcome.per_gpu[:, 3].sum() / (engine.kv_blocks * span * busy.size))
        if span > 0
        else 0.0,
        "kv_peak": float(outcome.per_gpu[:, 4].max() / engine.kv_blocks),
        "gpu_utilisation": float(busy.sum() / (span * busy.size)) if span > 0 else 0.0,
        "preemptions": int(outcome.per_gpu[:, 2].sum()),
    }


def _ttft_by_depth(depth: np.ndarray, ttft: np.ndarray) -> dict[str, dict[str, float]]:
    figures = {}
    for level in np.unique(depth):
        mine = ttft[depth == level]
        figures[str(level)] = {
            "requests": int(mine.size),
            "p50_s": percentile(mine, 50),
            "p95_s": percentile(mine, 95),
        }
    return figures


def _hit_by_think(workload: SessionWorkload, outcome: SessionOutcome) -> dict[str, dict[str, float]]:
    """Prompt tokens served from cache over prompt tokens, for requests after a think gap in each bin."""
    edges = np.array([*THINK_EDGES_S, np.inf])
    which = np.searchsorted(edges, workload.think_s, side="right") - 1
    figures = {}
    for k in range(len(THINK_EDGES_S)):
        mine = which == k
        if mine.any():
            label = f"{edges[k]:g}-{edges[k + 1]:g}s"
            figures[label] = {
                "requests": int(mine.sum()),
                "hit": float(outcome.hit_tokens[mine].sum() / workload.prompt_tokens[mine].sum()),
            }
    return figures
