"""The engine model written the obvious way, one GPU at a time: objects, lists and an OrderedDict LRU.

It follows the rules in flowperf.stress.engine's docstring step by step, every iteration, so the compiled
loop can be checked against something a reader can follow line by line.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Request:
    index: int
    arrival: float
    prompt: int
    output: int
    blocks: list[int]
    known_hit: int
    computed: int = 0
    generated: int = 0
    held: int = 0  # KV blocks beyond the shared cached prefix
    shared: int = 0
    cached_blocks: int = 0
    times: dict[str, float] = field(default_factory=dict)
    emitted: list[float] = field(default_factory=list)  # when each output token came out


def reference_engine(
    arrival, prompt, output, n_gpus, engine, service, blocks=None, block_tokens=0, known_hit=None, scale=None
):
    """(start, first, finish, busy, iterations, preemptions) with request i on GPU i mod n_gpus; iteration
    i (over all GPUs) costs the model's price times `scale[i % len(scale)]` when a scale is given."""
    served = _serve(arrival, prompt, output, n_gpus, engine, service, blocks, block_tokens, known_hit, scale)
    requests, totals = served
    times = [np.array([r.times.get(key, np.nan) for r in requests]) for key in ("start", "first", "finish")]
    return (*times, *totals)


def reference_token_times(arrival, prompt, output, engine, service, blocks=None, block_tokens=0):
    """Each request's start and the time each of its output tokens came out, on one GPU: what a run
    would record of the model's iterations, for the calibration round trip."""
    requests, _ = _serve(arrival, prompt, output, 1, engine, service, blocks, block_tokens, None, None)
    return [(r.times["start"], r.emitted) for r in requests]


def _serve(arrival, prompt, output, n_gpus, engine, service, blocks, block_tokens, known_hit, scale):
    n = len(arrival)
    blocks = blocks or [[] for _ in range(n)]
    known_hit = np.zeros(n, int) if known_hit is None else known_hit
    requests = [
        _Request(i, arrival[i], int(prompt[i]), int(output[i]), list(blocks[i]), int(known_hit[i]))
        for i in range(n)
    ]
    totals = [0.0, 0, 0]
    for gpu in range(n_gpus):
        _one_gpu(requests[gpu::n_gpus], engine, service, block_tokens, totals, scale)
    return requests, totals


def _one_gpu(mine, engine, service, block_tokens, totals, scale):  # noqa: C901
    capacity = (
        engine.kv_blocks * engine.block_size // block_tokens if engine.prefix_caching and block_tokens else 0
    )
    cache: OrderedDict[int, None] = OrderedDict()

    def touch(block):
        if capacity <= 0:
            return
        if block in cache:
            cache.move_to_end(block)
            return
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[block] = None

    def allocated(request, upto):
        """Slots given up to token `upto`: the prompt blocks those tokens fill join the cache now, as vLLM
        V1's allocate_slots caches them (full blocks only, until the whole prompt is scheduled)."""
        if not engine.prefix_caching or not block_tokens:
            return
        done = len(request.blocks) if upto >= request.prompt else upto // block_tokens
        for block in request.blocks[request.cached_blocks : min(done, len(request.blocks))]:
            touch(block)
        request.cached_blocks = max(request.cached_blocks, min(done, len(request.blocks)))

    arrivals = deque(mine)
    waiting: deque[_Request] = deque()
    running: list[_Request] = []
    free = engine.kv_blocks
    size = engine.block_size
    now = 0.0
    while arrivals or waiting or running:
        while arrivals and arrivals[0].arrival <= now:
            waiting.append(arrivals.popleft())
        if not waiting and not running:
            now = arrivals[0].arrival
            continue
        budget = engine.max_num_batched_tokens
        plan: list[tuple[_Request, int]] = []
        preempted = False
        for request in list(running):
            if budget <= 0 or request not in running:
                break
            tokens = min(request.prompt + request.generated - request.computed, budget)
            need = math.ceil((request.computed + tokens) / size) - request.shared - request.held
            while need > free and request in running:
                victim = running.pop()
                free += victim.held
                victim.held = victim.shared = victim.computed = 0
                waiting.appendleft(victim)
                totals[2] += 1
                preempted = True
            if request not in running:
                break
            plan.append((request, tokens))
            budget -= tokens
            free -= need
            request.held += need
            allocated(request, request.computed + tokens)
        while (
            not preempted
            and len(plan) == len(running)
            and len(running) < engine.max_num_seqs
            and budget > 0
            and waiting
        ):
            request = waiting[0]
            total = request.prompt + request.generated
            hit, hits = 0, 0
            if engine.prefix_caching:
                while hits < len(request.blocks) and request.blocks[hits] in cache:
                    hits += 1
                hit = max(hits * block_tokens, request.known_hit)
                hit = max(min(hit, total - 1), 0) // size * size
            tokens = min(total - hit, budget)
            need = math.ceil((hit + tokens) / size) - hit // size
            if need > free:
                break
            for block in request.blocks[:hits]:
                touch(block)
            allocated(request, hit + tokens)
            waiting.popleft()
            request.times.setdefault("start", now)
            request.computed, request.shared, request.held = hit, hit // size, need
            free -= need
            running.append(request)
            plan.append((request, tokens))
            budget -= tokens
        if not plan:
            continue
        decoding = [r for r, _ in plan if r.generated > 0 and r.prompt + r.generated - r.computed == 1]
        prefill = sum(tokens for r, tokens in plan if r not in decoding)
        pairs = sum(tokens * (r.computed + (tokens + 1) / 2) for r, tokens in plan if r not in decoding)
        pass_cost = (
            service.prefill_base_s
            + service.prefill_per_token_s * prefill
            + service.prefill_attention_s * pairs
        )
        took = (
            (pass_cost if prefill else service.decode_base_s)
            + service.decode_per_request_s * len(decoding)
            + service.decode_per_context_token_s * sum(r.computed for r in decoding)
        )
        if scale is not None:
            took *= scale[totals[1] % len(scale)]
        now += took
        totals[0] += took
        totals[1] += 1
        for request, tokens in plan:
            request.computed += tokens
            if request.computed >= request.prompt + request.generated:
                request.generated += 1
                request.emitted.append(now)
                if request.generated == 1:
                    request.times["first"] = now
                if request.generated >= request.output:
                    request.times["finish"] = now
                    free += request.held
                    request.held = 0
                    running.remove(request)
