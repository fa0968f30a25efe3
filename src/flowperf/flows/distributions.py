"""Seeded distributions for the parts of an agent that are not LLM calls: tool durations, think times,
tool-result sizes and loop counts.

A flow file writes a value as a number, `{uniform: [a, b]}`, `{lognormal: {median: m, sigma: s}}` or
`{field: name}` (the empirical distribution of a numeric fixture field over all records). Draws take an
explicit numpy Generator so that a workflow's plan depends only on the run's seed and the workflow's
index: a resumed run replays the same pauses and turn counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from flowperf.errors import UserError

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
MAX_SECONDS_MS = 3_600_000.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Uniform(_Strict):
    """Uniform between the two bounds (inclusive integers where a count is drawn)."""

    uniform: tuple[NonNegative, NonNegative]

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        low, high = self.uniform
        if low > high:
            raise ValueError(f"uniform: lower bound {low:g} is above upper bound {high:g}")
        return self


class LogNormalParameters(_Strict):
    median: float = Field(gt=0, allow_inf_nan=False)
    sigma: float = Field(ge=0, le=5, allow_inf_nan=False)


class LogNormal(_Strict):
    """Log-normal with the given median and shape: the long right tail real tool latencies have."""

    lognormal: LogNormalParameters


class FieldValues(_Strict):
    """The values a numeric fixture field takes across all records, drawn uniformly."""

    field: str = Field(min_length=1)


def _form(value: Any) -> str:
    """Which form a value is written in, so a mistake is reported against that form alone."""
    for key in ("uniform", "lognormal", "field"):
        if (isinstance(value, dict) and key in value) or hasattr(value, key):
            return key
    return "fixed"


Distribution = Annotated[
    Annotated[NonNegative, Tag("fixed")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[LogNormal, Tag("lognormal")]
    | Annotated[FieldValues, Tag("field")],
    Discriminator(_form),
]
"""How a flow writes a quantity that may vary per workflow."""
FORM_TAGS = frozenset({"fixed", "uniform", "lognormal", "field"})


def field_values(records: Sequence[dict[str, Any]], name: str, where: str) -> np.ndarray:
    """The numeric values of fixture field `name` over `records`; a UserError naming `where` if any is
    missing, not a number, or negative."""
    values = []
    for number, record in enumerate(records):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UserError(
                f"{where}: fixture field '{name}' must be a number in every record (record {number})"
            )
        if value < 0:
            raise UserError(f"{where}: fixture field '{name}' is negative in record {number}")
        values.append(float(value))
    return np.asarray(values)


def draw(spec: Distribution, rng: np.random.Generator, empirical: np.ndarray | None = None) -> float:
    """One draw of `spec`; a `{field}` spec draws from `empirical` (its values, see `field_values`)."""
    if isinstance(spec, Uniform):
        return float(rng.uniform(*spec.uniform))
    if isinstance(spec, LogNormal):
        parameters = spec.lognormal
        return float(
            min(parameters.median * math.exp(parameters.sigma * rng.standard_normal()), MAX_SECONDS_MS)
        )
    if isinstance(spec, FieldValues):
        assert empirical is not None, "a field distribution needs its values"
        return float(empirical[rng.integers(len(empirical))])
    return float(spec)


def draw_count(spec: Distribution, rng: np.random.Generator, empirical: np.ndarray | None = None) -> int:
    """An integer draw: uniform bounds are inclusive; other draws are rounded."""
    if isinstance(spec, Uniform):
        low, high = spec.uniform
        return int(rng.integers(math.ceil(low), math.floor(high) + 1))
    return round(draw(spec, rng, empirical))


def upper_bound(spec: Distribution) -> float | None:
    """The largest value `spec` can draw, or None when it has no stated bound (lognormal, field)."""
    if isinstance(spec, Uniform):
        return spec.uniform[1]
    if isinstance(spec, LogNormal | FieldValues):
        return None
    return float(spec)
