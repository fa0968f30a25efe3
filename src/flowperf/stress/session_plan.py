"""Capacity for agent sessions: figures over perturbed replicas, and the GPU count that meets an SLO.

`session_bands` simulates one load K times (replica k's iteration costs perturbed by the calibration's
multipliers, `flowperf.stress.noise`, seed + k) and gives every scalar figure as a median and 5-95% band,
so a GPU budget comes with how sure the model is of it. `find_gpus` answers "how many GPUs of this
calibration for this load within the SLO" three ways: the fewest GPUs whose replicas meet the SLO in the
median, in 95% of replicas (the count to defend) and in 5% (the count below which it is hopeless). The
SLO figure is taken as falling with more GPUs: counts are doubled until the strictest answer is met, then
each answer is bisected. Pure functions of arrays; every evaluation is cached per GPU count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowperf.stress.engine import EngineConfig
from flowperf.stress.noise import NoiseModel, band, replica_scale
from flowperf.stress.service import ServiceModel
from flowperf.stress.sessions import SessionWorkload, session_figures, simulate_sessions

SLO_FIGURES = {
    "session_p50_ms": "session_p50_s",
    "session_p95_ms": "session_p95_s",
    "session_p99_ms": "session_p99_s",
    "ttft_p95_ms": "ttft_p95_s",
}
_SLO = re.compile(r"([a-z0-9_]+)=([0-9.eE+-]+)")
BANDED = (
    "session_p50_s",
    "session_p95_s",
    "session_p99_s",
    "sessions_per_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "cache_hit",
    "kv_utilisation",
    "gpu_utilisation",
    "preemptions",
)


@dataclass(frozen=True)
class Slo:
    """A bound on one figure: `figure` (seconds) must be at most `limit_s`."""

    name: str
    figure: str
    limit_s: float

    @classmethod
    def parse(cls, text: str) -> Slo:
        match = _SLO.fullmatch(text.strip())
        if match is None or match[1] not in SLO_FIGURES:
            raise ValueError(f"expected NAME=MS with NAME one of {', '.join(SLO_FIGURES)}, not {text!r}")
        limit = float(match[2])
        if not limit > 0:
            raise ValueError(f"{match[1]} must be positive")
        return cls(match[1], SLO_FIGURES[match[1]], limit / 1000.0)


@dataclass(frozen=True)
class Load:
    """What to simulate on each GPU count: the sessions, the engine, its price and noise, the routing,
    a closed loop of `concurrency` sessions (0: the sessions' own starts), K replicas from `seed`."""

    workload: SessionWorkload
    engine: EngineConfig
    service: ServiceModel
    noise: NoiseModel | None
    routing: str
    concurrency: int
    replicas: int
    seed: int


def session_bands(load: Load, n_gpus: int) -> dict[str, Any]:
    """The expected run's full figures and, over the replicas, each scalar figure's median and band."""
    expected = session_figures(
        load.workload,
        simulate_sessions(load.workload, n_gpus, load.engine, load.service, load.routing, load.concurrency),
        load.engine,
    )
    runs = load.replicas if load.noise is not None else 0
    replicas = [
        session_figures(
            load.workload,
            simulate_sessions(
                load.workload,
                n_gpus,
                load.engine,
                load.service,
                load.routing,
                load.concurrency,
                replica_scale(load.noise, load.seed + k),
            ),
            load.engine,
        )
        for k in range(runs)
    ]
    bands = {name: band([r[name] for r in replicas]) for name in BANDED} if replicas else {}
    return {"n_gpus": n_gpus, "replicas": runs, "expected": expected, "bands": bands}


def slo_quantiles(result: dict[str, Any], slo: Slo) -> dict[str, float]:
    """The SLO figure's p5/median/p95 over replicas (the expected value thrice without noise)."""
    if result["bands"]:
        return result["bands"][slo.figure]
    value = float(result["expected"][slo.figure])
    return {"median": value, "p5": value, "p95": value}


def find_gpus(load: Load, slo: Slo, max_gpus: int, evaluate: Callable[[Load, int], dict] = session_bands):
    """The fewest GPUs meeting the SLO in 95% of replicas ("sure"), the median ("median") and 5%
    ("optimistic"), each None if `max_gpus` does not; with every GPU count evaluated."""
    seen: dict[int, dict[str, Any]] = {}

    def at(n: int) -> dict[str, float]:
        if n not in seen:
            seen[n] = evaluate(load, n)
        return slo_quantiles(seen[n], slo)

    def meets(n: int, key: str) -> bool:
        value = at(n)[key]
        return bool(np.isfinite(value) and value <= slo.limit_s)

    high = 1
    while not meets(high, "p95") and high < max_gpus:
        high = min(2 * high, max_gpus)
    answers = {}
    for label, key in (("sure", "p95"), ("median", "median"), ("optimistic", "p5")):
        if not meets(high, key):
            answers[label] = None
            continue
        lo, hi = 0, high  # lo fails (or is 0), hi meets
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if meets(mid, key) else (mid, hi)
        answers[label] = hi
    return {
        "slo": {"name": slo.name, "limit_ms": slo.limit_s * 1000.0},
        "gpus": answers,
        "evaluated": [seen[n] for n in sorted(seen)],
    }
