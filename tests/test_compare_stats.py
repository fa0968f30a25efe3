"""The comparison statistics on synthetic samples and runs with a known difference (no engine)."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from flowperf.config import RunConfig
from flowperf.errors import UserError
from flowperf.outputs.compare import (
    Comparison,
    Samples,
    block_bootstrap_medians,
    bootstrap_differences,
    bootstrap_median_difference,
    bootstrap_p_value,
    comparability_problems,
    compare_runs,
    judge,
    metric_extractors,
    parse_gate,
    print_comparison,
    setting_differences,
    smallest_detectable_p,
)
from flowperf.rundir.rundata import RunData
from flowperf.stats import holm_adjusted, holm_verdicts, percent_change


def latencies(seed: int, n: int, scale: float = 100.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(scale), 0.2, n)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(30, 200), slowdown=st.floats(0.4, 1.0))
def test_a_clear_slowdown_is_a_regression_and_a_speedup_an_improvement(
    seed: int, n: int, slowdown: float
) -> None:
    base = latencies(seed, n)
    slower = base * (1 + slowdown)
    common = {"alpha": 0.05, "threshold_pct": 5.0, "seed": 1, "gated": True}
    assert judge("workflow_ms", base, slower, higher_is_better=False, **common).verdict == "regression"
    assert judge("workflow_ms", slower, base, higher_is_better=False, **common).verdict == "improvement"
    assert judge("tokens_per_s", base, slower, higher_is_better=True, **common).verdict == "improvement"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 200))
def test_identical_samples_never_change(seed: int, n: int) -> None:
    base = latencies(seed, n)
    result = judge(
        "step_ms",
        base,
        base.copy(),
        higher_is_better=False,
        alpha=0.05,
        threshold_pct=5.0,
        seed=2,
        gated=True,
    )
    assert result.verdict == "no significant change" and result.delta_pct == 0.0
    assert result.ci_low <= 0 <= result.ci_high


def test_a_small_real_change_below_the_threshold_does_not_count() -> None:
    base = latencies(1, 2000)
    result = judge(
        "step_ms",
        base,
        base * 1.02,
        higher_is_better=False,
        alpha=0.05,
        threshold_pct=5.0,
        seed=0,
        gated=True,
    )
    assert result.ci_low > 0  # significant...
    assert result.verdict == "no significant change"  # ...but smaller than the threshold


def test_interval_covers_the_true_difference_about_as_often_as_promised() -> None:
    covered = 0
    trials = 150
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        base, new = rng.normal(100.0, 10.0, 60), rng.normal(104.0, 10.0, 60)
        low, high = bootstrap_median_difference(base, new, alpha=0.05, seed=trial, resamples=1000)
        covered += low <= 4.0 <= high
    assert 0.88 <= covered / trials <= 0.995


def test_too_few_samples_cannot_be_significant() -> None:
    assert smallest_detectable_p(3, 3) == pytest.approx(0.1)
    result = judge("ttft_ms", np.array([10.0, 11, 12]), np.array([50.0, 51, 52]), higher_is_better=False,
                   alpha=0.05, threshold_pct=5.0, seed=0, gated=True)  # fmt: skip
    assert result.verdict == "no significant change" and "too few samples" in result.note


def test_single_values_use_the_threshold_alone() -> None:
    result = judge("peak_rss_mb", np.array([100.0]), np.array([120.0]), higher_is_better=False, alpha=0.05,
                   threshold_pct=5.0, seed=0, gated=False)  # fmt: skip
    assert result.verdict == "regression" and "no significance test" in result.note and not result.regressed


def test_two_zero_medians_are_no_change() -> None:
    """A metric that is zero in both runs (no slot wait in either) did not regress infinitely."""
    zeros = np.zeros(40)
    for gated in (True, False):
        result = judge("start_delay_ms (slot wait)", zeros, zeros, higher_is_better=False, alpha=0.05,
                       threshold_pct=5.0, seed=0, gated=gated)  # fmt: skip
        assert result.delta_pct == 0.0 and result.verdict == "no significant change" and not result.regressed
    assert percent_change(0.0, 2.0) == math.inf and percent_change(4.0, 5.0) == pytest.approx(25.0)


def test_gate_names_are_checked() -> None:
    assert parse_gate("workflow_ms, ttft_ms") == ("workflow_ms", "ttft_ms")
    with pytest.raises(UserError, match="--gate latency: unknown metric"):
        parse_gate("latency")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8))
def test_a_block_resample_is_the_median_of_the_workflows_drawn(seed: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    blocks = np.repeat(rng.permutation(1000)[: len(sizes)], sizes)
    samples = Samples(rng.integers(0, 6, len(blocks)).astype(float), blocks)
    medians = block_bootstrap_medians(samples, np.random.default_rng(seed), 40)
    # replay the same draws by hand: whole workflows, with replacement, pooled
    replay = np.random.default_rng(seed)
    order = np.argsort(samples.values, kind="stable")
    labels = np.unique(blocks)
    picks = replay.integers(0, len(labels), (40, len(labels)))
    by_label = {label: samples.values[order][blocks[order] == label] for label in labels}
    expected = [np.median(np.concatenate([by_label[labels[p]] for p in row])) for row in picks]
    assert medians == pytest.approx(expected)


def correlated_run(rng: np.random.Generator, workflows: int, steps: int = 3) -> Samples:
    """Steps of a workflow share its level (its prompts, its moment on the machine): most of the
    variance is between workflows."""
    levels = rng.lognormal(np.log(100.0), 0.5, workflows)
    values = np.repeat(levels, steps) * rng.lognormal(0.0, 0.05, workflows * steps)
    return Samples(values, np.repeat(np.arange(workflows), steps))


def test_resampling_workflows_keeps_false_alarms_at_alpha_where_resampling_steps_does_not() -> None:
    """Two runs of one workload: steps as if independent make the interval about sqrt(3) too narrow."""
    trials, alpha = 200, 0.05
    block_alarms = step_alarms = 0
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        base, new = correlated_run(rng, 30), correlated_run(rng, 30)
        block = bootstrap_differences(base, new, seed=trial, resamples=400)
        steps = bootstrap_differences(base.values, new.values, seed=trial, resamples=400)
        block_alarms += bootstrap_p_value(block) <= alpha
        step_alarms += bootstrap_p_value(steps) <= alpha
    assert block_alarms / trials <= 0.09
    assert step_alarms / trials >= 0.15


def test_the_p_value_agrees_with_the_interval() -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        base, new = rng.normal(100, 10, 40), rng.normal(100 + seed % 8, 10, 40)
        differences = bootstrap_differences(base, new, seed=seed, resamples=4000)
        low, high = np.quantile(differences, [0.025, 0.975])
        p_value = bootstrap_p_value(differences)
        if abs(p_value - 0.05) > 0.005:  # away from the boundary, where the +1 may tip it
            assert (p_value < 0.05) == (low > 0 or high < 0)


def test_holm_adjusts_step_down() -> None:
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjusted([0.2]) == [0.2]
    assert holm_adjusted([0.5, 0.5, 0.5]) == [1.0, 1.0, 1.0]


def gated(p_value: float, change: str = "regression") -> Comparison:
    return Comparison("m", 50, 50, 1.0, 2.0, 100.0, 0.1, 0.2, change, True,
                      p_value=p_value, change=change, testable=True)  # fmt: skip


def test_several_gated_metrics_are_corrected_together() -> None:
    """Three gated metrics at p = 0.03 each: alone each is a regression at alpha 0.05; as a family of
    three, none is (Holm: 0.09). One at 0.001 still is."""
    alone = holm_verdicts([gated(0.03)], 0.05)
    assert alone[0].regressed and alone[0].p_holm == pytest.approx(0.03)
    family = holm_verdicts([gated(0.03), gated(0.03), gated(0.03)], 0.05)
    assert not any(result.regressed for result in family)
    assert [result.verdict for result in family] == ["no significant change"] * 3
    strong = holm_verdicts([gated(0.001), gated(0.03), gated(0.5)], 0.05)
    assert [result.regressed for result in strong] == [True, False, False]
    ungated = dataclasses.replace(gated(0.03), gated=False)
    assert holm_verdicts([ungated, gated(0.03), gated(0.03)], 0.05)[0].p_holm is None


def synthetic_run(
    tmp_path: Path, name: str, *, waits_ms: float | None = None, slow: float = 1.0, **settings: object
) -> RunData:
    """A run directory's tables without an engine: 40 workflows of three steps, correlated within."""
    rng = np.random.default_rng(len(name))
    flows = np.arange(40)
    makespans = rng.lognormal(np.log(300.0), 0.1, 40)
    arrivals = flows * 100.0 if waits_ms is not None else np.full(40, np.nan)
    starts = arrivals + (waits_ms or 0.0) if waits_ms is not None else np.cumsum(makespans) - makespans
    workflows = pd.DataFrame({
        "flow_index": flows, "session": 0, "status": "ok", "workflow_ms": makespans,
        "arrival_offset_ms": arrivals, "start_offset_ms": starts, "end_offset_ms": starts + makespans,
    })  # fmt: skip
    steps = pd.DataFrame({
        "flow_index": np.repeat(flows, 3), "step_index": np.tile([0, 1, 2], 40),
        "step_id": np.tile(["a", "b", "c"], 40), "status": "ok",
        "step_ms": np.repeat(makespans / 3, 3) * slow, "ttft_ms": 10.0, "output_tokens": 16.0,
        "itl_ms": [np.full(15, 5.0)] * 120,
    })  # fmt: skip
    config = {"config": RunConfig.model_validate(settings).model_dump(mode="json"), "flow": {}, "model": {}}
    return RunData(tmp_path / name, config, None, workflows, steps, [])


