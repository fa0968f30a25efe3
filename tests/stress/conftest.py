"""Shared pieces of the stress simulator tests: a Typer app around `bench stress` and plain references."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flowperf.stress.cli import stress
from flowperf.stress.service import ServiceModel

# Service costs with no round values, so a boundary never lands exactly on an arrival by accident.
ODD_SERVICE = ServiceModel(
    prefill_base_s=0.0137, prefill_per_token_s=0.00071, decode_base_s=0.0093, decode_per_request_s=0.0011
)


@pytest.fixture(scope="session")
def bench_stress():
    """Invoke `bench stress ARGS` in process; returns the CliRunner result (exceptions kept, not raised).

    A group app with a callback keeps `stress` a subcommand whatever else flowperf.cli.main registers.
    """
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    app.command("stress")(stress)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["stress", *map(str, args)], catch_exceptions=True)

    return invoke


def reference_bins(arrival, input_tokens, output_tokens, bin_of, n_gpus, batch_size, service, scale=None):
    """Static multi-bin batching written the obvious way: lists of GPUs and deques of requests.

    With a `scale`, GPU g's iterations (a batch's prefill, then each decode iteration) cost the model's
    price times scale[(g * L // n_gpus + its iteration count) % L], one by one; idle GPUs are taken last
    freed first, as the compiled loop does (with a scale, which GPU serves a batch matters)."""
    n = len(arrival)
    scale = np.ones(1) if scale is None else np.asarray(scale, float)
    start, first, finish = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    queues = [deque() for _ in range(max(bin_of, default=0) + 1)]
    busy_until = [None] * n_gpus
    counter = [g * scale.size // n_gpus for g in range(n_gpus)]
    idle = list(range(n_gpus - 1, -1, -1))
    i = 0
    while i < n or any(t is not None for t in busy_until) or any(queues):
        times = [arrival[i]] if i < n else []
        now = min(times + [t for t in busy_until if t is not None])
        freed = sorted((t, g) for g, t in enumerate(busy_until) if t is not None and t <= now)
        for _, gpu in freed:
            busy_until[gpu] = None
            idle.append(gpu)
        while i < n and arrival[i] <= now:
            queues[bin_of[i]].append(i)
            i += 1
        while idle and any(queues):
            gpu = idle.pop()
            waiting = [k for k, queue in enumerate(queues) if queue]
            k = min(waiting, key=lambda k: (arrival[queues[k][0]], k))
            batch = [queues[k].popleft() for _ in range(min(batch_size, len(queues[k])))]
            at = counter[gpu]
            prefill = service.prefill_base_s + service.prefill_per_token_s * sum(
                input_tokens[r] for r in batch
            )
            prefill *= scale[at % scale.size]
            iteration = service.decode_base_s + service.decode_per_request_s * len(batch)

            def decoded(count, at=at, iteration=iteration):
                return sum(iteration * scale[(at + 1 + q) % scale.size] for q in range(count))

            for r in batch:
                start[r], first[r] = now, now + prefill
                finish[r] = now + prefill + decoded(output_tokens[r] - 1)
            longest = max(output_tokens[r] - 1 for r in batch)
            busy_until[gpu] = now + prefill + decoded(longest)
            counter[gpu] = at + 1 + longest
    return start, first, finish


def reference_continuous_one_gpu(arrival, input_tokens, output_tokens, slots, service, scale=None):
    """Continuous batching on one GPU, stepping every decode iteration: at each boundary finished requests
    leave, waiting ones join with one prefill, then one iteration runs for everyone in the batch. With a
    `scale`, decode iteration j and any prefill at boundary j cost their price times scale[j % L]."""
    n = len(arrival)
    scale = np.ones(1) if scale is None else np.asarray(scale, float)
    j = 0
    start, first, finish = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    remaining: dict[int, int] = {}
    queue: deque[int] = deque()
    now, i = 0.0, 0
    while True:
        while i < n and arrival[i] <= now:
            queue.append(i)
            i += 1
        for r in [r for r, left in remaining.items() if left == 0]:
            finish[r] = now
            del remaining[r]
        if not remaining and not queue:
            if i == n:
                return start, first, finish
            now = arrival[i]
            continue
        if queue and len(remaining) < slots:
            batch = [queue.popleft() for _ in range(min(slots - len(remaining), len(queue)))]
            prefill = service.prefill_base_s + service.prefill_per_token_s * sum(
                input_tokens[r] for r in batch
            )
            prefill *= scale[j % scale.size]
            for r in batch:
                start[r], first[r] = now, now + prefill
                remaining[r] = output_tokens[r] - 1
            now += prefill
            continue
        now += (service.decode_base_s + service.decode_per_request_s * len(remaining)) * scale[j % scale.size]
        j += 1
        for r in remaining:
            remaining[r] -= 1
