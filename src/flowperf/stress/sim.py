"""The event loop: N identical GPUs serving requests under multi-bin static batching or continuous batching.

A pure function of numpy arrays and a config (no I/O, no globals), so a test is reproducible from its inputs
alone and runs the same in any process. The loops are compiled with numba: a million requests on a hundred
GPUs is several million events, which interpreted Python cannot turn over within the performance target.

Time model, shared by both schedulers:
- prefill of a group of requests that start together costs `a + b * (sum of their prompt tokens)` and emits
  each request's first token;
- each further output token takes one decode iteration costing `c + d * (batch size)`, so a request with
  `o` output tokens needs `o - 1` iterations after its prefill.

Neither loop visits decode iterations one by one: a static batch's length is known at dispatch, and a
continuous batch keeps a constant iteration time between membership changes, so it jumps from one
completion or admission boundary to the next.

A perturbed replica (`scale`, the calibration's per-iteration multipliers, `flowperf.stress.noise`)
multiplies each iteration's cost by a multiplier. Every GPU counts its own iterations, and GPU g reads the
sequence from offset g * L // n_gpus (L = scale.size, cycled), so GPUs see different slow spells instead
of one shared one. A jump over k iterations from iteration j then costs the price times S(j + k) - S(j),
S the periodic prefix sum of the scale, and the inverse (the first boundary at or after a time) is a
binary search on S. Continuous batching counts decode iterations; an admission's prefill at boundary j is
priced with multiplier j, the same one as the decode iteration that follows it. Static batching counts a
batch's prefill as one iteration and its decode iterations after it. With no scale the loops get the one
multiplier 1.0, for which every S difference is an exact integer and every result is bit for bit the
unscaled one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from flowperf.stress.heap import heap_remove, heap_set
from flowperf.stress.service import ServiceModel


@dataclass(frozen=True)
class SimConfig:
    """Cluster and scheduler: `n_gpus` GPUs, batches (or slots, for continuous) of `batch_size`."""

    n_gpus: int
    batch_size: int
    continuous: bool
    service: ServiceModel


@dataclass(frozen=True)
class Outcome:
    """Per-request times (seconds, same clock as arrivals) and cluster-wide counters of one simulation."""

    start: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    busy_gpu_s: float
    batches: int
    mean_fill: float
    iterations: float
    events: int
    preemptions: int = 0


def simulate(
    arrival_s: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    config: SimConfig,
    bin_of: np.ndarray | None = None,
    service_time_s: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> Outcome:
    """Serve requests sorted by arrival; `bin_of` (0..K-1, default all 0) selects the static batching queue.

    `service_time_s`, for static batching only, replaces the token model: a batch then lasts as long as
    its longest member's service time, and a request's first token is its start (queueing theory checks).
    `scale` (positive, cycled) multiplies each iteration's cost: a perturbed replica (module docstring).
    """
    arrival = kernel_array(arrival_s, np.float64)
    n = arrival.size
    if n and not bool(np.all(np.diff(arrival) >= 0)):
        raise ValueError("arrival times must be sorted")
    if config.n_gpus < 1 or config.batch_size < 1:
        raise ValueError("need at least one GPU and a batch size of at least one")
    service = config.service
    start, first, finish = np.empty(n), np.empty(n), np.empty(n)
    decode_iterations = np.maximum(kernel_array(output_tokens, np.int64) - 1, 0)
    if scale is not None and service_time_s is not None:
        raise ValueError("a scale multiplies token-model iterations; service_time_s has none")
    cum = prefix_sums(scale)
    if config.continuous:
        if bin_of is not None or service_time_s is not None:
            raise ValueError("continuous batching has one queue and works from the token model")
        busy, batches, fill, iterations, events = _continuous_loop(
            arrival,
            kernel_array(input_tokens, np.float64),
            decode_iterations,
            config.n_gpus,
            config.batch_size,
            service.prefill_base_s,
            service.prefill_per_token_s,
            service.decode_base_s,
            service.decode_per_request_s,
            cum,
            start,
            first,
            finish,
        )
    else:
        bins = np.zeros(n, np.int64) if bin_of is None else kernel_array(bin_of, np.int64)
        if service_time_s is None:
            prefill_tokens = kernel_array(input_tokens, np.float64)
            work = decode_iterations.astype(np.float64)
            a, b, c, d = (
                service.prefill_base_s,
                service.prefill_per_token_s,
                service.decode_base_s,
                service.decode_per_request_s,
            )
        else:
            prefill_tokens = np.zeros(n)
            work = kernel_array(service_time_s, np.float64)
            a, b, c, d = 0.0, 0.0, 1.0, 0.0
        busy, batches, fill, iterations, events = _bins_loop(
            arrival,
            prefill_tokens,
            work,
            bins,
            int(bins.max()) + 1 if n else 1,
            config.n_gpus,
            config.batch_size,
            a,
            b,
            c,
            d,
            cum,
            start,
            first,
            finish,
        )
    return Outcome(start, first, finish, busy, batches, fill / config.batch_size, iterations, events)


def kernel_array(values: np.ndarray, dtype: type) -> np.ndarray:
    """Contiguous and writeable: numba compiles read-only arrays (cached workloads) as another type, and
    one compiled signature per loop keeps the on-disk cache to a single entry."""
    return np.require(values, dtype, ["C_CONTIGUOUS", "WRITEABLE"])


def prefix_sums(scale: np.ndarray | None) -> np.ndarray:
    """[0, s0, s0 + s1, ..., total] of the multipliers (just [0, 1] without a scale): what `_span` reads."""
    if scale is None:
        return np.array([0.0, 1.0])
    values = np.asarray(scale, np.float64).ravel()
    if values.size == 0 or not bool(np.all(np.isfinite(values) & (values > 0))):
        raise ValueError("a scale needs at least one multiplier, each finite and positive")
    return np.concatenate([[0.0], np.cumsum(values)])


@njit(cache=True, inline="always")
def _span(cum, start, count):
    """Sum of the multipliers of iterations start .. start + count - 1 (cycled): S(start + count) - S(start)
    with S(j) = (j // L) * total + cum[j % L]. With one multiplier, count * it (exact for 1.0, and `count`
    may then be any float: a static batch's service time)."""
    length = cum.size - 1
    if length == 1:
        return count * cum[1]
    end = start + np.int64(count)
    return ((end // length) * cum[length] + cum[end % length]) - (
        (start // length) * cum[length] + cum[start % length]
    )


@njit(cache=True, inline="always")
def _steps_to(cum, start, x):
    """The fewest iterations from `start` whose multipliers sum to at least x > 0: math.ceil(x) without a
    scale, else a doubling then a binary search on `_span`."""
    if cum.size == 2:
        return math.ceil(x / cum[1])
    low = 0
    high = 1
    while _span(cum, start, high) < x:
        low = high
        high *= 2
    while high - low > 1:
        middle = (low + high) // 2
        if _span(cum, start, middle) < x:
            low = middle
        else:
            high = middle
    return high


# One hot compiled loop, exempt from the size rules: splitting it costs a call per event in nopython mode.
@njit(cache=True)
def _bins_loop(  # noqa: C901
    arrival, prefill_tokens, work, bin_of, n_bins, n_gpus, batch_size, a, b, c, d, cum, start, first, finish
):
    """Static batching from K FIFO queues; returns (busy GPU-s, batches, mean batch size, iterations, events).

    Each queue is a window [head, tail) into the requests of its bin listed in arrival order, so queueing
    and dispatch move two integers instead of objects. A batch keeps its size until its longest member ends.
    `work` is each request's decode iterations, or its whole service time when a=b=d=0 and c=1.
    `cum` is the prefix sums of the iteration multipliers (`prefix_sums`): GPU g's iteration counter
    `done[g]` starts at g * L // n_gpus; a batch's prefill takes one iteration, its decode the next ones.
    """
    n = arrival.size
    bin_start = np.zeros(n_bins + 1, np.int64)
    for r in range(n):
        bin_start[bin_of[r] + 1] += 1
    for k in range(n_bins):
        bin_start[k + 1] += bin_start[k]
    order = np.empty(n, np.int64)
    head = bin_start[:n_bins].copy()
    for r in range(n):
        order[head[bin_of[r]]] = r
        head[bin_of[r]] += 1
    head[:] = bin_start[:n_bins]
    tail = head.copy()

    heap = np.zeros(n_gpus, np.int64)
    pos = np.full(n_gpus, -1, np.int64)
    free_at = np.zeros(n_gpus, np.float64)
    done = np.arange(n_gpus) * (cum.size - 1) // n_gpus  # each GPU's iteration counter (module docstring)
    size = 0
    idle = np.arange(n_gpus - 1, -1, -1)
    n_idle = n_gpus
    queued = 0
    r_next = 0
    busy = 0.0
    batches = 0
    filled = 0
    iterations = 0.0
    events = 0
    while r_next < n or size > 0:
        if size > 0 and (r_next >= n or free_at[heap[0]] <= arrival[r_next]):
            now = free_at[heap[0]]
        else:
            now = arrival[r_next]
        while size > 0 and free_at[heap[0]] <= now:
            idle[n_idle] = heap[0]
            n_idle += 1
            size = heap_remove(heap, pos, free_at, size, heap[0])
            events += 1
        while r_next < n and arrival[r_next] <= now:
            tail[bin_of[r_next]] += 1
            queued += 1
            r_next += 1
            events += 1
        while n_idle > 0 and queued > 0:
            chosen = -1
            oldest = np.inf
            for k in range(n_bins):
                if head[k] < tail[k] and arrival[order[head[k]]] < oldest:
                    oldest = arrival[order[head[k]]]
                    chosen = k
            take = min(batch_size, tail[chosen] - head[chosen])
            tokens = 0.0
            longest = 0.0
            for j in range(head[chosen], head[chosen] + take):
                tokens += prefill_tokens[order[j]]
                longest = max(longest, work[order[j]])
            gpu = idle[n_idle - 1]
            at = done[gpu]
            prefill = (a + b * tokens) * _span(cum, at, 1)
            iteration = c + d * take
            for j in range(head[chosen], head[chosen] + take):
                r = order[j]
                start[r] = now
                first[r] = now + prefill
                finish[r] = now + prefill + _span(cum, at + 1, work[r]) * iteration
            duration = prefill + _span(cum, at + 1, longest) * iteration
            done[gpu] = at + 1 + np.int64(longest)
            head[chosen] += take
            queued -= take
            n_idle -= 1
            size = heap_set(heap, pos, free_at, size, gpu, now + duration)
            busy += duration
            batches += 1
            filled += take
            iterations += longest
    return busy, batches, filled / max(batches, 1), iterations, events


# One hot compiled loop, exempt from the size rules: splitting it costs a call per event in nopython mode.
@njit(cache=True)
def _continuous_loop(arrival, prefill_tokens, decode, n_gpus, slots, a, b, c, d, cum, start, first, finish):  # noqa: C901
    """Iteration-level batching; returns (busy GPU-s, admissions, mean slots in use per iteration, iterations,
    events).

    One FIFO queue feeds all GPUs. A request that finds an idle GPU starts at once; otherwise it joins the
    GPU with the most free slots (join-shortest-queue routing, ties to the lower id) at that GPU's next
    iteration boundary, or waits for the first slot to free up anywhere. Each GPU keeps a reference
    boundary (time `base_t`, iteration count `base_i`) and a constant iteration time between membership
    changes, so a later boundary is `base_t + k * (c + d * active)` without stepping through iterations.

    Every pass of the loop takes one action, earliest first: start an idle GPU or plan an admission for the
    requests waiting beyond the slots already promised to them, else run the next GPU event, else take the
    next arrivals. Starting a GPU and running its event end in the same admission and re-keying code.

    A GPU at a boundary takes every waiting request it has room for, including ones another GPU had planned
    to admit. When that leaves fewer waiting than the slots still promised, every plan is withdrawn (the
    loop re-plans the rest at once): a promise for requests already gone would make the next arrival wait
    for that GPU's boundary while a GPU sat idle.

    Iteration costs are times the multipliers whose prefix sums are `cum` (`prefix_sums`): GPU g's
    iteration j reads multiplier offset[g] + j, so a jump of k iterations is `_span` and the first
    boundary after a time is `_steps_to`.
    """
    n = arrival.size
    members = np.zeros((n_gpus, slots), np.int64)
    done_at = np.zeros((n_gpus, slots), np.int64)  # iteration at which each member's last token is out
    active = np.zeros(n_gpus, np.int64)
    next_done = np.zeros(n_gpus, np.int64)
    join_at = np.full(n_gpus, -1, np.int64)  # iteration of a planned admission, or -1
    base_t = np.zeros(n_gpus, np.float64)
    base_i = np.zeros(n_gpus, np.int64)
    offset = np.arange(n_gpus) * (cum.size - 1) // n_gpus  # where each GPU starts in the multipliers
    busy_since = np.zeros(n_gpus, np.float64)
    # busy GPUs keyed by the time of their next completion or planned admission
    heap, pos, event_at = np.zeros(n_gpus, np.int64), np.full(n_gpus, -1, np.int64), np.zeros(n_gpus)
    n_busy = 0
    # busy GPUs with a free slot and no planned admission, keyed by slots in use
    open_heap, open_pos, load = np.zeros(n_gpus, np.int64), np.full(n_gpus, -1, np.int64), np.zeros(n_gpus)
    n_open = 0
    idle = np.arange(n_gpus - 1, -1, -1)
    n_idle = n_gpus
    planned_slots = 0  # free slots of GPUs with a planned admission
    planned = np.zeros(n_gpus, np.int64)  # the GPUs with a planned admission
    n_planned = 0
    queue_head = 0
    r_next = 0
    now = 0.0
    busy = 0.0
    admissions = 0
    occupancy = 0.0
    iterations = 0.0
    events = 0
    while True:
        unplanned = r_next - queue_head > planned_slots
        if unplanned and n_idle > 0:
            n_idle -= 1
            gpu = idle[n_idle]
            busy_since[gpu] = now
            boundary = base_i[gpu]
        elif unplanned and n_open > 0:
            gpu = open_heap[0]
            n_open = heap_remove(open_heap, open_pos, load, n_open, gpu)
            tau = c + d * active[gpu]
            step = 0
            at_i = offset[gpu] + base_i[gpu]
            if now > base_t[gpu] and tau > 0:
                step = _steps_to(cum, at_i, (now - base_t[gpu]) / tau)
                if base_t[gpu] + _span(cum, at_i, step) * tau < now:
                    step += 1
            join_at[gpu] = base_i[gpu] + step
            planned_slots += slots - active[gpu]
            planned[n_planned] = gpu
            n_planned += 1
            target = min(next_done[gpu], join_at[gpu])
            at = base_t[gpu] + _span(cum, at_i, target - base_i[gpu]) * tau
            n_busy = heap_set(heap, pos, event_at, n_busy, gpu, at)
            continue
        elif n_busy > 0 and (r_next >= n or event_at[heap[0]] < arrival[r_next]):
            gpu = heap[0]
            now = event_at[gpu]
            n_busy = heap_remove(heap, pos, event_at, n_busy, gpu)
            n_open = heap_remove(open_heap, open_pos, load, n_open, gpu)
            events += 1
            boundary = next_done[gpu]
            if join_at[gpu] >= 0:
                boundary = min(boundary, join_at[gpu])
                planned_slots -= slots - active[gpu]
                join_at[gpu] = -1
                for index in range(n_planned):
                    if planned[index] == gpu:
                        n_planned -= 1
                        planned[index] = planned[n_planned]
                        break
            steps = boundary - base_i[gpu]
            iterations += steps
            occupancy += steps * active[gpu]
            if next_done[gpu] == boundary:
                kept = 0
                for slot in range(active[gpu]):
                    r = members[gpu, slot]
                    if done_at[gpu, slot] <= boundary:
                        finish[r] = now
                    else:
                        members[gpu, kept] = r
                        done_at[gpu, kept] = done_at[gpu, slot]
                        kept += 1
                active[gpu] = kept
        elif r_next < n:
            now = arrival[r_next]
            while r_next < n and arrival[r_next] <= now:
                r_next += 1
                events += 1
            continue
        else:
            break

        # `gpu` is at an iteration boundary at `now`: admit waiting requests with one prefill, re-key it.
        base_i[gpu] = boundary
        base_t[gpu] = now
        take = min(slots - active[gpu], r_next - queue_head)
        if take > 0:
            tokens = 0.0
            for r in range(queue_head, queue_head + take):
                tokens += prefill_tokens[r]
            multiplier = _span(cum, offset[gpu] + boundary, 1)
            base_t[gpu] = now + a * multiplier + b * tokens * multiplier  # `now + a + b * tokens` unscaled
            for r in range(queue_head, queue_head + take):
                members[gpu, active[gpu]] = r
                done_at[gpu, active[gpu]] = boundary + decode[r]
                active[gpu] += 1
                start[r] = now
                first[r] = base_t[gpu]
            queue_head += take
            admissions += 1
            if r_next - queue_head < planned_slots:
                for index in range(n_planned):
                    other = planned[index]
                    join_at[other] = -1
                    tau = c + d * active[other]
                    steps = next_done[other] - base_i[other]
                    at = base_t[other] + _span(cum, offset[other] + base_i[other], steps) * tau
                    n_busy = heap_set(heap, pos, event_at, n_busy, other, at)
                    n_open = heap_set(open_heap, open_pos, load, n_open, other, float(active[other]))
                n_planned = 0
                planned_slots = 0
        if active[gpu] == 0:
            busy += now - busy_since[gpu]
            idle[n_idle] = gpu
            n_idle += 1
            continue
        soonest = done_at[gpu, 0]
        for slot in range(1, active[gpu]):
            soonest = min(soonest, done_at[gpu, slot])
        next_done[gpu] = soonest
        steps = soonest - base_i[gpu]
        at = base_t[gpu] + _span(cum, offset[gpu] + base_i[gpu], steps) * (c + d * active[gpu])
        n_busy = heap_set(heap, pos, event_at, n_busy, gpu, at)
        if active[gpu] < slots:
            n_open = heap_set(open_heap, open_pos, load, n_open, gpu, float(active[gpu]))
    return busy, admissions, occupancy / max(iterations, 1.0), iterations, events
