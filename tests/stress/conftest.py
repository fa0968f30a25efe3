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


def reference_bins(arrival, input_tokens, output_tokens, bin_of, n_gpus, batch_size, service):
    """Static multi-bin batching written the obvious way: lists of GPUs and deques of requests."""
    n = len(arrival)
    start, first, finish = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    queues = [deque() for _ in range(max(bin_of, default=0) + 1)]
    busy_until = [None] * n_gpus
    i = 0
    while i < n or any(busy_until) or any(queues):
        times = [arrival[i]] if i < n else []
        now = min(times + [t for t in busy_until if t is not None])
        busy_until = [None if t is not None and t <= now else t for t in busy_until]
        while i < n and arrival[i] <= now:
            queues[bin_of[i]].append(i)
            i += 1
        for gpu in range(n_gpus):
            waiting = [k for k, queue in enumerate(queues) if queue]
            if busy_until[gpu] is not None or not waiting:
                continue
            k = min(waiting, key=lambda k: (arrival[queues[k][0]], k))
            batch = [queues[k].popleft() for _ in range(min(batch_size, len(queues[k])))]
            prefill = service.prefill_base_s + service.prefill_per_token_s * sum(
                input_tokens[r] for r in batch
            )
            iteration = service.decode_base_s + service.decode_per_request_s * len(batch)
            for r in batch:
                start[r], first[r] = now, now + prefill
                finish[r] = now + prefill + (output_tokens[r] - 1) * iteration
            busy_until[gpu] = now + prefill + max(output_tokens[r] - 1 for r in batch) * iteration
    return start, first, finish


def reference_continuous_one_gpu(arrival, input_tokens, output_tokens, slots, service):
    """Continuous batching on one GPU, stepping every decode iteration: at each boundary finished requests
    leave, waiting ones join with one prefill, then one iteration runs for everyone in the batch."""
    n = len(arrival)
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
            for r in batch:
                start[r], first[r] = now, now + prefill
                remaining[r] = output_tokens[r] - 1
            now += prefill
            continue
        now += service.decode_base_s + service.decode_per_request_s * len(remaining)
        for r in remaining:
            remaining[r] -= 1
