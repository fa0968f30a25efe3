"""Open-loop arrivals: a Poisson process at the asked rate, replayable from its seed and only from it."""

from __future__ import annotations

import numpy as np
import pytest

from flowperf.run.runner import poisson_arrivals

RATE = 40.0
GAPS = 2000


def ks_statistic(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov D: the largest distance between the empirical and the model CDF."""
    ordered = np.sort(samples)
    model = cdf(ordered)
    n = len(ordered)
    return float(max((np.arange(1, n + 1) / n - model).max(), (model - np.arange(n) / n).max()))


def exponential_cdf(rate: float):
    return lambda x: 1.0 - np.exp(-rate * x)


def kolmogorov_p_value(statistic: float, n: int) -> float:
    """Asymptotic two-sided KS p-value: Kolmogorov's series with Stephens' small-sample correction."""
    scaled = (np.sqrt(n) + 0.12 + 0.11 / np.sqrt(n)) * statistic
    k = np.arange(1, 101)
    return float(np.clip(2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * (k * scaled) ** 2)), 0.0, 1.0))


def ks_p_value(statistic: float, n: int) -> float:
    """scipy's exact KS p-value where scipy is installed, else Kolmogorov's asymptotic one."""
    try:
        from scipy.stats import kstwo
    except ImportError:
        return kolmogorov_p_value(statistic, n)
    return float(kstwo.sf(statistic, n))


def test_the_numpy_p_value_matches_the_published_critical_values() -> None:
    # D_crit = c(alpha) / sqrt(n) for large n: c = 1.224, 1.358, 1.628 at alpha 0.10, 0.05, 0.01
    for c, alpha in ((1.224, 0.10), (1.358, 0.05), (1.628, 0.01)):
        assert kolmogorov_p_value(c / np.sqrt(GAPS), GAPS) == pytest.approx(alpha, rel=0.05)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_gaps_are_exponential_at_the_given_rate(seed: int) -> None:
    arrivals = poisson_arrivals(RATE, GAPS, seed)
    gaps = np.diff(np.concatenate([[0.0], arrivals]))
    assert len(gaps) == GAPS and (gaps > 0).all()
    statistic = ks_statistic(gaps, exponential_cdf(RATE))
    assert ks_p_value(statistic, GAPS) > 0.01, statistic
    # the same test tells a wrong rate apart: it is not too weak to fail
    for wrong in (RATE * 0.9, RATE * 1.1):
        assert ks_p_value(ks_statistic(gaps, exponential_cdf(wrong)), GAPS) < 0.01


def test_the_ks_statistic_matches_scipy_where_scipy_is() -> None:
    stats = pytest.importorskip("scipy.stats")
    gaps = np.random.default_rng(5).exponential(1 / RATE, 500)
    expected = stats.kstest(gaps, "expon", args=(0, 1 / RATE))
    assert ks_statistic(gaps, exponential_cdf(RATE)) == pytest.approx(expected.statistic)


def test_a_seed_replays_its_arrivals_and_another_seed_gives_others() -> None:
    assert np.array_equal(poisson_arrivals(RATE, 50, 3), poisson_arrivals(RATE, 50, 3))
    other = poisson_arrivals(RATE, 50, 4)
    assert not np.allclose(poisson_arrivals(RATE, 50, 3), other)
    assert (np.diff(other) > 0).all()
