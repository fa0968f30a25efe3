"""Queueing theory check: bins-1 with batches of one, Poisson arrivals and exponential service is M/M/c.

The mean wait must land within 2% of Erlang C. A sample mean of waits converges slowly (waits are strongly
correlated, and at c=16, rho=0.5 only ~1.6% of requests wait at all), so each case simulates enough
requests that 2% is about three standard deviations of the estimate (measured over ten seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from flowperf.stress.service import ServiceModel
from flowperf.stress.sim import SimConfig, simulate


def erlang_c_mean_wait(servers: int, utilisation: float, service_rate: float = 1.0) -> float:
    """Mean time in queue of M/M/c: P(wait) / (c * mu - lambda)."""
    offered = servers * utilisation
    idle_terms = sum(offered**k / math.factorial(k) for k in range(servers))
    busy_term = offered**servers / math.factorial(servers) / (1 - utilisation)
    return busy_term / (idle_terms + busy_term) / (servers * service_rate * (1 - utilisation))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("servers", "utilisation", "requests"),
    [
        (1, 0.5, 2_000_000),
        (1, 0.9, 10_000_000),
        (4, 0.5, 3_000_000),
        (4, 0.9, 8_000_000),
        (16, 0.5, 40_000_000),
        (16, 0.9, 20_000_000),
    ],
)
def test_mean_wait_matches_erlang_c(servers, utilisation, requests):
    rng = np.random.default_rng(2024)
    arrival = np.cumsum(rng.exponential(1.0 / (servers * utilisation), requests))
    service = rng.exponential(1.0, requests)
    outcome = simulate(
        arrival,
        np.zeros(requests),
        np.ones(requests),
        SimConfig(servers, 1, False, ServiceModel()),
        service_time_s=service,
    )
    mean_wait = float(np.mean(outcome.start - arrival))
    assert mean_wait == pytest.approx(erlang_c_mean_wait(servers, utilisation), rel=0.02)
    assert outcome.busy_gpu_s == pytest.approx(service.sum())
