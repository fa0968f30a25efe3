"""Summary statistics over samples: pure functions of arrays, shared by run summaries and the simulator.

One definition of each number every command reports:

- Percentile: `percentile` (linear interpolation between the two nearest order statistics, numpy's
  default method): what `numpy.percentile`, pandas, Excel's PERCENTILE.INC and most users' own scripts
  compute, so a reported p95 can be reproduced from the raw records. Summaries, sweep rows, SLO level
  values and the client-ceiling check all use it; an SLO's per-workflow verdict is a share of samples
  within the limit, not a percentile (rundir/slo.py).
- ITL: every gap between consecutive token events of a request, pooled over requests (`pooled_gaps`):
  one sample per gap, harness clock. The summary, `bench compare` and SLOs all use the pooled gaps (a
  per-request mean of gaps is TPOT, below, not ITL). Several tokens in one event make one gap.
- TPOT: per request, (step time - TTFT) / (output tokens - 1) (`tpot_ms`): the mean time per output
  token after the first, counted in tokens, not events, so multi-token events do not shorten it. Every
  reader takes the recorded `tpot_ms` column; `bench ab` gates on a block's median TPOT (a per-request
  decode speed that a few long gaps do not dominate, as they do pooled ITL's tail).
- Output tokens/s: `tokens_per_s`, output tokens over the time that produced them. The run's throughput
  divides every ok LLM step's tokens by the measured window; a step id's request rate by the sum of its
  steps' times; `bench compare` takes each request's own rate (its tokens over its step time), one sample
  per request for the block bootstrap.
- Arrivals: `poisson_arrivals`, the one open-loop schedule (runs, sweep watches, client workers, the
  simulator), exponential gaps drawn from a seed or a named stream.
- Connection wait (`connect_wait_ms`, summarised like any latency): submission to the request leaving on
  a connection, harness clock, outside TTFT and step time (engines/streaming.StreamTimer).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def percentile(samples: Iterable[float] | np.ndarray, q: float | Sequence[float]) -> Any:
    """The `q`-th percentile(s) (0-100) of `samples`, linear interpolation (numpy's default method); NaN
    samples are dropped; None when none are left. A float for one `q`, a list of floats for several."""
    values = _finite(samples)
    if values.size == 0:
        return None if np.ndim(q) == 0 else [None] * len(q)  # type: ignore[arg-type]
    result = np.percentile(values, q)
    return float(result) if np.ndim(q) == 0 else [float(value) for value in result]


def _finite(samples: Iterable[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=float)
    return values[~np.isnan(values)]


def describe(samples: Iterable[float] | np.ndarray) -> dict[str, float | int | None]:
    """Count, mean, std, p50/p90/p95/p99 and max of `samples` (None for each statistic when empty).

    Percentiles use numpy's default linear interpolation so figures match what users compute themselves.
    """
    values = _finite(samples)
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None} | {
            f"p{p}": None for p in PERCENTILES
        }
    quantiles = percentile(values, PERCENTILES)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
    } | {f"p{p}": float(q) for p, q in zip(PERCENTILES, quantiles, strict=True)}


def pooled_gaps(per_request: Iterable[Sequence[float] | np.ndarray]) -> np.ndarray:
    """Every inter-token gap of every request, in one array: the ITL samples."""
    arrays = [np.asarray(gaps, dtype=float) for gaps in per_request]
    return np.concatenate(arrays) if arrays else np.empty(0)


def tpot_ms(step_ms: float, ttft_ms: float | None, output_tokens: int) -> float | None:
    """Mean time per output token after the first: (step - TTFT) / (tokens - 1); None below 2 tokens."""
    if ttft_ms is None or output_tokens < 2:
        return None
    return (step_ms - ttft_ms) / (output_tokens - 1)


def tokens_per_s(tokens: Any, ms: Any) -> Any:
    """Output tokens over the milliseconds that produced them, per second (numbers or arrays)."""
    return tokens / (ms / 1000.0)


def poisson_arrivals(rate: float, count: int, rng: int | np.random.Generator) -> np.ndarray:
    """`count` arrival times (s from the window start) of a Poisson process at `rate` per second: gaps
    exponential with mean 1/rate, cumulated. `rng` is a seed (a run's `--seed`: the schedule is drawn
    from it alone, so a run can be replayed) or a generator (the simulator's named streams). The one
    draw of arrivals for runs, sweeps, client workers and the stress simulator."""
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return np.cumsum(generator.exponential(1.0 / rate, count))


def percent_change(base: float, new: float) -> float:
    """`new` relative to `base`, in % (new / base - 1): 0 when they are equal (two zero medians are no
    change), plus or minus infinity when only `base` is zero."""
    if new == base:
        return 0.0
    if base == 0:
        return math.copysign(math.inf, new)
    return (new / base - 1.0) * 100.0


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


NO_CHANGE = "no significant change"


class Judged(Protocol):
    """A metric's verdict as `bench compare` and `bench ab` both keep it."""

    gated: bool
    p_value: float | None
    testable: bool
    change: str | None


J = TypeVar("J", bound=Judged)


def holm_verdicts(results: list[J], alpha: float) -> list[J]:
    """Gated, tested metrics judged on Holm-adjusted p-values, so over all of them the chance of any
    false verdict stays at alpha (the family is every gated metric with a p-value, those with too few
    samples included: they are tests too, which can never pass); ungated ones keep their own verdict.
    The one rule for `bench compare` (bootstrap p-values) and `bench ab` (signed-rank ones)."""
    family = [index for index, result in enumerate(results) if result.gated and result.p_value is not None]
    adjusted = holm_adjusted([results[index].p_value or 1.0 for index in family])
    judged = list(results)
    for index, p_holm in zip(family, adjusted, strict=True):
        result = results[index]
        significant = result.testable and p_holm <= alpha
        verdict = result.change if significant and result.change else NO_CHANGE
        judged[index] = dataclasses.replace(result, p_holm=p_holm, verdict=verdict)  # type: ignore[type-var]
    return judged
