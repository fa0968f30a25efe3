"""The summary and report of agentic runs: LLM steps apart from tool and think pauses, TTFT and cache hits
by turn depth and prompt length, where a workflow's time went, request next to session concurrency, and
each workflow drawn as a graph. Synthetic directories with analytic answers first, then one real run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.outputs.plots import timeline_bars
from flowperf.outputs.report import (
    html_report,
    json_report,
    print_report,
    print_run_table,
    report_summary,
    time_split_text,
    turn_rows,
)
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.records import StepRecord, WorkflowRecord
from flowperf.rundir.rundata import load_run
from flowperf.rundir.store import RunStore
from flowperf.rundir.summary import SummaryContext, build_summary, prompt_bucket
from flowperf.rundir.summary_schema import RunInfo, RunSummary
from helpers import ROOT

RUN_V1 = ROOT / "tests" / "data" / "run_v1"


def step(index: int, start: float, end: float, kind: str = "llm", **fields: Any) -> StepRecord:
    """An ok step of workflow 0, session 0; an LLM step gets 4 output tokens unless told otherwise."""
    llm = {"ttft_ms": 1.0, "tpot_ms": 1.0, "prompt_tokens": 100, "output_tokens": 4} if kind == "llm" else {}
    values = {
        "flow_index": 0,
        "flow_id": "f-0",
        "session": 0,
        "step_index": index,
        "step_id": fields.pop("step_id", f"{kind}{index}"),
        "max_tokens": 4,
        "inflight_at_start": 1,
        "start_offset_ms": start,
        "end_offset_ms": end,
        "status": "ok",
        "step_ms": end - start,
        "kind": kind,
        "needs": [],
    }
    return StepRecord.model_validate(values | llm | fields)


def workflow(steps: list[StepRecord], start: float, end: float, **fields: Any) -> WorkflowRecord:
    values = {
        "flow_index": steps[0].flow_index,
        "flow_id": steps[0].flow_id,
        "session": 0,
        "status": "ok",
        "workflow_ms": end - start,
        "step_ms_sum": sum(s.step_ms for s in steps),
        "steps": len(steps),
        "steps_ok": len(steps),
        "prompt_tokens": 0,
        "output_tokens": 0,
        "cached_prompt_tokens": 0,
        "start_offset_ms": start,
        "end_offset_ms": end,
    }
    return WorkflowRecord.model_validate(values | fields)


def summarize(tmp_path: Path, steps: list[StepRecord], workflows: list[WorkflowRecord]) -> RunSummary:
    """The summary of a run directory holding exactly these records."""
    store = RunStore.create(tmp_path, "run")
    for record in steps:
        store.append_step(record)
    for record in workflows:
        store.append_workflow(record)
    store.close()
    context = SummaryContext(planned_workflows=len(workflows), run=RunInfo(run_id="run"))
    return build_summary(store, "complete", context)


def test_request_concurrency_counts_llm_steps_only_over_the_session_window(tmp_path: Path) -> None:
    # two LLM calls overlap on [5, 10]; a tool pause runs [8, 20]; the workflow spans [0, 20]
    steps = [step(0, 0.0, 10.0), step(1, 5.0, 15.0), step(2, 8.0, 20.0, kind="tool")]
    summary = summarize(tmp_path, steps, [workflow(steps, 0.0, 20.0)])
    requests, sessions = summary.load.request_concurrency, summary.load.achieved_concurrency
    assert requests.mean == pytest.approx(20.0 / 20.0) and requests.max == 2
    assert sessions.mean == pytest.approx(1.0) and sessions.max == 1
    assert [t for t, _ in requests.series] == [t for t, _ in sessions.series]  # the same instants
    assert dict(requests.series)[7.1] == 2 and dict(requests.series)[17.2] == 0


def test_a_step_without_an_end_offset_ends_at_start_plus_step_ms(tmp_path: Path) -> None:
    steps = [step(0, 0.0, 10.0, end_offset_ms=None), step(1, 0.0, 30.0, end_offset_ms=None)]
    summary = summarize(tmp_path, steps, [workflow(steps, 0.0, 40.0)])
    assert summary.load.request_concurrency.mean == pytest.approx(40.0 / 40.0)
    assert summary.load.request_concurrency.max == 2


def test_tool_and_think_steps_are_left_out_of_run_wide_step_figures(tmp_path: Path) -> None:
    steps = [
        step(0, 0.0, 10.0, step_id="act"),
        step(1, 10.0, 110.0, kind="tool", step_id="run_tool"),
        step(2, 110.0, 120.0, step_id="act"),
        step(3, 120.0, 620.0, kind="think", step_id="pause"),
    ]
    summary = summarize(tmp_path, steps, [workflow(steps, 0.0, 620.0)])
    assert summary.latency.step_ms.count == 2 and summary.latency.step_ms.max == pytest.approx(10.0)
    assert summary.throughput.steps_per_s == pytest.approx(2 / 0.62)
    assert summary.counts.steps_ok == 4  # counts are of records, every kind
    by_step = summary.latency_by_step
    assert by_step["act"].request_output_tokens_per_s == pytest.approx(8 / 0.02)
    assert by_step["run_tool"].kind == "tool" and by_step["run_tool"].request_output_tokens_per_s is None
    assert by_step["run_tool"].step_ms.p50 == pytest.approx(100.0)  # a pause's duration
    assert by_step["pause"].ttft_ms.count == 0
    assert [row.step_id for row in summary.prefix_cache] == ["act", "act"]


def test_per_step_table_shows_no_rate_or_ttft_for_a_tool(tmp_path: Path) -> None:
    steps = [step(0, 0.0, 10.0, step_id="act"), step(1, 10.0, 110.0, kind="tool", step_id="run_tool")]
    summary = summarize(tmp_path, steps, [workflow(steps, 0.0, 110.0)])
    console = Console(record=True, width=200)
    print_run_table(summary, console)
    tool_row = next(line for line in console.export_text().splitlines() if "run_tool" in line)
    cells = tool_row.replace("│", " ").split()  # a Rich table on a terminal, plain columns elsewhere
    assert cells[1:4] == ["100.0"] * 3  # its duration
    assert cells[4:] == ["-"] * 5  # TTFT p50/p95/p99, request tok/s, cache hit


def test_cache_hits_and_ttft_by_turn_depth_and_prompt_length(tmp_path: Path) -> None:
    steps = [
        step(0, 0.0, 10.0, depth=1, prompt_tokens=100, cached_prompt_tokens=0, ttft_ms=30.0),
        step(1, 10.0, 20.0, depth=2, prompt_tokens=200, cached_prompt_tokens=150, ttft_ms=10.0),
        step(2, 10.0, 20.0, depth=2, prompt_tokens=300, cached_prompt_tokens=300, ttft_ms=20.0),
        step(3, 20.0, 30.0, kind="tool"),
    ]
    summary = summarize(tmp_path, steps, [workflow(steps, 0.0, 30.0)])
    assert [(t.depth, t.steps) for t in summary.turns] == [(1, 1), (2, 2)]
    deeper = summary.turns[1]
    assert deeper.cached_prompt_ratio == pytest.approx(450 / 500)  # over tokens, not a mean of ratios
    assert deeper.prompt_tokens_mean == pytest.approx(250.0)
    assert (deeper.ttft_ms.p50, deeper.ttft_ms.p95) == pytest.approx((15.0, 19.5))
    assert summary.turns[0].cached_prompt_ratio == 0.0
    buckets = [(b.prompt_tokens_from, b.prompt_tokens_below, b.steps) for b in summary.by_prompt_length]
    assert buckets == [(0, 256, 2), (256, 512, 1)]
    assert summary.by_prompt_length[0].cached_prompt_ratio == pytest.approx(150 / 300)
    assert [row[0] for row in turn_rows(summary)] == ["1", "2"]
    assert turn_rows(summary)[1][3] == "90.0%"


@pytest.mark.parametrize(
    ("tokens", "bucket"),
    [(0, (0, 256)), (255, (0, 256)), (256, (256, 512)), (511, (256, 512)), (4096, (4096, 8192))],
)
def test_prompt_buckets_are_powers_of_two(tokens: int, bucket: tuple[int, int]) -> None:
    assert prompt_bucket(tokens) == bucket


def test_where_the_time_went_adds_up_to_the_makespan(tmp_path: Path) -> None:
    first = [step(0, 0.0, 40.0), step(1, 41.0, 101.0, kind="tool", needs=[0])]
    second = [s.model_copy(update={"flow_index": 1, "flow_id": "f-1"}) for s in first]
    split = {"critical_path_ms": 100.0, "llm_ms": 40.0, "tool_ms": 60.0, "engine_queue_ms": 2.0}
    workflows = [
        workflow(first, 0.0, 103.0, **split),  # gap 3
        workflow(second, 5.0, 112.0, arrival_offset_ms=1.0, **split | {"engine_queue_ms": 4.0}),  # gap 7
    ]
    breakdown = summarize(tmp_path, first + second, workflows).workflow_breakdown
    assert breakdown is not None and breakdown.workflows == 2
    assert breakdown.makespan_ms.mean == pytest.approx(105.0)
    assert breakdown.scheduling_gap_ms.mean == pytest.approx(5.0)
    assert breakdown.llm_ms.mean + breakdown.tool_ms.mean + breakdown.scheduling_gap_ms.mean == pytest.approx(
        breakdown.makespan_ms.mean
    )
    assert breakdown.engine_queue_ms.mean == pytest.approx(3.0)
    assert breakdown.slot_wait_ms is not None and breakdown.slot_wait_ms.count == 1
    assert breakdown.slot_wait_ms.mean == pytest.approx(4.0)


def test_the_time_split_reads_as_a_sum(tmp_path: Path) -> None:
    steps = [step(0, 0.0, 40.0), step(1, 41.0, 101.0, kind="tool", needs=[0])]
    split = {"critical_path_ms": 100.0, "llm_ms": 40.0, "tool_ms": 60.0, "engine_queue_ms": 2.0}
    summary = summarize(tmp_path, steps, [workflow(steps, 0.0, 103.0, **split)])
    text = time_split_text(summary)
    assert text is not None
    assert "makespan 103.0 ms = LLM 40.0 ms (of which engine queue 2.00 ms) + tools/think 60.0 ms" in text
    assert "scheduling 3.00 ms" in text and "slot wait - (closed loop)" in text


def test_a_version_1_directory_has_no_turns_or_breakdown_and_keeps_its_figures() -> None:
    summary = report_summary(load_run(RUN_V1))
    saved = json.loads((RUN_V1 / "summary.json").read_text())
    assert summary.turns == [] and summary.workflow_breakdown is None and time_split_text(summary) is None
    assert summary.latency.step_ms.count == saved["latency"]["step_ms"]["count"] == 12
    assert summary.throughput.steps_per_s == pytest.approx(saved["throughput"]["steps_per_s"])
    assert {block.kind for block in summary.latency_by_step.values()} == {"llm"}
    assert summary.load.request_concurrency.max is not None  # start + step_ms stands in for the end


def test_concurrent_branches_get_lanes_side_by_side_and_the_critical_path_is_marked() -> None:
    records = [
        step(0, 100.0, 110.0, step_id="classify"),
        step(1, 110.0, 130.0, step_id="billing", needs=[0]),
        step(2, 110.0, 140.0, step_id="technical", needs=[0]),
        step(3, 140.0, 150.0, step_id="merge", needs=[1, 2]),
    ]
    bars = {bar.name: bar for bar in timeline_bars(records)}
    assert {name: bar.lane for name, bar in bars.items()} == {
        "classify": 0, "billing": 0, "technical": 1, "merge": 0,
    }  # fmt: skip
    assert {name for name, bar in bars.items() if bar.critical} == {"classify", "technical", "merge"}
    assert (bars["merge"].start_ms, bars["merge"].end_ms) == (40.0, 50.0)  # from the workflow's start


@pytest.mark.engine
def test_a_real_agentic_run_reports_turns_time_split_and_workflow_graphs(
    engine, engine_loop, tmp_path
) -> None:
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "flow": "router_specialists",
            "num_flows": 2,
            "concurrency": 2,
            "warmup": 0,
            "max_tokens": 4,
            "output": {"out_dir": str(tmp_path / "runs"), "run_id": "agentic"},
        }
    )
    hooks = RunHooks(echo=lambda _: None)
    run_dir = engine_loop.run(run_benchmark(config, hooks, engine=FaultyEngine(engine))).run_dir  # no faults
    saved = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    assert [turn.depth for turn in saved.turns] == [1, 2, 3]  # classify, the specialists, merge
    assert saved.turns[1].steps == 4 and saved.workflow_breakdown is not None
    assert (saved.load.request_concurrency.max or 0) >= 2  # the two specialists of a workflow run at once
    run = load_run(run_dir)
    summary = report_summary(run)
    console = Console(record=True, width=200)
    print_report(run, summary, console)
    terminal = console.export_text()
    assert "LLM steps by turn depth" in terminal and "where the time went" in terminal
    assert "LLM requests in flight" in terminal
    assert [row["depth"] for row in json_report(run, summary)["tables"]["by_turn_depth"]] == ["1", "2", "3"]
    page = html_report(run, summary)
    for title in ("Workflow graphs", "TTFT and prefix-cache hits by turn depth", "TTFT by prompt length"):
        assert re.search(rf'<img alt="{title}[^"]*" src="data:image/png;base64,', page), title