def test_open_loop_runs_compare_latency_from_arrival_and_the_slot_wait(tmp_path: Path) -> None:
    """Same makespans, but the new run's workflows wait 200 ms for a slot: only the from-arrival
    latency and the wait regress, and either can be gated."""
    base = synthetic_run(tmp_path, "base", waits_ms=0.0, rate=10.0)
    new = synthetic_run(tmp_path, "base", waits_ms=200.0, rate=10.0)
    gate = parse_gate("workflow_latency_ms,start_delay_ms")
    compared = compare_runs(base, new, alpha=0.05, threshold_pct=5.0, gate=gate, seed=0)
    results = {result.metric: result for result in compared}
    assert results["workflow_ms"].verdict == "no significant change"
    assert results["workflow_latency_ms (from arrival)"].regressed
    assert results["start_delay_ms (slot wait)"].verdict == "regression"
    assert results["workflow_latency_ms (from arrival)"].p_holm is not None
    closed = synthetic_run(tmp_path, "closed")
    names = [r.metric for r in compare_runs(closed, closed, alpha=0.05, threshold_pct=5.0,
                                            gate=parse_gate(None), seed=0)]  # fmt: skip
    assert not any(name.startswith(("workflow_latency", "start_delay")) for name in names)


def test_step_metrics_are_resampled_by_workflow(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, "run")
    (_, _, samples, _) = next(m for m in metric_extractors(run, run) if m[0] == "step_ms[a]")
    assert samples(run).units == 40
    (_, _, ttft, _) = next(m for m in metric_extractors(run, run) if m[0] == "ttft_ms")
    assert len(ttft(run).values) == 120 and ttft(run).units == 40
    result = judge("ttft_ms", ttft(run), ttft(run), higher_is_better=False, alpha=0.05, threshold_pct=5.0,
                   seed=0, gated=True)  # fmt: skip
    assert (result.n_base, result.n_new) == (40, 40)


