"""Service-level objectives for workflows: which workflows a deployment served well enough, and how many.

An objective is `<metric>_p<NN>_ms=<limit>` (or `<metric>_max_ms=<limit>`): "at least NN% of the samples
are within `limit` ms". Its metric is either per workflow or per step:

- `workflow`: the workflow's latency (open loop from its scheduled arrival, so queueing counts; closed
  loop its makespan): one sample per workflow.
- `session`: the same for a replayed session trace, where each workflow is one session.
- `ttft`, `step`, `tpot`: one sample per LLM step of the workflow; `itl`: one per inter-token gap of any
  of its LLM steps.

A workflow *meets* an objective when at least NN% of its own samples are within the limit (`max`: every
sample): a share of samples, counted, not a percentile interpolated between samples. With one sample
(`workflow`) that is simply "its latency is within the limit"; for `ttft_p99_ms` over a three-step
workflow it means every step's TTFT (99% of 3 samples rounds up to all 3); for `itl_p99_ms` over 189 gaps
it allows one gap above the limit. A workflow without samples of a metric (no gaps: one-token steps)
meets that objective. A failed workflow meets none: it was not served.

Per level: attainment is the share of the level's workflows that meet every objective (failed ones, and
ones still unfinished when a saturated level was stopped, count in the denominator); goodput is how many
such workflows finished per second of measured window; the objective failed most is the one the most
workflows missed. Each objective is also checked over the whole level (the level's own NN-th percentile
against the limit), the figure a per-request SLO would report: `stats.percentile`, the one percentile
every summary and sweep row uses, so a row's `ttft_p95_ms` and `ttft_p95_ms`'s level value agree.

Pure: numbers in, numbers out, so every definition here has tests with answers worked out by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flowperf import stats
from flowperf.errors import UserError

WORKFLOW_METRICS = ("workflow", "session")  # a replayed session trace's workflow is a session
STEP_METRICS = ("ttft", "itl", "tpot", "step")
METRICS = (*WORKFLOW_METRICS, *STEP_METRICS)
NAME = re.compile(rf"^({'|'.join(METRICS)})_(max|p(\d+(?:\.\d+)?))_ms$")
NAME_FORMAT = f"<metric>_p<NN>_ms or <metric>_max_ms, metric one of {', '.join(METRICS)}"


@dataclass(frozen=True)
class Objective:
    """`metric`'s samples: at least `percentile`% of them within `limit_ms`."""

    name: str
    metric: str
    percentile: float
    limit_ms: float

    @property
    def per_workflow(self) -> bool:
        return self.metric in WORKFLOW_METRICS


def parse_objective(text: str, flag: str = "--slo") -> Objective:
    """One `name=limit` item; a UserError naming the item for anything else."""
    name, equals, value = (part.strip() for part in text.partition("="))
    match = NAME.match(name)
    if match is None:
        raise UserError(f"{flag}: unknown objective {name!r}; names are {NAME_FORMAT}")
    percentile = 100.0 if match.group(2) == "max" else float(match.group(3))
    if not 0 < percentile <= 100:
        raise UserError(f"{flag}: {name}: the percentile must be above 0 and at most 100")
    try:
        limit = float(value) if equals else math.nan
    except ValueError:
        limit = math.nan
    if not math.isfinite(limit) or limit <= 0:
        raise UserError(f"{flag}: {name}: give a limit in ms above 0, e.g. {name}=500")
    return Objective(name, match.group(1), percentile, limit)


def parse_slos(text: str, flag: str = "--slo") -> tuple[Objective, ...]:
    """`workflow_p95_ms=8000,ttft_p99_ms=500`: each objective once."""
    objectives = tuple(parse_objective(item, flag) for item in text.split(",") if item.strip())
    if not objectives:
        raise UserError(f"{flag}: give at least one objective, e.g. workflow_p95_ms=8000")
    names = [objective.name for objective in objectives]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"{flag}: {', '.join(repeated)} given more than once")
    return objectives


def share_within(values: Sequence[float], limit_ms: float) -> float:
    """The share of `values` at or below `limit_ms` (1.0 when there are none: nothing to miss)."""
    return sum(value <= limit_ms for value in values) / len(values) if values else 1.0


@dataclass(frozen=True)
class WorkflowSamples:
    """One workflow as the objectives see it: whether it succeeded and its samples per metric."""

    ok: bool
    samples: Mapping[str, Sequence[float]]


def meets(objective: Objective, workflow: WorkflowSamples) -> bool:
    if not workflow.ok:
        return False
    values = workflow.samples.get(objective.metric) or ()
    return share_within(values, objective.limit_ms) * 100.0 >= objective.percentile - 1e-9


@dataclass(frozen=True)
class ObjectiveResult:
    """One objective over a level: workflows that missed it, and the level's own percentile."""

    name: str
    missed: int
    level_value_ms: float | None
    level_met: bool | None


@dataclass(frozen=True)
class Attainment:
    workflows: int
    good: int
    attainment: float | None
    goodput_per_s: float | None
    objectives: list[ObjectiveResult] = field(default_factory=list)

    @property
    def failing_objective(self) -> str | None:
        """The objective the most workflows missed (the first given, on a tie); None when none missed."""
        worst = max(self.objectives, key=lambda result: result.missed, default=None)
        return worst.name if worst is not None and worst.missed else None


def evaluate(
    objectives: Sequence[Objective],
    workflows: Sequence[WorkflowSamples],
    window_s: float,
    unfinished: int = 0,
) -> Attainment:
    """Attainment and goodput of a level: `workflows` finished in a measured window of `window_s`
    seconds; `unfinished` more had arrived but were abandoned when the level was stopped early (they
    meet nothing)."""
    total = len(workflows) + unfinished
    good = sum(all(meets(objective, workflow) for objective in objectives) for workflow in workflows)
    results = []
    for objective in objectives:
        missed = unfinished + sum(not meets(objective, workflow) for workflow in workflows)
        pooled = [value for w in workflows if w.ok for value in w.samples.get(objective.metric) or ()]
        level = stats.percentile(pooled, objective.percentile)
        results.append(
            ObjectiveResult(
                objective.name, missed, level, None if level is None else level <= objective.limit_ms
            )
        )
    return Attainment(
        workflows=total,
        good=good,
        attainment=good / total if total else None,
        goodput_per_s=good / window_s if window_s > 0 else None,
        objectives=results,
    )
