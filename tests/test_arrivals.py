"""Open-loop arrivals: a Poisson process at the asked rate, replayable from its seed and only from it.

The distribution is checked against scipy's exponential (a Kolmogorov-Smirnov test scipy computes, not
this code), for both users of the one draw (`stats.poisson_arrivals`): a run's seeded schedule and the
simulator's named stream.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from flowperf.stats import poisson_arrivals
from flowperf.stress.workload import stream

RATE = 40.0
GAPS = 2000


def ks_p_value(gaps: np.ndarray, rate: float) -> float:
    """scipy's exact two-sided KS p-value of `gaps` against an exponential of mean 1 / `rate`."""
    return float(scipy_stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue)


def gaps_of(arrivals: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], arrivals]))


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("source", ["run seed", "simulator stream"])
def test_gaps_are_exponential_at_the_given_rate(seed: int, source: str) -> None:
    rng = seed if source == "run seed" else stream(seed, "arrivals")
    gaps = gaps_of(poisson_arrivals(RATE, GAPS, rng))
    assert len(gaps) == GAPS and (gaps > 0).all()
    assert ks_p_value(gaps, RATE) > 0.01
    # the same test tells a rate 10% off apart: it is not too weak to fail
    for wrong in (RATE * 0.9, RATE * 1.1):
        assert ks_p_value(gaps, wrong) < 0.01


def test_a_seed_replays_its_arrivals_and_another_seed_gives_others() -> None:
    assert np.array_equal(poisson_arrivals(RATE, 50, 3), poisson_arrivals(RATE, 50, 3))
    other = poisson_arrivals(RATE, 50, 4)
    assert not np.allclose(poisson_arrivals(RATE, 50, 3), other)
    assert (np.diff(other) > 0).all()


def test_a_seed_gives_numpys_seeded_exponential_gaps() -> None:
    """The documented contract a user can reproduce a schedule from: numpy's default_rng(seed), gaps
    exponential with mean 1/rate, cumulated."""
    gaps = np.random.default_rng(11).exponential(1 / RATE, 30)
    assert poisson_arrivals(RATE, 30, 11) == pytest.approx(np.cumsum(gaps), abs=1e-12)