def test_runs_with_different_settings_are_listed_field_by_field(tmp_path: Path) -> None:
    base = synthetic_run(tmp_path, "a", concurrency=2, max_tokens=16)
    new = synthetic_run(tmp_path, "b", concurrency=4, max_tokens=16, rate=5.0, engine={"max_num_seqs": 8},
                        output={"run_id": "other"}, monitor={"sample_interval_s": 1.0})  # fmt: skip
    assert setting_differences(base, new) == [
        "concurrency (2 -> 4)",
        "engine.max_num_seqs (None -> 8)",
        "rate (None -> 5.0)",
    ]
    problems = comparability_problems(base, new)
    assert problems == ["different settings: concurrency (2 -> 4), engine.max_num_seqs (None -> 8), "
                        "rate (None -> 5.0)"]  # fmt: skip
    same = synthetic_run(tmp_path, "c", concurrency=2, max_tokens=16, output={"run_id": "x"}, grace_s=1.0)
    assert comparability_problems(base, same) == []
    older = dataclasses.replace(same, config={"config": {"concurrency": 2, "max_tokens": 16}})
    assert setting_differences(base, older) == []  # a field the older run did not record is its default


def test_off_a_terminal_the_table_is_plain_and_no_cell_is_cut() -> None:
    header = ["metric", "n", "verdict", "note"]
    rows = [["step_ms[a_step_with_a_very_long_name_indeed]", "40/40", "regression", "x" * 150]]
    stream = io.StringIO()
    print_comparison(Console(file=stream, width=80), "title", header, rows)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "title" and "…" not in stream.getvalue()
    assert lines[2].split() == rows[0] and len(lines[2]) > 200
    assert lines[1].index("n") + 1 == lines[2].index("40/40") + len("40/40")  # numbers right-aligned
