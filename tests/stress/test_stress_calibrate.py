"""Calibration: a steps.jsonl made from known a, b, c, d plus noise must give them back, from the engine's
own prefill time (not the harness TTFT with its queueing) and the batch that really decoded together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowperf.benchmark import RunHooks, run_benchmark
from flowperf.config import RunConfig
from flowperf.errors import UserError
from flowperf.stress.calibrate import (
    PREFILL_FROM_ENGINE,
    PREFILL_FROM_HARNESS,
    calibrate,
    decode_window_occupancy,
    fit_line,
    read_steps,
)

A_S, B_S, C_S, D_S = 0.035, 2.0e-4, 0.018, 6.0e-4


IDENTITY = {
    "flow_index": 0,
    "flow_id": "f-000000",
    "session": 0,
    "step_index": 0,
    "step_id": "s",
    "max_tokens": 200,
    "inflight_at_start": 1,
    "start_offset_ms": 0.0,
}


def wave(rng: np.random.Generator, start_s: float, size: int, first_index: int) -> tuple[list[dict], float]:
    """`size` requests submitted together that all finish together, so exactly `size` decode side by side
    for the whole of each one's decode window; each waits in the engine's queue a random time that the
    harness TTFT includes and the prefill fit must leave out. Returns the records and the wave's end."""
    decode_s = C_S + D_S * size
    output = int(rng.integers(20, 200))
    duration = 2.0 + output * decode_s
    records = []
    for member in range(size):
        prompt = int(rng.integers(50, 6000))
        cached = int(rng.integers(0, prompt // 2))
        queue = float(rng.exponential(0.3))
        prefill = (A_S + B_S * (prompt - cached)) * rng.normal(1, 0.03)
        ttft = queue + prefill + 0.002
        tpot = decode_s * rng.normal(1, 0.03)
        gaps = np.full(output - 1, tpot)
        records.append(
            IDENTITY
            | {
                "flow_index": first_index + member,
                "status": "ok",
                "prompt_tokens": prompt,
                "output_tokens": output,
                "cached_prompt_tokens": cached,
                "ttft_ms": ttft * 1000,
                "tpot_ms": tpot * 1000,
                "step_ms": duration * 1000,
                "itl_ms": list(gaps * 1000),
                "engine_queue_ms": queue * 1000,
                "engine_ttft_ms": (queue + prefill) * 1000,
                "inflight_at_start": member + 1,  # what the harness saw at submission, not the batch
                "start_offset_ms": start_s * 1000,
                "flow": "ignored extra field",
            }
        )
    return records, start_s + duration


def write_run(run_dir: Path, steps: int = 400, seed: int = 0, torn: bool = True) -> list[dict]:
    """A run directory whose steps follow the linear model with 3% noise, plus a failed step and a torn
    last line such as a crash leaves."""
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    clock = 0.0
    while len(records) < steps:
        size = min(int(rng.integers(1, 33)), steps - len(records))
        made, clock = wave(rng, clock + 0.5, size, len(records))
        records += made
    failed = IDENTITY | {
        "status": "failed",
        "step_ms": 1,
        "inflight_at_start": 1,
        "start_offset_ms": clock + 10_000.0,
        "error_type": "EngineError",
    }
    lines = [json.dumps(record) for record in [*records, failed]]
    text = "\n".join(lines) + "\n" + ('{"status": "ok", "prompt_tok' if torn else "")
    run_dir.mkdir(exist_ok=True)
    (run_dir / "steps.jsonl").write_text(text)
    return records


def test_fit_recovers_the_model_from_noisy_steps(tmp_path):
    write_run(tmp_path)
    calibration = calibrate(tmp_path)
    service = calibration.service
    assert calibration.prefill_source == PREFILL_FROM_ENGINE
    assert service.prefill_base_s == pytest.approx(A_S, rel=0.15)
    assert service.prefill_per_token_s == pytest.approx(B_S, rel=0.03)
    assert service.decode_base_s == pytest.approx(C_S, rel=0.05)
    assert service.decode_per_request_s == pytest.approx(D_S, rel=0.05)
    assert calibration.steps_used == 400 and calibration.steps_skipped == 1
    assert calibration.prefill.r2 > 0.95 and calibration.decode.r2 > 0.9
    assert calibration.prefill.rmse < 0.03 * (A_S + B_S * 6000)
    for fit in (calibration.prefill, calibration.decode):
        assert 0 < fit.residual_p50 <= fit.residual_p90 <= fit.residual_p99 <= 5 * fit.rmse


def test_without_engine_timings_prefill_falls_back_to_the_harness_ttft_and_says_so(tmp_path):
    records = write_run(tmp_path / "with", torn=False)
    bare = [{k: v for k, v in r.items() if not k.startswith("engine_")} for r in records]
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bare))
    calibration = calibrate(tmp_path / "bare")
    assert calibration.prefill_source == PREFILL_FROM_HARNESS
    assert calibration.as_dict()["prefill_fit"]["source"] == PREFILL_FROM_HARNESS
    # the queueing inside the harness TTFT inflates the fixed cost: exactly what the engine fit avoids
    assert calibration.service.prefill_base_s > 5 * A_S
    assert calibration.prefill.rmse > 5 * calibrate(tmp_path / "with").prefill.rmse


