"""Which level a sweep runs next: listed, automatic and searched levels, from finished rows alone."""

from __future__ import annotations

from flowperf.modes.sweep.levels import (
    LevelRow,
    LevelSpec,
    SweepSpec,
    auto_rates,
    knee,
    max_sustainable,
    next_level,
    saturation_reason,
)


def row(index: int, spec: LevelSpec, *, achieved: float = 1.0, passes: bool = True, p50: float = 100.0,
        stopped: str | None = None) -> LevelRow:  # fmt: skip
    return LevelRow(index=index, name=spec.name(index), role=spec.role, mode=spec.mode,
                    concurrency=spec.concurrency, rate=spec.rate, status="complete", achieved_per_s=achieved,
                    latency_p50_ms=p50, attainment=1.0 if passes else 0.5, meets_target=passes,
                    stopped_early=stopped)  # fmt: skip


def run_all(spec: SweepSpec, passes_below: float, achieved: dict[str, float] | None = None) -> list[LevelRow]:
    """Run the sweep to its end against a deployment that meets the target below `passes_below`."""
    rows: list[LevelRow] = []
    while (level := next_level(spec, rows)) is not None:
        load = level.rate if level.rate is not None else float(level.concurrency or 0)
        rate = (achieved or {}).get(level.role, load)
        rows.append(row(len(rows), level, achieved=rate, passes=load < passes_below))
        assert len(rows) < 40
    return rows


def test_listed_levels_run_in_order_then_stop() -> None:
    spec = SweepSpec(levels="rates", rates=[0.5, 1, 2])
    rows = run_all(spec, passes_below=100)
    assert [(r.mode, r.rate, r.name) for r in rows] == [
        ("open_loop", 0.5, "level-00-r0.5"),
        ("open_loop", 1.0, "level-01-r1"),
        ("open_loop", 2.0, "level-02-r2"),
    ]
    concurrency = run_all(SweepSpec(levels="concurrency", concurrency=[1, 4]), passes_below=100)
    assert [(r.mode, r.concurrency) for r in concurrency] == [("closed_loop", 1), ("closed_loop", 4)]


def test_auto_spaces_rates_strictly_between_synchronous_and_saturation() -> None:
    spec = SweepSpec(levels="auto", auto=3, saturation_concurrency=16)
    sync, saturation = LevelSpec("sync", concurrency=1), LevelSpec("saturation", concurrency=16)
    assert next_level(spec, []) == sync
    first = [row(0, sync, achieved=1.0)]
    assert next_level(spec, first) == saturation
    both = [*first, row(1, saturation, achieved=5.0)]
    assert auto_rates(spec, both) == [2.0, 3.0, 4.0]
    assert next_level(spec, both) == LevelSpec("auto_rate", rate=2.0)
    assert auto_rates(spec, [first[0], row(1, saturation, achieved=0.9)]) == []  # no faster: nothing between


def test_find_max_bisects_rate_to_the_tolerance() -> None:
    """Passing below 3.3/s, levels 1 and 8: the bracket [1, 8] halves until (hi - lo) <= 0.1 * hi."""
    spec = SweepSpec(levels="rates", rates=[1, 8], slo="ttft_p99_ms=1", find_max=True, tolerance=0.1)
    rows = run_all(spec, passes_below=3.3)
    searched = [r.rate for r in rows if r.role == "search"]
    assert searched == [4.5, 2.75, 3.625, 3.188, 3.407]  # midpoints, 4 significant digits
    found = max_sustainable(spec, rows)
    assert found is not None
    assert found["bracket"] == [3.188, 3.407] and found["load"] == 3.188 and found["resolved"]


def test_find_max_on_concurrency_stops_at_adjacent_whole_numbers() -> None:
    spec = SweepSpec(levels="concurrency", concurrency=[1, 16], slo="workflow_p95_ms=1", find_max=True)
    rows = run_all(spec, passes_below=6)
    assert [r.concurrency for r in rows if r.role == "search"] == [8, 4, 6, 5]
    found = max_sustainable(spec, rows)
    assert found is not None and found["bracket"] == [5.0, 6.0] and found["resolved"]


def test_find_max_doubles_while_everything_passes_and_reuses_levels_on_resume() -> None:
    spec = SweepSpec(levels="rates", rates=[1], slo="ttft_p99_ms=1", find_max=True, max_search_levels=3)
    rows = run_all(spec, passes_below=100)
    assert [r.rate for r in rows] == [1, 2, 4, 8]  # capped by --max-search-levels
    found = max_sustainable(spec, rows)
    assert found is not None and found["load"] == 8 and not found["resolved"]
    assert next_level(spec, rows[:2]) == LevelSpec("search", rate=4.0)  # a resumed sweep asks the same


