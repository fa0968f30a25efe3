"""connect_wait_ms, the wait for a client connection before a request is sent, summarised and reported:
figures worked by hand from the records written."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from flowperf.outputs.report import connect_wait_warning, print_report
from flowperf.rundir.records import StepRecord, WorkflowRecord
from flowperf.rundir.rundata import load_run
from flowperf.rundir.store import RunStore
from flowperf.rundir.summary import SummaryContext, build_summary
from flowperf.rundir.summary_schema import RunInfo, RunSummary


def write_run(tmp_path: Path, waits: list[float | None]) -> RunSummary:
    """One single-step workflow per wait, each step's TTFT 20 ms."""
    store = RunStore.create(tmp_path, "run")
    store.write_json("config.json", {"schema_version": 3})
    for flow, wait in enumerate(waits):
        step = StepRecord(flow_index=flow, flow_id=f"f{flow}", session=0, step_index=0, step_id="s",
                          max_tokens=4, inflight_at_start=1, start_offset_ms=flow * 100.0, status="ok",
                          step_ms=50.0, ttft_ms=20.0, output_tokens=4, connect_wait_ms=wait)  # fmt: skip
        store.append_step(step)
        start = flow * 100.0
        row = WorkflowRecord(flow_index=flow, flow_id=f"f{flow}", session=0, status="ok", workflow_ms=50.0,
                             step_ms_sum=50.0, steps=1, steps_ok=1, prompt_tokens=8, output_tokens=4,
                             cached_prompt_tokens=0, start_offset_ms=start,
                             end_offset_ms=start + 50)  # fmt: skip
        store.append_workflow(row)
    store.close()
    context = SummaryContext(planned_workflows=len(waits), run=RunInfo(run_id="run", flow="synthetic"))
    return build_summary(store, "complete", context)


def test_connect_waits_are_summarised_with_linear_percentiles(tmp_path: Path) -> None:
    wait = write_run(tmp_path, [0.0, 30.0, 0.0, 10.0]).latency.connect_wait_ms
    assert wait.count == 4 and wait.max == 30.0
    assert wait.p50 == pytest.approx(5.0)  # sorted 0, 0, 10, 30: halfway between 0 and 10
    assert wait.p95 == pytest.approx(27.0)  # 10 + 0.85 * 20
    assert wait.p99 == pytest.approx(29.4)  # 10 + 0.97 * 20


def test_a_material_wait_is_a_warning_line_in_the_report(tmp_path: Path) -> None:
    summary = write_run(tmp_path, [0.0, 30.0, 0.0, 10.0])
    text = connect_wait_warning(summary)
    assert text is not None and "5.0/27.0/29.4/30.0 ms" in text
    console = Console(file=io.StringIO(), width=200)
    print_report(load_run(tmp_path / "run"), summary, console)
    assert "waited for a client connection" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize("waits", [[0.0, 0.5, 0.0, 0.2], [None, None]])
def test_no_warning_when_the_wait_is_small_or_not_measured(tmp_path: Path, waits: list[float | None]) -> None:
    summary = write_run(tmp_path, waits)
    assert connect_wait_warning(summary) is None
    assert summary.latency.connect_wait_ms.count == sum(wait is not None for wait in waits)
