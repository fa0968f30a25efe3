"""The job-level results of a replayed session trace: what `summary.sessions` holds.

A run is a session replay when its LLM steps carry the trace's `request_id`; each workflow is then one
session. Pauses are bucketed by the think time planned before a request (`think_before_ms`), so the cached
share of a bucket shows how long the engine keeps a session's KV blocks across a pause. Goodput judges
each session against the run's `--slo` objectives with `rundir.slo`, the same rules `bench sweep` uses.
Pure: tables in, a model out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from flowperf.rundir.slo import WorkflowSamples, evaluate, parse_slos
from flowperf.rundir.summary_schema import (
    Distribution,
    ObjectiveOutcome,
    SessionGoodput,
    SessionResults,
    ThinkGapGroup,
)
from flowperf.stats import describe

THINK_BUCKETS_MS = (0.0, 1_000.0, 5_000.0, 30_000.0)  # [0, 1) s, [1, 5) s, [5, 30) s, 30 s and over


def is_session_replay(steps: pd.DataFrame) -> bool:
    return not steps.empty and "request_id" in steps and bool(steps["request_id"].notna().any())


def think_bucket(think_ms: float) -> tuple[float, float | None]:
    """The bucket [from, below) of a planned pause; the last has no upper bound."""
    index = int(np.searchsorted(THINK_BUCKETS_MS, think_ms, side="right")) - 1
    below = THINK_BUCKETS_MS[index + 1] if index + 1 < len(THINK_BUCKETS_MS) else None
    return THINK_BUCKETS_MS[index], below


def by_think_gap(ok_llm: pd.DataFrame, turn_group: Any) -> list[ThinkGapGroup]:
    """Ok LLM requests grouped by the pause before them, shortest first (`turn_group`: summary's figures
    of a group of steps)."""
    known = ok_llm.dropna(subset=["think_before_ms"])
    if known.empty:
        return []
    lows = known["think_before_ms"].astype(float).map(lambda ms: think_bucket(ms)[0])
    return [
        ThinkGapGroup(think_from_ms=low, think_below_ms=think_bucket(low)[1], **turn_group(group))
        for low, group in known.groupby(lows, sort=True)
    ]


def session_samples(
    workflows: pd.DataFrame, latency: pd.Series, ok_llm: pd.DataFrame
) -> list[WorkflowSamples]:
    """Each finished session as the objectives see it: its latency, its requests' TTFT, step time, TPOT
    and inter-token gaps."""
    groups = dict(iter(ok_llm.groupby("flow_index"))) if not ok_llm.empty else {}
    samples = []
    for position, row in enumerate(workflows.itertuples(index=False)):
        own = groups.get(row.flow_index)
        own_latency = float(latency.iloc[position])
        values: dict[str, list[float]] = {"workflow": [own_latency], "session": [own_latency]}
        if own is not None:
            values |= {name: own[f"{name}_ms"].dropna().tolist() for name in ("ttft", "step", "tpot")}
            values["itl"] = [float(gap) for gaps in own["itl_ms"].dropna() for gap in gaps]
        samples.append(WorkflowSamples(ok=row.status == "ok", samples=values))
    return samples


def goodput(
    slo: str, workflows: pd.DataFrame, latency: pd.Series, ok_llm: pd.DataFrame, window_s: float
) -> SessionGoodput:
    result = evaluate(parse_slos(slo), session_samples(workflows, latency, ok_llm), window_s)
    return SessionGoodput(
        slo=slo,
        sessions=result.workflows,
        good=result.good,
        attainment=result.attainment,
        goodput_per_s=result.goodput_per_s,
        objectives=[
            ObjectiveOutcome(name=o.name, missed=o.missed, run_value_ms=o.level_value_ms, run_met=o.level_met)
            for o in result.objectives
        ],
    )


def session_results(
    workflows: pd.DataFrame,
    latency: pd.Series,
    ok_llm: pd.DataFrame,
    window_s: float,
    slo: str | None,
    turn_group: Any,
) -> SessionResults:
    """`latency`: per row of `workflows`, scheduled arrival (or first submission) to last step's end."""
    ok = workflows["status"] == "ok"
    per_session = ok_llm.groupby("flow_index").size() if not ok_llm.empty else pd.Series(dtype=float)
    return SessionResults(
        sessions=len(workflows),
        sessions_ok=int(ok.sum()),
        requests=len(ok_llm),
        requests_per_session=Distribution(**describe(per_session)),
        session_latency_ms=Distribution(**describe(latency[ok.to_numpy()])),
        think_ms=Distribution(**describe(ok_llm["think_before_ms"].dropna())),
        by_think_gap=by_think_gap(ok_llm, turn_group),
        goodput=None if slo is None else goodput(slo, workflows, latency, ok_llm, window_s),
    )