def test_auto_find_max_is_capped_by_saturation_and_skipped_when_sync_fails() -> None:
    spec = SweepSpec(levels="auto", auto=1, slo="ttft_p99_ms=1", find_max=True, tolerance=0.2)
    rows = run_all(spec, passes_below=2.5, achieved={"sync": 1.0, "saturation": 4.0})
    assert [r.rate for r in rows if r.role == "auto_rate"] == [2.5]
    assert [r.rate for r in rows if r.role == "search"] == [1.25, 1.875, 2.188]
    found = max_sustainable(spec, rows)
    assert found is not None and found["bracket"] == [2.188, 2.5]
    failing_sync = [row(0, LevelSpec("sync", concurrency=1), passes=False),
                    row(1, LevelSpec("saturation", concurrency=32), achieved=5.0, passes=False)]  # fmt: skip
    assert next_level(SweepSpec(levels="auto", slo="ttft_p99_ms=1", find_max=True), failing_sync) is None


def test_a_saturated_level_never_passes() -> None:
    spec = SweepSpec(levels="rates", rates=[1, 2], slo="ttft_p99_ms=1")
    rows = [
        row(0, LevelSpec("listed", rate=1.0)),
        row(1, LevelSpec("listed", rate=2.0), stopped="saturated: x"),
    ]
    found = max_sustainable(spec, rows)
    assert found is not None and found["bracket"] == [1.0, 2.0]


def test_knee_is_the_highest_power() -> None:
    levels = [LevelSpec("listed", concurrency=c) for c in (1, 2, 4, 8)]
    figures = zip(levels, (1.0, 1.9, 3.0, 3.2), (100.0, 105.0, 140.0, 250.0), strict=True)
    rows = [row(i, level, achieved=a, p50=p) for i, (level, a, p) in enumerate(figures)]
    assert knee(rows) == 2  # 3.0/140 beats 1.9/105 and 3.2/250


def test_saturation_needs_a_low_achieved_rate_and_a_growing_queue() -> None:
    growing = [2, 5, 9, 12, 15]
    assert saturation_reason(10.0, 5.0, 20, growing) is not None  # 4/s < 70% of 10/s, queue 2 -> 15
    assert saturation_reason(10.0, 5.0, 40, growing) is None  # 8/s: keeping up
    assert saturation_reason(10.0, 5.0, 20, [2, 5, 4, 12, 15]) is None  # the queue fell once
    assert saturation_reason(10.0, 5.0, 20, [2, 2, 3, 3, 4]) is None  # grew by 2 only
    assert saturation_reason(10.0, 2.0, 4, growing) is None  # too early to tell
    assert saturation_reason(10.0, 5.0, 20, growing[1:]) is None  # too few checks


def test_a_sweep_level_says_what_filled_up_in_the_engines() -> None:
    """Per level, the engines' own queue, KV usage and preemptions (summed over servers where counts add
    up, the fullest KV cache), shown beside the latency; no table when no level has any."""
    from flowperf.modes.sweep.measure import engine_figures
    from flowperf.modes.sweep.report import engine_rows
    from flowperf.outputs.report import fmt
    from flowperf.rundir.summary_schema import ServerState

    servers = [
        ServerState(server="a", waiting_mean=1.5, waiting_max=4, kv_usage_max=0.5, preemptions=2),
        ServerState(server="b", waiting_mean=0.5, waiting_max=1, kv_usage_max=0.9, preemptions=0),
        ServerState(server="router"),  # an extra endpoint with none of these series
    ]
    figures = engine_figures(servers)
    assert figures == {"engine_waiting_mean": 2.0, "engine_waiting_max": 5.0, "engine_kv_usage_max": 0.9,
                       "engine_preemptions": 2.0}  # fmt: skip
    assert set(engine_figures([]).values()) == {None}
    base = {"role": "listed", "mode": "closed_loop", "status": "completed"}
    level = LevelRow(index=0, name="c8", concurrency=8, latency_p50_ms=120.0, **base, **figures)
    quiet = LevelRow(index=1, name="c16", concurrency=16, **base)
    (row, empty) = engine_rows({"levels": [level.model_dump(), quiet.model_dump()]})
    assert (
        row == ["c8", level.offered, fmt(120.0), fmt(2.0), fmt(5.0), "90%", fmt(2.0)]
        and empty[3:] == ["-"] * 4
    )
    assert engine_rows({"levels": [quiet.model_dump()]}) == []


def test_a_levels_timing_line_is_in_the_one_timing_format() -> None:
    """The line `bench sweep` prints per level parses as any [TIMING] line, floats to one decimal."""
    from flowperf.cli.sweep import _level_line
    from flowperf.run.timing import parse_timing_line

    spec = LevelSpec("listed", rate=2.5)
    level = row(0, spec, achieved=2.4567, passes=False, stopped="duration").model_copy(
        update={"wall_s": 7.25}
    )
    pairs = parse_timing_line(_level_line(level))
    assert pairs == {f"{level.name}_ms": "7250.0", "offered": "2.5/s", "achieved_per_s": "2.5",
                     "workflows": "0", "status": "complete", "attainment_pct": "50.0",
                     "stopped_early": "true"}  # fmt: skip
