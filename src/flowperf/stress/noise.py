"""How sure the simulator is: per-iteration cost multipliers, perturbed replicas and 5-95% bands.

The calibration fit leaves each measured iteration a multiplier, measured / fitted time. They are not
independent: slow steps come in runs (a neighbour process on the shared cores, a garbage collection), so
the multipliers' logs are modelled as an AR(1) process, log m_t = mu + z_t with z_t = phi z_(t-1) + eps_t,
whose innovations eps are the fitted ones, resampled (a residual bootstrap): the replicas keep both the
heavy tail of the measured multipliers and how long their slow spells last, with no assumed distribution.
Each replica also draws its level mu from the fit's standard error, so a short calibration widens the band.
A calibration from several runs also measures how much the level itself moves from run to run (on shared
cores a whole replay may run 2-3 times slower than the one before): each run's deviations are taken from
its own level, and a replica draws its level as a new run's would be, from Student's t over the runs'
levels (the predictive distribution of one more draw from a normal whose spread is estimated from K).
A run's level is the mean of a few hundred noisy multipliers, so the runs' levels differ by that
sampling error even on a machine whose speed never moved; a replica's own AR(1) path already carries it,
so only the spread beyond it (between^2 - se^2, the one-way random-effects estimate) is drawn again:
counted twice, it made the band near saturation twice as wide as the engine's own spread.

A replica is one simulation whose iteration i costs the model's price times `scale[i % scale.size]`; K
seeded replicas give each figure as a median and a 5-95% band. All pure functions of arrays and a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from flowperf.stats import percentile

REPLICA_LENGTH = 1 << 16  # multipliers per replica, cycled: ~20 correlation lengths between repeats
MAX_PHI = 0.99


@dataclass(frozen=True)
class NoiseModel:
    """The fitted AR(1) on log multipliers; `innovations` are its residuals (centred), `start` the
    stationary deviations z the process is started from."""

    mu: float
    phi: float
    innovations: np.ndarray
    start: np.ndarray
    between: float = 0.0  # standard deviation of the runs' own levels (logs); 0 from one run
    runs: int = 1
    level_se: float = 0.0  # sampling error of one run's level from its own multipliers (AR(1))

    @property
    def sigma(self) -> float:
        """The spread of log multipliers (stationary standard deviation of z)."""
        return float(np.std(self.start))

    @property
    def mu_se(self) -> float:
        """The standard error of `mu`, from the effective sample size of an AR(1), n (1 - phi) / (1 + phi):
        each replica draws its level from it, so the band also says how well the calibration knows it."""
        effective = self.start.size * (1.0 - self.phi) / (1.0 + self.phi)
        return self.sigma / float(np.sqrt(max(effective, 1.0)))

    def draw_level(self, rng: np.random.Generator) -> float:
        """One replica's level: from one run, mu within its standard error; from K runs, a new run's
        level, mu + sqrt(tau^2 + between^2 / K) * t(K - 1), tau^2 = between^2 - level_se^2 (at least 0)
        the runs' own spread beyond their sampling error, between^2 / K how well mu is known."""
        if self.runs < 2:
            return self.mu + float(rng.normal(0.0, self.mu_se))
        beyond_sampling = max(self.between**2 - self.level_se**2, 0.0)
        spread = np.sqrt(beyond_sampling + self.between**2 / self.runs)
        return self.mu + float(spread * rng.standard_t(self.runs - 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "phi": self.phi,
            "sigma": self.sigma,
            "innovations": [round(float(v), 6) for v in self.innovations],
            "start": [round(float(v), 6) for v in self.start],
            "between": self.between,
            "runs": self.runs,
            "level_se": self.level_se,
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> NoiseModel:
        return cls(
            float(document["mu"]),
            float(document["phi"]),
            np.asarray(document["innovations"], float),
            np.asarray(document["start"], float),
            float(document.get("between", 0.0)),
            int(document.get("runs", 1)),
            float(document.get("level_se", 0.0)),
        )


def fit_noise(multipliers: np.ndarray, run_of: np.ndarray | None = None) -> NoiseModel | None:
    """The AR(1) of the log multipliers in measured order; None with fewer than 10 usable ones.
    `run_of` (the run each multiplier came from, runs in measured order) fits each run's deviations from
    its own level, phi over pairs within a run, and the spread of the levels between runs."""
    values = np.asarray(multipliers, float)
    runs = np.zeros(values.size, np.int64) if run_of is None else np.asarray(run_of, np.int64)
    usable = np.isfinite(values) & (values > 0)
    logs, runs = np.log(values[usable]), runs[usable]
    if logs.size < 10:
        return None
    labels, index = np.unique(runs, return_inverse=True)
    levels = np.bincount(index, weights=logs) / np.bincount(index)
    z = logs - levels[index]
    within = index[1:] == index[:-1]
    before, after = z[:-1][within], z[1:][within]
    denominator = float(before @ before)
    phi = float(np.clip(after @ before / denominator, 0.0, MAX_PHI)) if denominator > 0 else 0.0
    innovations = after - phi * before
    between = float(np.std(levels, ddof=1)) if labels.size > 1 else 0.0
    return NoiseModel(
        float(levels.mean()),
        phi,
        innovations - innovations.mean(),
        z,
        between,
        int(labels.size),
        level_sampling_error(z, index, phi),
    )


def level_sampling_error(z: np.ndarray, run_index: np.ndarray, phi: float) -> float:
    """How far a run's mean log multiplier strays from its true level by chance: the AR(1) variance of
    a mean of n, sigma^2 (1 + phi) / (1 - phi) / n, averaged over the runs (root mean square)."""
    sizes = np.bincount(run_index).astype(float)
    variance = float(np.var(z)) * (1.0 + phi) / (1.0 - phi) / sizes
    return float(np.sqrt(variance.mean()))


def replica_scale(noise: NoiseModel | None, seed: int, length: int = REPLICA_LENGTH) -> np.ndarray:
    """One replica's multipliers: the AR(1) run from a measured deviation with resampled innovations.
    Without a noise model, ones (every replica is the model's expectation)."""
    if noise is None:
        return np.ones(1)
    rng = np.random.default_rng(seed)
    eps = noise.innovations[rng.integers(0, noise.innovations.size, size=length)]
    level = noise.draw_level(rng)
    return np.exp(level + _ar1(noise.start[rng.integers(0, noise.start.size)], noise.phi, eps))


@njit(cache=True)
def _ar1(z0: float, phi: float, eps: np.ndarray) -> np.ndarray:
    z = np.empty(eps.size)
    z[0] = z0
    for i in range(1, eps.size):
        z[i] = phi * z[i - 1] + eps[i]
    return z


def band(values: np.ndarray | list[float]) -> dict[str, float]:
    """Median and 5-95% band of one figure over the replicas."""
    p5, p50, p95 = (float(v) for v in percentile(np.asarray(values, float), [5, 50, 95]))
    return {"median": p50, "p5": p5, "p95": p95}
