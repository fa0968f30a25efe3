"""How a measured window's sessions are shared out among client workers: pure and deterministic, so that
a resumed run, given the same settings, knows which worker owned which session.

Sessions are dealt to session slots (`index mod slots`) and slots to workers (`slot mod workers`); a
worker runs as many sessions at once as it owns slots. Closed loop and with an open-loop cap the slots
are the concurrency, so each worker's share of sessions matches its share of the concurrency; open loop
without a cap every worker owns one slot. A worker needs at least one slot: there are never more workers
than slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flowperf.flows.expand import ExpandedFlow


@dataclass(frozen=True)
class Share:
    """One worker's part of the window: its sessions, their arrivals (open loop) and its concurrency."""

    worker: int
    flows: list[ExpandedFlow]
    arrivals_s: np.ndarray | None
    concurrency: int | None


def active_workers(workers: int, concurrency: int | None) -> int:
    """Workers that get sessions: at most one per session slot."""
    return workers if concurrency is None else max(1, min(workers, concurrency))


def slot_share(slots: int, workers: int, worker: int) -> int:
    """How many of `slots` session slots worker `worker` owns (slot s belongs to worker s mod workers)."""
    return slots // workers + (1 if worker < slots % workers else 0)


def owner(index: int, slots: int, workers: int) -> int:
    """The worker that runs the session with this flow index."""
    return (index % slots) % workers


def share_out(
    flows: Sequence[ExpandedFlow], arrivals_s: np.ndarray | None, workers: int, concurrency: int | None
) -> list[Share]:
    """Each active worker's share; `arrivals_s` (s from the window start, one per flow) is the one
    open-loop schedule drawn for all of them, so the workers together send exactly that schedule."""
    count = active_workers(workers, concurrency)
    slots = concurrency or count
    owners = np.array([owner(flow.index, slots, count) for flow in flows], dtype=int)
    shares = []
    for worker in range(count):
        mine = np.flatnonzero(owners == worker)
        shares.append(
            Share(
                worker=worker,
                flows=[flows[i] for i in mine],
                arrivals_s=None if arrivals_s is None else arrivals_s[mine],
                concurrency=None if concurrency is None else slot_share(slots, count, worker),
            )
        )
    return shares
