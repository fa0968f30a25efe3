"""`bench stress --validate`: its error arithmetic, where it takes a calibration from, and the whole path on
a real replay (the trace's requests with their hash ids, the engine's limits, predicted against measured)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from flowperf.errors import UserError
from flowperf.stress.calibrate import calibrate
from flowperf.stress.service import ServiceModel
from flowperf.stress.validate import figure, load_calibration, load_model, overheads_of, validate
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


def replay_on_the_engine(trace: Path, tmp_path: Path, time_scale: float) -> Path:
    """`bench replay` of the trace on the in-process engine; its run directory."""
    done = run_bench(
        "replay", str(trace), "--token-scale", "0.125", "--time-scale", str(time_scale),
        "--out", str(tmp_path / "runs"), "--run-id", "replay", "--no-progress", timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp_path / "runs" / "replay"


@pytest.mark.engine
def test_validate_a_real_replay_end_to_end(tmp_path, bench_stress):
    """A 24-request replay on the in-process engine, validated against a model calibrated on itself:
    the trace is reloaded with its hash ids, the limits are the engine's, every figure is finite and
    the latencies are of the right size (self-calibrated, so within 50%: this checks the path, not the
    accuracy, which benchmarks/sim_validation.py measures across loads)."""
    trace = write_trace(tmp_path / "conversations.jsonl")
    run_dir = replay_on_the_engine(trace, tmp_path, time_scale=2)
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


@pytest.mark.engine
def test_the_crowd_overhead_is_fitted_on_a_real_replay_through_the_model(tmp_path):
    """A replay fast enough that requests overlap (up to 9 others in flight): the calibration replays it
    through its own fitted model, records the most others in flight it measured the crowd at, and its
    file carries that to validation (one from before the field reads as no limit). The slope itself is
    near 0 on this engine once the simulation's own wait is taken out (docs/stress.md)."""
    run_dir = replay_on_the_engine(write_trace(tmp_path / "conversations.jsonl"), tmp_path, time_scale=40)
    fitted = calibrate(run_dir)
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert fitted.overhead_max_others == max(step["inflight_at_start"] for step in steps) - 1 > 1
    assert 0.0 <= fitted.overhead_per_request_s < 0.001
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps(fitted.as_dict()))
    assert load_model(calibration).overheads.max_others == fitted.overhead_max_others
    older = {key: value for key, value in fitted.as_dict().items() if key != "overhead_max_others"}
    assert overheads_of(older).max_others == np.inf


def test_each_request_in_flight_adds_the_per_request_overhead_on_the_way_back():
    """Five requests arriving within a millisecond, all in flight together: request i finds i others, so
    with 1 s per other request its TTFT and end to end are about i seconds longer (the engine's part is
    milliseconds): the median request, i = 2, about 2 s."""
    from flowperf.stress.engine import EngineConfig
    from flowperf.stress.replayed import Overheads, Served, simulated_figures

    served = Served(np.arange(5) * 1e-4, np.full(5, 32), np.full(5, 20), None, None, "test")
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, kv_cache_tokens=10_000, block_size=16)
    service = ServiceModel(prefill_base_s=0.002, prefill_per_token_s=1e-5, decode_base_s=0.001)
    alone = simulated_figures(served, engine, service, Overheads(0.002))
    crowded = simulated_figures(served, engine, service, Overheads(0.002, None, 1.0))
    assert alone["ttft_p50_s"] < 0.05 and alone["e2e_p50_s"] < 0.1
    assert crowded["ttft_p50_s"] == pytest.approx(2.0 + alone["ttft_p50_s"], abs=0.05)
    assert crowded["e2e_p50_s"] == pytest.approx(2.0 + alone["e2e_p50_s"], abs=0.05)
    assert crowded["throughput_rps"] == pytest.approx(5 / (4.0 + 5 / alone["throughput_rps"]), rel=0.05)
    held = simulated_figures(served, engine, service, Overheads(0.002, None, 1.0, max_others=1))
    assert held["ttft_p50_s"] == pytest.approx(1.0 + alone["ttft_p50_s"], abs=0.05)  # 2 others, held at 1
    assert held["ttft_p95_s"] == pytest.approx(1.0 + alone["ttft_p95_s"], abs=0.05)  # 4 others, held at 1