def test_fit_keeps_costs_non_negative_and_flags_an_unknowable_slope():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    falling = fit_line(x, np.array([4.0, 3.0, 2.0, 1.0]))
    assert falling.slope == 0.0 and falling.intercept == pytest.approx(2.5)
    through_zero = fit_line(x, np.array([0.5, 2.0, 3.5, 5.0]))  # unconstrained intercept is -1
    assert through_zero.intercept == 0.0 and through_zero.slope > 0
    flat = fit_line(np.full(3, 8.0), np.array([1.0, 2.0, 3.0]))
    assert not flat.slope_identifiable and flat.slope == 0.0 and flat.intercept == pytest.approx(2.0)


def test_the_calibrated_model_drives_the_suite(tmp_path, bench_stress):
    write_run(tmp_path / "run")
    out = tmp_path / "out"
    result = bench_stress(
        "--calibrate", tmp_path / "run", "--num-requests", 500, "--gpus", 2, "--out", out, "--workers", 1
    )
    assert result.exit_code == 0, result.output
    assert "Service model fitted from the run" in result.output
    analysis = json.loads((out / "stress_analysis.json").read_text())
    assert analysis["calibration"]["service"]["decode_per_request_s"] == pytest.approx(D_S, rel=0.05)
    assert analysis["settings"]["service"] == analysis["calibration"]["service"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "steps.jsonl not found"),
        ('{"status": "ok"}\n', "line 1: flow_index: Field required"),
        (json.dumps(IDENTITY | {"status": "ok", "step_ms": 1}) + "\n", "line 1: prompt_tokens: missing"),
        (json.dumps(IDENTITY | {"status": "ok", "step_ms": -1}) + "\n", "line 1: step_ms: Input should be"),
        ("not json\n", "line 1: Invalid JSON"),
        (json.dumps(IDENTITY | {"status": "failed", "step_ms": 1}) + "\n", "0 successful steps"),
    ],
)  # fmt: skip
def test_bad_run_directories_are_user_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / "steps.jsonl").write_text(content)
    with pytest.raises(UserError, match=message):
        calibrate(tmp_path)


def test_calibrate_needs_a_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        calibrate(tmp_path / "missing")


@pytest.mark.engine
def test_calibration_from_a_real_run(engine, engine_loop, tmp_path):
    """A short run on the real engine at concurrency 4: prefill comes from the engine's own timings, each
    step's decoding batch is between itself alone and the concurrency, and the fit reports residuals."""
    root = Path(__file__).resolve().parents[2]
    config = RunConfig.model_validate(
        {
            "flows_dir": str(root / "flows"),
            "fixtures_dir": str(root / "fixtures"),
            "num_flows": 8,
            "max_tokens": 16,
            "concurrency": 4,
            "output": {"out_dir": str(tmp_path), "run_id": "calibrate"},
        }
    )
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda line: None), shutdown_engine=False))
    assert result.exit_code == 0
    calibration = calibrate(result.run_dir)
    assert calibration.prefill_source == PREFILL_FROM_ENGINE and calibration.steps_used == 24
    steps, _ = read_steps(result.run_dir)
    assert all(0 < s.engine_ttft_ms - s.engine_queue_ms <= s.ttft_ms for s in steps)
    batch = decode_window_occupancy(steps, steps)
    assert np.all((batch >= 1 - 1e-9) & (batch <= 4 + 1e-9)) and batch.max() > 1
    for fit in (calibration.prefill, calibration.decode):
        assert fit.points == 24 and fit.rmse >= 0
        assert 0 <= fit.residual_p50 <= fit.residual_p90 <= fit.residual_p99
    document = calibration.as_dict()
    assert {"rmse", "r2", "residual_p50", "residual_p90", "residual_p99", "source"} <= set(
        document["decode_fit"]
    )
