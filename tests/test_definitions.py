"""One definition of each number: the summary, `bench compare` and `bench ab` read ITL, TPOT and
output tokens/s the same way off the same run directory. Two single-step workflows with figures worked
by hand, chosen where the alternatives differ (a per-request mean of gaps would make ITL 6, not 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowperf.modes.ab.run import block_figures
from flowperf.outputs.compare import compare_runs
from flowperf.rundir.records import StepRecord, WorkflowRecord
from flowperf.rundir.rundata import load_run
from flowperf.rundir.store import RunStore
from flowperf.rundir.summary import SummaryContext, build_summary
from flowperf.rundir.summary_schema import RunInfo
from flowperf.stats import tpot_ms

# (ttft, gaps, output tokens, step time, TPOT worked by hand)
STEPS = [(10.0, [5.0, 5.0, 20.0], 4, 40.0, 10.0), (10.0, [2.0], 2, 12.0, 2.0)]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    store = RunStore.create(tmp_path, "run")
    store.write_json("config.json", {"schema_version": 3})
    for flow, (ttft, gaps, tokens, step_ms, tpot) in enumerate(STEPS):
        start = flow * 100.0
        step = StepRecord(flow_index=flow, flow_id=f"f{flow}", session=0, step_index=0, step_id="s",
                          max_tokens=tokens, inflight_at_start=1, start_offset_ms=start, status="ok",
                          step_ms=step_ms, ttft_ms=ttft, tpot_ms=tpot, itl_ms=gaps,
                          output_tokens=tokens)  # fmt: skip
        row = WorkflowRecord(flow_index=flow, flow_id=f"f{flow}", session=0, status="ok", workflow_ms=step_ms,
                             step_ms_sum=step_ms, steps=1, steps_ok=1, prompt_tokens=8, output_tokens=tokens,
                             cached_prompt_tokens=0, start_offset_ms=start,
                             end_offset_ms=start + step_ms)  # fmt: skip
        store.append_step(step)
        store.append_workflow(row)
    store.close()
    return store.run_dir


def test_tpot_is_counted_in_tokens_after_the_first() -> None:
    for ttft, _, tokens, step_ms, tpot in STEPS:
        assert tpot_ms(step_ms, ttft, tokens) == pytest.approx(tpot)
    assert tpot_ms(12.0, 10.0, 1) is None and tpot_ms(12.0, None, 5) is None


def test_summary_compare_and_ab_agree_on_itl_tpot_and_tokens_per_s(run_dir: Path) -> None:
    context = SummaryContext(planned_workflows=2, run=RunInfo(run_id="run", flow="synthetic"))
    latency = build_summary(RunStore(run_dir), "complete", context).latency
    assert latency.itl_ms.count == 4 and latency.itl_ms.p50 == 5.0  # gaps 2, 5, 5, 20
    assert latency.tpot_ms.p50 == 6.0  # TPOTs 10 and 2
    run = load_run(run_dir)
    results = {r.metric: r for r in compare_runs(run, run, alpha=0.05, threshold_pct=5.0, gate=(), seed=0)}
    itl = next(result for name, result in results.items() if name.startswith("itl_ms"))
    assert itl.base == latency.itl_ms.p50 and itl.n_base == 2
    tokens = next(result for name, result in results.items() if name.startswith("tokens_per_s"))
    assert tokens.base == pytest.approx((4 / 0.040 + 2 / 0.012) / 2)  # each request's own rate, median
    assert block_figures(run_dir, 0)[2]["tpot_p50_ms"] == latency.tpot_ms.p50
