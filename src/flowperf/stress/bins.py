"""Equal-mass bin boundaries over predicted output length, for multi-bin batching (Guldogan et al. 2024).

Bins of equal probability mass give every queue the same arrival rate, which is what the paper's
throughput analysis assumes. Boundaries are quantiles of a seeded sample rather than of the whole workload
so they cost the same at any size and match what a scheduler could estimate online. Output lengths are
integers with many ties: quantiles that fall on the same value are merged, and the bins that are left (the
effective K) are reported rather than hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from flowperf.stress.workload import WorkloadSpec, cached_workload, stream

SAMPLE_SIZE = 5_000


@dataclass(frozen=True)
class Bins:
    """`bin_of[i]` is request i's queue; bin j takes lengths in (upper[j-1], upper[j]], the last the rest."""

    upper: np.ndarray
    bin_of: np.ndarray

    @property
    def effective_k(self) -> int:
        return self.upper.size + 1


def equal_mass_boundaries(
    predicted: np.ndarray, k: int, seed: int, sample_size: int = SAMPLE_SIZE
) -> np.ndarray:
    """Distinct upper bounds of the first k-1 bins, cutting a seeded sample into k equal shares.

    Bound j is the ceil(j*S/k)-th smallest sample value, so without ties bin j gets ceil((j+1)S/k) -
    ceil(jS/k) of the S sampled values: within one value of S/k. A bound equal to the sample maximum would
    leave the last bin empty and is dropped with the duplicates.
    """
    if k < 1:
        raise ValueError("need at least one bin")
    values = np.asarray(predicted)
    if values.size == 0:
        return values[:0]
    if values.size > sample_size:
        values = stream(seed, "bin-sample").choice(values, sample_size, replace=False)
    ordered = np.sort(values)
    ranks = np.ceil(np.arange(1, k) * ordered.size / k).astype(np.int64) - 1
    bounds = np.unique(ordered[ranks])
    return bounds[bounds < ordered[-1]]


def assign_bins(predicted: np.ndarray, k: int, seed: int) -> Bins:
    """Equal-mass boundaries and each request's bin (a length equal to a bound goes to the lower bin)."""
    upper = equal_mass_boundaries(predicted, k, seed)
    bin_of = np.searchsorted(upper, predicted, side="left").astype(np.int64)
    bin_of.flags.writeable = False
    return Bins(upper, bin_of)


@lru_cache(maxsize=24)
def cached_bins(spec: WorkloadSpec, k: int) -> Bins:
    """`assign_bins` for a cached workload, computed once per process and (workload, K)."""
    return assign_bins(cached_workload(spec).predicted_output, k, spec.seed)
