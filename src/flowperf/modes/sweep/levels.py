"""Which load a sweep runs next, decided from the levels it has finished and nothing else.

A sweep's levels are a pure function of its settings (`SweepSpec`) and of the rows of the levels already
finished (`LevelRow`, one line each in sweep.jsonl), so a resumed sweep asks the same question of the
same rows and gets the same answer: it continues at the first unfinished level, and a search re-uses every
level measured so far.

- Listed levels: `--concurrency 1,2,4` (closed loop) or `--rates 0.5,1,2` (open loop, Poisson arrivals).
- `--auto N` (GuideLLM's sweep profile): a synchronous level (closed loop, one workflow at a time), a
  saturation level (closed loop at `--saturation-concurrency`: the most the deployment can finish per
  second), then N open-loop rates equally spaced strictly between the two levels' achieved rates.
- `--find-max`: bisection for the highest load whose SLO attainment is at least `--slo-target`, on rate
  (or, with `--concurrency`, on concurrency). The bracket is [highest passing load below the lowest
  failing one, lowest failing load]; an auto sweep's saturation throughput caps it from above (no open
  loop beyond the maximum throughput is sustainable), and with nothing failing the top load is doubled.
  It stops when the bracket is within `--tolerance` of its top (rates: (hi - lo) <= tolerance * hi;
  concurrency: hi - lo <= 1), or after `--max-search-levels` levels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Role = Literal["listed", "sync", "saturation", "auto_rate", "search"]
Mode = Literal["closed_loop", "open_loop"]

SATURATION_RATIO = 0.7  # an open-loop level finishing fewer than this share of its offered rate ...
SATURATION_GROWTH_CHECKS = 4  # ... while its in-flight count rose over this many consecutive checks ...
SATURATION_MIN_GROWTH = 3  # ... by at least this many workflows in all ...
SATURATION_MIN_S = 3.0  # ... after at least this long is stopped early as saturated
RATE_DIGITS = 4  # significant digits of a searched or spaced rate (and of its directory name)


class SweepSpec(BaseModel):
    """What the sweep was asked to run, as sweep.json keeps it (resume reads it back)."""

    model_config = ConfigDict(extra="forbid")

    levels: Literal["concurrency", "rates", "auto"]
    concurrency: list[int] = Field(default_factory=list)
    rates: list[float] = Field(default_factory=list)
    auto: int = 0
    saturation_concurrency: int = 32
    duration_s: float | None = None
    slo: str | None = None
    slo_target: float = 0.95
    find_max: bool = False
    tolerance: float = 0.1
    max_search_levels: int = 8

    @property
    def search_unit(self) -> str:
        return "concurrency" if self.levels == "concurrency" else "workflows/s"


class LevelRow(BaseModel):
    """One finished level, as sweep.jsonl holds it: figures from its run directory, never from memory.

    Latencies are the level's ok workflows' latency (open loop from scheduled arrival) and its LLM
    steps' TTFT; `achieved_per_s` counts every finished workflow over the measured window; `abandoned`
    are workflows that had arrived but were still unfinished when the level was stopped early.
    """

    model_config = ConfigDict(extra="ignore")

    index: int
    name: str
    role: Role
    mode: Mode
    concurrency: int | None = None
    rate: float | None = None
    status: str
    workflows: int = 0
    ok: int = 0
    failed: int = 0
    abandoned: int = 0
    window_s: float = 0.0
    wall_s: float = 0.0
    achieved_per_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    attainment: float | None = None
    goodput_per_s: float | None = None
    failing_objective: str | None = None
    failing_share: float | None = None
    meets_target: bool | None = None
    stopped_early: str | None = None
    objectives: dict[str, dict[str, float | bool | None]] = Field(default_factory=dict)
    finished_at: str | None = None
    engine_waiting_mean: float | None = Field(
        default=None, description="the engines' requests waiting, mean over the level's samples (all servers)"
    )
    engine_waiting_max: float | None = None
    engine_kv_usage_max: float | None = Field(default=None, description="the fullest KV cache, 0-1")
    engine_preemptions: float | None = None

    @property
    def load(self) -> float:
        """The load the level offered: its rate (open loop) or its concurrency (closed loop)."""
        return float(self.rate if self.mode == "open_loop" else self.concurrency or 0)

    @property
    def offered(self) -> str:
        return f"{self.rate:g}/s" if self.mode == "open_loop" else f"c={self.concurrency}"

    @property
    def passes(self) -> bool:
        """Whether the level sustained its load within the objectives: attainment at the target and not
        stopped as saturated (a level stopped only for --duration can pass)."""
        saturated = self.stopped_early is not None and self.stopped_early.startswith("saturated")
        return bool(self.meets_target) and not saturated


@dataclass(frozen=True)
class LevelSpec:
    """A level to run: closed loop at `concurrency`, or open loop at `rate` (no cap on in flight)."""

    role: Role
    concurrency: int | None = None
    rate: float | None = None

    @property
    def mode(self) -> Mode:
        return "open_loop" if self.rate is not None else "closed_loop"

    def name(self, index: int) -> str:
        load = f"r{self.rate:g}" if self.rate is not None else f"c{self.concurrency}"
        return f"level-{index:02d}-{load}"


def rounded_rate(rate: float) -> float:
    return float(f"{rate:.{RATE_DIGITS}g}")


def auto_rates(spec: SweepSpec, rows: list[LevelRow]) -> list[float]:
    """The N rates strictly between the synchronous and the saturation level's achieved rates, once both
    are measured (none when either finished nothing, or saturation was no faster)."""
    if len(rows) < 2 or spec.auto == 0:
        return []
    low, high = rows[0].achieved_per_s, rows[1].achieved_per_s
    if not low or not high or high <= low:
        return []
    spaced = np.linspace(low, high, spec.auto + 2)[1:-1]
    return list(dict.fromkeys(rounded_rate(float(rate)) for rate in spaced))


def listed_levels(spec: SweepSpec, rows: list[LevelRow]) -> list[LevelSpec]:
    """The levels run before any search, in order (an auto sweep's rates appear once its first two
    levels are measured)."""
    if spec.levels == "concurrency":
        return [LevelSpec("listed", concurrency=c) for c in spec.concurrency]
    if spec.levels == "rates":
        return [LevelSpec("listed", rate=rate) for rate in spec.rates]
    fixed = [
        LevelSpec("sync", concurrency=1),
        LevelSpec("saturation", concurrency=spec.saturation_concurrency),
    ]
    return fixed + [LevelSpec("auto_rate", rate=rate) for rate in auto_rates(spec, rows)]


def search_points(spec: SweepSpec, rows: list[LevelRow]) -> list[LevelRow]:
    """The measured levels in the searched dimension: open-loop levels for rates, closed-loop ones for
    --concurrency (an auto sweep's synchronous and saturation levels bound the search, they are not in
    it)."""
    mode = "closed_loop" if spec.levels == "concurrency" else "open_loop"
    return [row for row in rows if row.mode == mode and row.role not in ("sync", "saturation")]


@dataclass(frozen=True)
class Bracket:
    """The highest load known to pass (None: none passed) and the lowest known to fail above it (None:
    none failed and nothing caps it)."""

    low: float | None
    high: float | None

    def resolved(self, spec: SweepSpec) -> bool:
        if self.high is None:
            return False
        low = self.low or 0.0
        if spec.levels == "concurrency":
            return self.high - low <= 1
        return self.high - low <= spec.tolerance * self.high


def bracket(spec: SweepSpec, rows: list[LevelRow]) -> Bracket:
    points = search_points(spec, rows)
    failing = [row.load for row in points if not row.passes]
    saturation = next((row for row in rows if row.role == "saturation"), None)
    if saturation is not None and saturation.achieved_per_s:
        failing.append(saturation.achieved_per_s)
    high = min(failing, default=None)
    passing = [row.load for row in points if row.passes and (high is None or row.load < high)]
    return Bracket(max(passing, default=None), high)


def search_level(spec: SweepSpec, rows: list[LevelRow]) -> LevelSpec | None:
    """The next bisection level, or None when the bracket is resolved, the search has used its levels,
    or no load can pass (an auto sweep whose synchronous level already misses the target)."""
    if sum(row.role == "search" for row in rows) >= spec.max_search_levels:
        return None
    if spec.levels == "auto" and rows and not rows[0].passes:
        return None
    found = bracket(spec, rows)
    if found.resolved(spec) or (found.low is None and found.high is None):
        return None
    if found.high is None:
        assert found.low is not None
        middle = 2 * found.low
    else:
        middle = ((found.low or 0.0) + found.high) / 2
    if spec.levels == "concurrency":
        concurrency = int(middle)
        return LevelSpec("search", concurrency=concurrency) if concurrency >= 1 else None
    rate = rounded_rate(middle)
    return None if rate in (found.low, found.high) or rate <= 0 else LevelSpec("search", rate=rate)


def next_level(spec: SweepSpec, rows: list[LevelRow]) -> LevelSpec | None:
    """The level after `rows` (finished, in order), or None when the sweep is done."""
    listed = listed_levels(spec, rows)
    if len(rows) < len(listed):
        return listed[len(rows)]
    return search_level(spec, rows) if spec.find_max else None


def max_sustainable(spec: SweepSpec, rows: list[LevelRow]) -> dict[str, object] | None:
    """The highest load measured to meet the target below the lowest that did not, with the bracket and
    whether it is within the tolerance; None without objectives."""
    if spec.slo is None:
        return None
    found = bracket(spec, rows)
    return {
        "load": found.low,
        "unit": spec.search_unit,
        "bracket": [found.low, found.high],
        "resolved": found.resolved(spec),
        "searched": spec.find_max,
        "tolerance": 1 if spec.levels == "concurrency" else spec.tolerance,
    }


def knee(rows: list[LevelRow]) -> int | None:
    """The index of the level at the knee of the latency-throughput curve: the one with the highest
    power (achieved rate / median latency, Kleinrock's optimal operating point), where more load starts
    to buy more latency than throughput."""
    powered = [
        (row.achieved_per_s / row.latency_p50_ms, row.index)
        for row in rows
        if row.achieved_per_s and row.latency_p50_ms
    ]
    return max(powered)[1] if powered else None


def saturation_reason(rate: float, elapsed_s: float, finished: int, in_flight: list[int]) -> str | None:
    """Why an open-loop level at `rate` is clearly saturated (None if it is not): after
    SATURATION_MIN_S, it finishes fewer than SATURATION_RATIO of the offered workflows per second while
    the workflows in flight (one count per check, oldest first) rose at each of the last
    SATURATION_GROWTH_CHECKS checks by SATURATION_MIN_GROWTH in all."""
    if elapsed_s < SATURATION_MIN_S or len(in_flight) <= SATURATION_GROWTH_CHECKS:
        return None
    achieved = finished / elapsed_s
    recent = in_flight[-(SATURATION_GROWTH_CHECKS + 1) :]
    rising = all(later >= earlier for earlier, later in itertools.pairwise(recent))
    if achieved >= SATURATION_RATIO * rate or not rising or recent[-1] - recent[0] < SATURATION_MIN_GROWTH:
        return None
    return (
        f"saturated: finished {achieved:.3g}/s, under {SATURATION_RATIO:.0%} of the offered {rate:g}/s, "
        f"with workflows in flight growing {recent[0]} -> {recent[-1]} over the last "
        f"{SATURATION_GROWTH_CHECKS} checks"
    )
