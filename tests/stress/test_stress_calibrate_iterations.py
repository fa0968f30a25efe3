"""Calibration from the engine's own iteration log (iterations.jsonl): known coefficients come back from a
log with idle pauses, gaps in the step numbers and a torn line, each step timed on the right clock, and a
run without a usable log falls back to rebuilding iterations from its steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_stress_calibrate import synthetic_run

from flowperf.errors import UserError
from flowperf.rundir.store import ITERATIONS
from flowperf.stress.calibrate import (
    COEFFICIENTS,
    LOGGED_SOURCE,
    PREFILL_FROM_ENGINE,
    calibrate,
    logged_iterations,
)

# Not the steps' truth (test_stress_calibrate.TRUTH): coefficients that come back came from the log.
LOGGED_TRUTH = dict(zip(COEFFICIENTS, (0.0052, 4.3e-5, 0.0031, 2.7e-4, 1.3e-6, 3.1e-9), strict=True))


def step_seconds(prefill: int, decodes: int, context: int, cached: int = 0) -> float:
    """A step's time; its prefill (one prompt, after `cached` tokens of prefix cache) attends to
    prefill * (cached + (prefill + 1) / 2) (query, key) pairs."""
    a, b, c, d, e, f = LOGGED_TRUTH.values()
    pairs = prefill * (cached + (prefill + 1) / 2)
    return (a + b * prefill + f * pairs if prefill else c) + d * decodes + e * context


OUTSIDE_S = 0.0004  # what the engine spends per step outside model execution (scheduling, outputs)


def synthetic_log(steps: int = 600, seed: int = 0) -> tuple[list[dict], int]:
    """Engine steps priced by LOGGED_TRUTH, as IterationLog writes them, and how many of them follow an
    idle engine (a pause of up to 2 s inside their gap) or steps the log missed (the step numbers jump):
    their gap is not their length, which only their model execution time (`elapsed_ms`) tells."""
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    clock, index, misleading = 100.0, 0, 0
    for _ in range(steps):
        prefill = int(rng.integers(1, 2000)) if rng.random() < 0.4 else 0
        cached = int(rng.integers(0, 4000)) if prefill and rng.random() < 0.5 else 0
        decodes = int(rng.integers(0 if prefill else 1, 12))
        context = decodes * int(rng.integers(50, 800))
        seconds = step_seconds(prefill, decodes, context, cached)
        gap, pause, unlogged = seconds, rng.random() < 0.1, rng.random() < 0.05
        if records and pause:
            records[-1] |= {"running": 0, "waiting": 0}
        if records and (pause or unlogged):
            misleading += 1
            index += int(rng.integers(2, 6)) if unlogged else 1
            gap += rng.uniform(0.5, 2.0)
        else:
            index += 1
        clock += gap
        emitted_before = bool(records) and records[-1]["generated"] > 0
        records.append(
            {
                "t": clock,
                "index": index,
                "prefill_tokens": prefill,
                "prefills": int(prefill > 0),
                "prompts_done": int(prefill > 0),
                "prompt_tokens_done": prefill + cached,
                "prompt_tokens_computed": prefill,
                "decodes": decodes,
                "context_tokens": context,
                "generated": decodes + int(prefill > 0),
                "engine_gap_ms": gap * 1000 if decodes and emitted_before else None,
                "elapsed_ms": (seconds - OUTSIDE_S) * 1000,
                "running": decodes + 1,
                "waiting": int(rng.integers(0, 3)),
            }
        )
    return records, misleading


def write_log(run_dir: Path, records: list[dict]) -> None:
    """The records as lines, with what a real log also holds: a line torn by a crash and continued by a
    resumed run, and a line without a step number (a stats-only output, not an iteration)."""
    lines = [json.dumps(record) for record in records]
    lines.insert(len(lines) // 2, '{"t": 1.0, "index": 4')
    lines.insert(len(lines) // 3, json.dumps({"t": 2.0, "running": 0, "waiting": 0}))
    (run_dir / ITERATIONS).write_text("".join(line + "\n" for line in lines))


def test_the_logged_steps_give_back_their_coefficients(tmp_path):
    synthetic_run(tmp_path, requests=60)
    records, misleading = synthetic_log()
    assert misleading > 50
    write_log(tmp_path, records)
    fitted = calibrate(tmp_path)
    for name, truth in LOGGED_TRUTH.items():
        assert fitted.fit.coefficients[name] == pytest.approx(truth, rel=1e-6), name
    assert fitted.fit.r2 == pytest.approx(1.0)
    assert fitted.fit.dropped == 0
    assert fitted.fit.prefill_points == sum(record["prefill_tokens"] > 0 for record in records)
    assert fitted.fit.prefill_points + fitted.fit.decode_points == len(records)
    assert fitted.prefill_source == fitted.decode_source == LOGGED_SOURCE
    assert fitted.steps_used == 60  # the harness overhead still comes from the steps


def test_each_step_is_timed_on_the_clock_that_measured_it():
    """The front end can receive a step late (it shares the process with the harness): a step with
    decodes takes its length from vLLM's inter-token latency instead; one without has only `t`; one
    after an idle engine (or the first) has no start, and is its model execution plus the median time
    the timed steps spent outside it."""
    records = [
        {"t": 10.000, "index": 1, "generated": 1, "running": 1, "prefill_tokens": 500, "elapsed_ms": 20.0},
        {"t": 10.030, "index": 2, "running": 2, "prefill_tokens": 700, "elapsed_ms": 29.0},
        {"t": 10.040, "index": 3, "generated": 2, "running": 2, "prefill_tokens": 300, "decodes": 1}
        | {"elapsed_ms": 9.5},
        {"t": 10.050, "index": 4, "generated": 2, "running": 2, "decodes": 2, "engine_gap_ms": 4.0}
        | {"elapsed_ms": 3.0},
        {"t": 10.060, "index": 5, "generated": 2, "running": 2, "decodes": 2, "engine_gap_ms": 6.0}
        | {"elapsed_ms": 5.2},
        {"t": 10.065, "index": 6, "generated": 2, "running": 0, "decodes": 2, "engine_gap_ms": 4.5}
        | {"elapsed_ms": 3.5},
        {"t": 20.000, "index": 7, "generated": 1, "running": 1, "prefill_tokens": 100, "elapsed_ms": 7.0},
    ]
    iterations, dropped = logged_iterations(records)
    assert dropped == 0
    assert iterations.seconds * 1000 == pytest.approx([21.0, 30.0, 10.0, 4.0, 6.0, 4.5, 8.0])
    assert list(iterations.prefill_tokens) == [500, 700, 300, 0, 0, 0, 100]
    assert list(iterations.from_prefill) == [True, True, True, False, False, False, True]


def test_a_run_without_a_usable_log_rebuilds_its_iterations_from_the_steps(tmp_path):
    synthetic_run(tmp_path, requests=60)
    assert calibrate(tmp_path).prefill_source == PREFILL_FROM_ENGINE  # no log at all
    records, _ = synthetic_log(steps=4)
    write_log(tmp_path, records)  # fewer usable steps than coefficients
    assert calibrate(tmp_path).prefill_source == PREFILL_FROM_ENGINE


def slower(records: list[dict], factor: float) -> list[dict]:
    """The same engine steps on a machine `factor` times slower: every time stretched."""
    start = records[0]["t"]
    return [
        record
        | {
            "t": start + (record["t"] - start) * factor,
            "elapsed_ms": record["elapsed_ms"] * factor,
            "engine_gap_ms": None if record["engine_gap_ms"] is None else record["engine_gap_ms"] * factor,
        }
        for record in records
    ]


def test_several_runs_are_pooled_and_their_speeds_measured(tmp_path):
    """Two runs of the same steps, the second on a machine 1.5x slower: one fit over both, prices between
    the two, and the noise model's levels spread as the two speeds do."""
    runs = [tmp_path / "fast", tmp_path / "slow"]
    records, _ = synthetic_log()
    for run, factor in zip(runs, (1.0, 1.5), strict=True):
        run.mkdir()
        synthetic_run(run, requests=60)
        write_log(run, slower(records, factor))
    fast, pooled = calibrate(runs[0]), calibrate(runs)
    assert calibrate([runs[0]]).as_dict() == fast.as_dict()
    assert pooled.steps_used == 2 * fast.steps_used
    assert pooled.fit.prefill_points + pooled.fit.decode_points == 2 * len(records)
    for name in ("a", "b", "c"):
        assert fast.fit.coefficients[name] < pooled.fit.coefficients[name] < 1.5 * fast.fit.coefficients[name]
    assert fast.noise.runs == 1 and pooled.noise.runs == 2
    assert pooled.noise.between == pytest.approx(np.log(1.5) / np.sqrt(2), rel=0.15)
    assert pooled.noise.phi < 0.5  # the jump between the runs is not read as one long slow spell


def test_runs_measured_differently_are_not_pooled(tmp_path):
    logged, unlogged = tmp_path / "logged", tmp_path / "unlogged"
    for run in (logged, unlogged):
        run.mkdir()
        synthetic_run(run, requests=60)
    write_log(logged, synthetic_log()[0])
    with pytest.raises(UserError, match="not measured the same way"):
        calibrate([logged, unlogged])
