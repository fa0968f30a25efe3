"""Calibration: a steps.jsonl made from known a, b, c, d plus noise must give them back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowperf.errors import UserError
from flowperf.stress.calibrate import calibrate, fit_line

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


def write_run(run_dir, steps: int = 400, seed: int = 0, torn: bool = True) -> None:
    """A run directory whose steps follow the linear model with 3% noise, plus a failed step and a torn
    last line such as a crash leaves."""
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(steps):
        prompt = int(rng.integers(50, 6000))
        cached = int(rng.integers(0, prompt // 2))
        inflight = int(rng.integers(1, 33))
        output = int(rng.integers(2, 200))
        ttft = (A_S + B_S * (prompt - cached)) * rng.normal(1, 0.03)
        gaps = (C_S + D_S * inflight) * rng.normal(1, 0.03, output - 1)
        record = IDENTITY | {
            "flow_index": index,
            "status": "ok",
            "prompt_tokens": prompt,
            "output_tokens": output,
            "cached_prompt_tokens": cached,
            "ttft_ms": ttft * 1000,
            "step_ms": (ttft + gaps.sum()) * 1000,
            "itl_ms": list(gaps * 1000),
            "inflight_at_start": inflight,
            "flow": "ignored extra field",
        }
        lines.append(json.dumps(record))
    failed = IDENTITY | {
        "status": "failed",
        "step_ms": 1,
        "inflight_at_start": 1,
        "error_type": "EngineError",
    }
    lines.append(json.dumps(failed))
    text = "\n".join(lines) + "\n" + ('{"status": "ok", "prompt_tok' if torn else "")
    run_dir.mkdir(exist_ok=True)
    (run_dir / "steps.jsonl").write_text(text)


def test_fit_recovers_the_model_from_noisy_steps(tmp_path):
    write_run(tmp_path)
    calibration = calibrate(tmp_path)
    service = calibration.service
    assert service.prefill_base_s == pytest.approx(A_S, rel=0.15)
    assert service.prefill_per_token_s == pytest.approx(B_S, rel=0.03)
    assert service.decode_base_s == pytest.approx(C_S, rel=0.05)
    assert service.decode_per_request_s == pytest.approx(D_S, rel=0.05)
    assert calibration.steps_used == 400 and calibration.steps_skipped == 1
    assert calibration.prefill.r2 > 0.95 and calibration.decode.r2 > 0.95
    assert calibration.prefill.rmse < 0.03 * (A_S + B_S * 6000)


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
