"""summary.json: the run's statistics, computed from what the run directory holds.

Computing from the files (never from in-memory state) means a summary written mid-run, at the end, or
after any number of crashes and resumes counts exactly the workflows the directory records: a workflow
counts once it has its row, steps count only as part of a counted workflow, and the measured window is
the sum of each session's window (a session is one `bench run` or `--resume` of the directory).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from flowperf.stats import describe
from flowperf.store import RunStore

LATENCY_METRICS = ("step_ms", "ttft_ms", "tpot_ms")


NUMERIC_WORKFLOW_COLUMNS = (
    "flow_index",
    "session",
    "workflow_ms",
    "output_tokens",
    "prompt_tokens",
    "cached_prompt_tokens",
    "end_offset_ms",
)


def _workflow_frame(store: RunStore) -> pd.DataFrame:
    frame = pd.DataFrame(store.read_workflows())
    if frame.empty:
        return frame
    for column in NUMERIC_WORKFLOW_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.drop_duplicates(subset=["flow_index"], keep="first")


def _step_frame(store: RunStore, counted: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(store.read_steps())
    if frame.empty or counted.empty:
        return pd.DataFrame()
    keys = counted[["flow_index", "session"]]
    frame = frame.merge(keys, on=["flow_index", "session"], how="inner")
    return frame.drop_duplicates(subset=["flow_index", "step_index"], keep="first")


def measured_window_ms(workflows: pd.DataFrame) -> float:
    """Sum over sessions of the time from a session's start to its last finished workflow."""
    if workflows.empty:
        return 0.0
    return float(workflows.groupby("session")["end_offset_ms"].max().sum())


def _itl_samples(steps: pd.DataFrame) -> list[float]:
    if "itl_ms" not in steps:
        return []
    return [gap for gaps in steps["itl_ms"].dropna() for gap in gaps]


def _latency_block(steps: pd.DataFrame) -> dict[str, Any]:
    block = {
        metric: describe(steps[metric].dropna()) if metric in steps else describe([])
        for metric in LATENCY_METRICS
    }
    block["itl_ms"] = describe(_itl_samples(steps))
    return block


def _cache_by_position(ok_steps: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for (position, step_id), group in ok_steps.groupby(["step_index", "step_id"], sort=True):
        prompt = int(group["prompt_tokens"].sum())
        cached = int(group["cached_prompt_tokens"].fillna(0).sum())
        rows.append(
            {
                "step_index": int(position),
                "step_id": step_id,
                "prompt_tokens": prompt,
                "cached_prompt_tokens": cached,
                "hit_ratio": cached / prompt if prompt else None,
            }
        )
    return rows


def build_summary(
    store: RunStore,
    *,
    status: str,
    planned_workflows: int,
    timings: dict[str, Any],
    engine: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """The summary document for the run directory behind `store`."""
    workflows = _workflow_frame(store)
    steps = _step_frame(store, workflows)
    window_ms = measured_window_ms(workflows)
    ok_workflows = workflows[workflows["status"] == "ok"] if not workflows.empty else workflows
    ok_steps = steps[steps["status"] == "ok"] if not steps.empty else steps
    failed = workflows[workflows["status"] != "ok"] if not workflows.empty else workflows
    output_tokens = int(ok_steps["output_tokens"].sum()) if not ok_steps.empty else 0
    window_s = window_ms / 1000.0
    by_step: dict[str, Any] = {}
    if not ok_steps.empty:
        for step_id, group in ok_steps.groupby("step_id", sort=False):
            by_step[str(step_id)] = _latency_block(group)
    return {
        "status": status,
        "run": run,
        "engine": engine,
        "counts": {
            "workflows_planned": planned_workflows,
            "workflows_done": len(workflows),
            "workflows_ok": len(ok_workflows),
            "workflows_failed": len(failed),
            "failures_by_type": dict(Counter(failed["error_type"])) if not failed.empty else {},
            "steps_done": len(steps),
            "steps_ok": len(ok_steps),
            "sessions": int(workflows["session"].nunique()) if not workflows.empty else 0,
        },
        "timing": timings | {"measured_window_ms": window_ms},
        "latency": {
            "workflow_ms": describe(ok_workflows["workflow_ms"] if not ok_workflows.empty else []),
            **(
                _latency_block(ok_steps)
                if not ok_steps.empty
                else {m: describe([]) for m in (*LATENCY_METRICS, "itl_ms")}
            ),
        },
        "latency_by_step": by_step,
        "throughput": {
            "output_tokens": output_tokens,
            "output_tokens_per_s": output_tokens / window_s if window_s > 0 else None,
            "steps_per_s": len(ok_steps) / window_s if window_s > 0 else None,
            "workflows_per_s": len(ok_workflows) / window_s if window_s > 0 else None,
        },
        "prefix_cache": _cache_by_position(ok_steps) if not ok_steps.empty else [],
    }
