"""SLO parsing and evaluation, with answers worked out by hand."""

from __future__ import annotations

import pytest

from flowperf.errors import UserError
from flowperf.rundir.slo import Objective, WorkflowSamples, evaluate, meets, parse_slos, share_within
from flowperf.stats import describe


def test_names_parse_into_metric_percentile_and_limit() -> None:
    objectives = parse_slos("workflow_p95_ms=8000, ttft_p99_ms=500,itl_p99.9_ms=50,step_max_ms=2")
    assert objectives == (
        Objective("workflow_p95_ms", "workflow", 95.0, 8000.0),
        Objective("ttft_p99_ms", "ttft", 99.0, 500.0),
        Objective("itl_p99.9_ms", "itl", 99.9, 50.0),
        Objective("step_max_ms", "step", 100.0, 2.0),
    )
    assert objectives[0].per_workflow and not objectives[1].per_workflow


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_p99=500", "unknown objective 'ttft_p99'"),
        ("latency_p95_ms=1", "unknown objective 'latency_p95_ms'"),
        ("ttft_p0_ms=5", "ttft_p0_ms: the percentile must be above 0"),
        ("ttft_p101_ms=5", "the percentile must be above 0 and at most 100"),
        ("ttft_p99_ms=-1", "ttft_p99_ms: give a limit in ms above 0"),
        ("ttft_p99_ms=fast", "give a limit in ms above 0"),
        ("ttft_p99_ms", "give a limit in ms above 0"),
        ("ttft_p99_ms=5,ttft_p99_ms=6", "ttft_p99_ms given more than once"),
        (",", "give at least one objective"),
    ],
)
def test_bad_objectives_are_named(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        parse_slos(text)
    assert str(caught.value).startswith("--slo: ") and "\n" not in str(caught.value)


def test_share_within_counts_samples_at_or_below_the_limit() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert share_within(values, 3.0) == 0.6
    assert share_within(values, 0.5) == 0.0 and share_within(values, 5.0) == 1.0
    assert share_within([], 1.0) == 1.0
    ttft_p99 = Objective("ttft_p99_ms", "ttft", 99.0, 8.0)
    assert not meets(ttft_p99, WorkflowSamples(True, {"ttft": [2.0, 9.0, 7.0]}))  # 99% of 3: all 3


def test_a_levels_value_is_the_summarys_percentile_on_the_same_data() -> None:
    """A sweep row's `ttft_p95_ms` is the run summary's p95 (stats.describe); the SLO's level value for
    ttft_p95_ms on the same samples must be the same number. On 10, 20, 30, 40 nearest rank gives 40,
    linear interpolation 30 + 0.85 * 10 = 38.5 (worked by hand): a limit of 39 is met, not missed."""
    ttft = [40.0, 10.0, 30.0, 20.0]
    workflows = [WorkflowSamples(True, {"ttft": ttft[:2]}), WorkflowSamples(True, {"ttft": ttft[2:]})]
    (result,) = evaluate(parse_slos("ttft_p95_ms=39"), workflows, window_s=1.0).objectives
    assert describe(ttft)["p95"] == pytest.approx(38.5)
    assert result.level_value_ms == pytest.approx(describe(ttft)["p95"])
    assert result.level_met is True


def test_a_workflow_meets_an_objective_when_enough_of_its_own_samples_do() -> None:
    ttft = Objective("ttft_p50_ms", "ttft", 50.0, 100.0)
    assert meets(ttft, WorkflowSamples(True, {"ttft": [90.0, 200.0]}))  # 1 of 2 within: 50%
    assert not meets(ttft, WorkflowSamples(True, {"ttft": [150.0, 200.0, 90.0]}))  # 1 of 3 < 50%
    itl = Objective("itl_p99_ms", "itl", 99.0, 50.0)
    gaps = [10.0] * 198 + [80.0, 90.0]  # 2 of 200 above: 99% within
    assert meets(itl, WorkflowSamples(True, {"itl": gaps}))
    assert not meets(itl, WorkflowSamples(True, {"itl": [*gaps[1:], 95.0]}))  # 3 of 200 above
    assert meets(itl, WorkflowSamples(True, {"ttft": [1.0]}))  # no gaps: nothing to miss
    assert not meets(itl, WorkflowSamples(False, {}))  # a failed workflow meets nothing


def test_attainment_goodput_and_the_objective_missed_most() -> None:
    objectives = parse_slos("workflow_p95_ms=1000,ttft_max_ms=100")
    workflows = [
        WorkflowSamples(True, {"workflow": [900.0], "ttft": [50.0, 60.0]}),  # good
        WorkflowSamples(True, {"workflow": [800.0], "ttft": [50.0, 60.0]}),  # good
        WorkflowSamples(True, {"workflow": [1200.0], "ttft": [50.0, 60.0]}),  # misses workflow
        WorkflowSamples(True, {"workflow": [1100.0], "ttft": [150.0, 60.0]}),  # misses both
        WorkflowSamples(False, {}),  # failed: misses both
    ]
    result = evaluate(objectives, workflows, window_s=4.0, unfinished=1)
    assert result.workflows == 6 and result.good == 2
    assert result.attainment == pytest.approx(2 / 6)
    assert result.goodput_per_s == pytest.approx(0.5)
    missed = {item.name: item.missed for item in result.objectives}
    assert missed == {"workflow_p95_ms": 4, "ttft_max_ms": 3}  # the unfinished one misses both
    assert result.failing_objective == "workflow_p95_ms"
    level = {item.name: (item.level_value_ms, item.level_met) for item in result.objectives}
    assert level["workflow_p95_ms"] == (pytest.approx(1185.0), False)  # 1100 + 0.85 * (1200 - 1100)
    assert level["ttft_max_ms"] == (150.0, False)


def test_nothing_missed_means_no_failing_objective_and_full_attainment() -> None:
    objectives = parse_slos("ttft_p99_ms=60")
    result = evaluate(objectives, [WorkflowSamples(True, {"ttft": [50.0, 55.0]})] * 3, window_s=2.0)
    assert result.attainment == 1.0 and result.goodput_per_s == 1.5 and result.failing_objective is None
    assert evaluate(objectives, [], window_s=0.0).attainment is None
