"""Summary statistics over samples: pure functions of arrays, shared by run summaries and the simulator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def describe(samples: Iterable[float] | np.ndarray) -> dict[str, float | int | None]:
    """Count, mean, std, p50/p90/p95/p99 and max of `samples` (None for each statistic when empty).

    Percentiles use numpy's default linear interpolation so figures match what users compute themselves.
    """
    values = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None} | {
            f"p{p}": None for p in PERCENTILES
        }
    quantiles = np.percentile(values, PERCENTILES)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
    } | {f"p{p}": float(q) for p, q in zip(PERCENTILES, quantiles, strict=True)}


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: hypothesis i is rejected at level alpha exactly when its
    adjusted p-value is at most alpha. Over k tests the chance of any false rejection stays at alpha,
    whatever their dependence (latency metrics of one run are strongly dependent), and it rejects at
    least what Bonferroni does."""
    order = np.argsort(np.asarray(p_values, dtype=float), kind="stable")
    adjusted = [1.0] * len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


def percentile(samples: Iterable[float] | np.ndarray, q: float | Sequence[float]) -> Any:
    """The q-th percentile(s) of `samples` with NaNs left out, by the same definition as `describe`
    (numpy's linear interpolation): one float for one q, an array for several; NaN when empty."""
    values = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan") if np.isscalar(q) else np.full(len(q), np.nan)  # type: ignore[arg-type]
    found = np.percentile(values, q)
    return float(found) if np.isscalar(q) else found
