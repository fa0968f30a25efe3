"""`bench stress --validate`: its error arithmetic, where it takes a calibration from, and the whole path on
a real replay (the trace's requests with their hash ids, the engine's limits, predicted against measured)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flowperf.errors import UserError
from flowperf.stress.calibrate import calibrate
from flowperf.stress.service import ServiceModel
from flowperf.stress.validate import figure, load_calibration, validate
from helpers import run_bench


def test_relative_error_is_predicted_minus_measured_over_measured():
    assert figure("e2e_p50_s", 0.11, 0.10).relative_error == pytest.approx(0.10)
    assert figure("e2e_p50_s", 0.08, 0.10).relative_error == pytest.approx(-0.20)
    assert figure("ttft_p95_s", 0.10, 0.10).relative_error == 0.0
    unmeasured = figure("preemptions", 3, None)
    assert unmeasured.measured is None and unmeasured.relative_error is None and unmeasured.predicted == 3.0
    assert figure("x", 1.0, 0.0).relative_error is None  # no error relative to nothing


def test_a_calibration_file_holds_the_model_and_the_overhead_at_the_top_or_under_calibration(tmp_path):
    service = ServiceModel(prefill_base_s=0.004, decode_per_context_token_s=1e-6)
    top = tmp_path / "calibration.json"
    top.write_text(json.dumps({"service": service.model_dump(), "harness_overhead_s": 0.002}))
    assert load_calibration(top) == (service, 0.002)
    analysis = tmp_path / "stress_analysis.json"
    analysis.write_text(json.dumps({"calibration": {"service": service.model_dump()}}))
    assert load_calibration(analysis) == (service, 0.0)
    (tmp_path / "bad.json").write_text(json.dumps({"settings": {}}))
    with pytest.raises(UserError, match="no service model"):
        load_calibration(tmp_path / "bad.json")
    with pytest.raises(UserError, match="no such file or run directory"):
        load_calibration(tmp_path / "missing.json")


def write_trace(path: Path, requests: int = 24) -> Path:
    """Conversations of two to four turns: each turn repeats the previous turn's hash ids and adds one, so
    the engine's prefix cache (and the simulator's) hits on every later turn."""
    lines, clock, conversation = [], 0, 0
    while len(lines) < requests:
        ids = [1000 * conversation]
        for _ in range(2 + conversation % 3):
            ids = [*ids, ids[-1] + 1]
            turn = {"timestamp": clock, "input_length": 512 * len(ids), "output_length": 32, "hash_ids": ids}
            lines.append(turn)
            clock += 150
        conversation += 1
    path.write_text("".join(json.dumps(line) + "\n" for line in lines[:requests]))
    return path


@pytest.mark.engine
def test_validate_a_real_replay_end_to_end(tmp_path, bench_stress):
    """A 24-request replay on the in-process engine, validated against a model calibrated on itself:
    the trace is reloaded with its hash ids, the limits are the engine's, every figure is finite and
    the latencies are of the right size (self-calibrated, so within 50%: this checks the path, not the
    accuracy, which benchmarks/sim_validation.py measures across loads)."""
    trace = write_trace(tmp_path / "conversations.jsonl")
    done = run_bench(
        "replay", str(trace), "--token-scale", "0.125", "--time-scale", "2", "--out", str(tmp_path / "runs"),
        "--run-id", "replay", "--no-progress", timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "replay"
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps(calibrate(run_dir).as_dict()))
    result = validate(run_dir, calibration)
    assert result.requests == 24 and str(trace) in result.requests_from
    assert result.engine["block_size"] == 32 and result.engine["max_num_batched_tokens"] == 2048
    assert result.harness_overhead_s > 0
    for item in result.figures:
        assert math.isfinite(item.predicted), item
    for name in ("ttft_p50_s", "e2e_p50_s", "e2e_p95_s", "throughput_rps"):
        assert abs(result.figure(name).relative_error) < 0.5, result.figure(name)
    shown = bench_stress("--validate", run_dir, "--calibration", calibration, "--json")
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    assert [f["name"] for f in document["figures"]] == [f.name for f in result.figures]
