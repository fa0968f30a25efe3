"""Issue 21's acceptance on the real engine: the shipped Weka-format sample replays with its sub-agents
where the trace puts them and its global-scope prefix shared across sessions; and a recording of
flowperf's own agent flows through `bench record` in front of a real vLLM server replays on the
in-process engine with the same requests, dependencies, prompt lengths, cache reuse and pauses."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from flowperf.config import RunConfig
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.records import StepRecord
from flowperf.rundir.store import RunStore
from flowperf.sessions.importers import import_trace
from flowperf.sessions.shipped import shipped_session_trace
from helpers import ROOT


def replay(engine: Any, engine_loop: Any, tmp_path: Path, run_id: str, **trace: Any) -> Path:
    """`bench replay` of `trace` on the session's in-process engine; the run directory."""
    config = RunConfig.model_validate(
        {
            "trace": trace,
            "fixtures_dir": str(ROOT / "fixtures"),
            "warmup": 0,
            "monitor": {"sample_interval_s": 0},
            "output": {"out_dir": str(tmp_path / "runs"), "run_id": run_id},
        }
    )
    hooks = RunHooks(echo=lambda _: None, warn=lambda _: None)
    result = engine_loop.run(run_benchmark(config, hooks, engine=engine, shutdown_engine=False))
    assert result.summary.counts.workflows_failed == 0
    return result.run_dir


def llm_steps(run_dir: Path) -> dict[str, StepRecord]:
    return {s.request_id: s for s in RunStore(run_dir).read_steps() if s.kind == "llm" and s.request_id}


def overlap(a: StepRecord, b: StepRecord) -> bool:
    return a.start_offset_ms < b.end_offset_ms and b.start_offset_ms < a.end_offset_ms


@pytest.mark.engine
def test_the_shipped_weka_sample_replays_sub_agents_and_shared_prefixes(
    engine: Any, engine_loop: Any, tmp_path: Path
) -> None:
    """`coding-agent-weka` by name, its first 12 sessions (4 in flight, pauses / 100, lengths x 0.05).
    Session 11's `async_launched` sub-agent runs beside the main agent's next turn (both need turn 3;
    their records overlap); session 2's `completed` sub-agent blocks the main agent until it ends. Every
    first turn sends the same 30-block system prompt (global scope): a session whose first turn starts
    after another's ended finds it in the prefix cache."""
    run_dir = replay(
        engine, engine_loop, tmp_path, "weka",
        source="coding-agent-weka", max_sessions=12, sessions=4, token_scale=0.05, time_scale=100.0,
    )  # fmt: skip
    trace = import_trace(shipped_session_trace("coding-agent-weka"))
    steps = llm_steps(run_dir)
    assert set(steps) == {r.id for s in trace.sessions[:12] for r in s.requests}
    beside, main = steps["synthetic-coding-11:4"], steps["synthetic-coding-11:6"]
    assert overlap(beside, main), (beside, main)
    completed = [steps[f"synthetic-coding-02:{k}"] for k in range(1, 6)]
    assert all(a.end_offset_ms <= b.start_offset_ms for a, b in pairwise(completed))
    firsts = [steps[f"{s.id}:0"] for s in trace.sessions[:12]]
    first_end = min(step.end_offset_ms for step in firsts)
    later = [step for step in firsts if step.start_offset_ms > first_end]
    assert len(later) >= 8, [(s.start_offset_ms, s.end_offset_ms) for s in firsts]
    assert all((step.cached_prompt_tokens or 0) > 0 for step in later), [
        (s.request_id, s.cached_prompt_tokens) for s in later
    ]


def test_a_declared_sessions_join_after_a_fan_out_needs_every_branch() -> None:
    """map_reduce's shape through the proxy: three map calls sent together (no content match), then the
    reduce call after all ended needs all three (the frontier), the next call only the reduce; a call sent
    while one branch is still running needs only what had ended."""
    from flowperf.sessions.inference import Observed, SessionInference

    infer = SessionInference()

    def place(rid: str, start: float, end: float) -> tuple[list[str], float]:
        placed = infer.place(Observed(rid, start, end, "s", None, None))
        return placed.needs, placed.think_ms

    assert place("m1", 0, 50) == ([], 0.0)
    assert place("m2", 1, 70) == ([], 1.0)
    assert place("m3", 2, 60) == ([], 2.0)
    assert place("reduce", 75, 90) == (["m1", "m3", "m2"], 5.0)
    assert place("next", 100, 110) == (["reduce"], 10.0)
    assert place("early", 105, 130) == (["reduce"], 15.0)
    other = SessionInference()
    other.place(Observed("a", 0, 10, "t", None, None))
    other.place(Observed("b", 11, 50, "t", None, None))
    assert other.place(Observed("c", 20, 30, "t", None, None)).needs == ["a"]  # b still running
