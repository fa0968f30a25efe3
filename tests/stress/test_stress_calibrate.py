"""Calibration: a run directory made by the engine model itself, from known a, b, c, d, e, must give them
back, from what a run records (engine prefill times, token gaps on the harness clock, a harness overhead
on either side), with the chunked prefills the run's token budget implies left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_reference import reference_token_times

from flowperf.errors import UserError
from flowperf.stress.calibrate import (
    COEFFICIENTS,
    PREFILL_FROM_ENGINE,
    PREFILL_FROM_HARNESS,
    calibrate,
    nonnegative_least_squares,
    slope_of_medians,
)
from flowperf.stress.engine import EngineConfig
from flowperf.stress.replayed import run_batched_tokens
from flowperf.stress.service import ServiceModel

TRUTH = ServiceModel(
    prefill_base_s=0.0041,
    prefill_per_token_s=5.1e-5,
    decode_base_s=0.0023,
    decode_per_request_s=3.3e-4,
    decode_per_context_token_s=2.1e-6,
)
ENGINE = EngineConfig(max_num_seqs=12, max_num_batched_tokens=768, kv_cache_tokens=200_000, block_size=16)
OVERHEAD_S = 0.002

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


def synthetic_run(run_dir: Path, requests: int = 400, noise: float = 0.0, seed: int = 0) -> list[dict]:
    """A run directory of `requests` served by the engine model (one GPU, TRUTH, ENGINE) at about half
    its capacity: steps.jsonl as the harness would record it, with OVERHEAD_S split between the way in
    and the way out, optional multiplicative noise on every gap, and an engine.log naming the budget."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.05, requests))
    prompt = np.clip(rng.lognormal(5.3, 0.9, requests), 1, 1500).astype(np.int64)
    output = rng.integers(1, 30, requests)
    served = reference_token_times(arrival, prompt, output, ENGINE, TRUTH)
    submitted = arrival - OVERHEAD_S / 2
    finished = np.array([emitted[-1] for _, emitted in served]) + OVERHEAD_S / 2
    records = []
    for i, (start, emitted) in enumerate(served):
        seen = np.array(emitted) + OVERHEAD_S / 2
        gaps = np.diff(seen) * rng.normal(1, noise, len(emitted) - 1) if noise else np.diff(seen)
        records.append(
            IDENTITY
            | {
                "flow_index": i,
                "flow_id": f"f-{i:06d}",
                "max_tokens": int(output[i]),
                "inflight_at_start": int(((submitted <= submitted[i]) & (finished > submitted[i])).sum()),
                "start_offset_ms": submitted[i] * 1000,
                "status": "ok",
                "step_ms": (seen[0] + gaps.sum() - submitted[i]) * 1000,
                "ttft_ms": (seen[0] - submitted[i]) * 1000,
                "itl_ms": list(gaps * 1000),
                "prompt_tokens": int(prompt[i]),
                "output_tokens": int(output[i]),
                "cached_prompt_tokens": 0,
                "engine_queue_ms": (start - arrival[i]) * 1000,
                "engine_ttft_ms": (emitted[0] - arrival[i]) * 1000,
            }
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "steps.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    budget = f"INFO Chunked prefill is enabled with max_num_batched_tokens={ENGINE.max_num_batched_tokens}.\n"
    (run_dir / "engine.log").write_text(budget)
    return records


def truth() -> dict[str, float]:
    values = (
        TRUTH.prefill_base_s, TRUTH.prefill_per_token_s, TRUTH.decode_base_s, TRUTH.decode_per_request_s,
        TRUTH.decode_per_context_token_s, TRUTH.prefill_attention_s,
    )  # fmt: skip
    return dict(zip(COEFFICIENTS, values, strict=True))


def test_calibration_recovers_the_model_that_made_the_run(tmp_path):
    """Exact timings: every coefficient within 2%, the overhead exactly, chunked prefills left out."""
    synthetic_run(tmp_path)
    calibration = calibrate(tmp_path)
    fit = calibration.fit
    for name, value in truth().items():
        assert fit.coefficients[name] == pytest.approx(value, rel=0.02), name
    assert calibration.harness_overhead_s == pytest.approx(OVERHEAD_S, abs=1e-6)
    # rebuilt from the requests, the fit cannot see the prefills' attention (only iterations.jsonl can)
    assert calibration.prefill_source == PREFILL_FROM_ENGINE and fit.unidentified == ("f",)
    assert fit.dropped > 0 and fit.r2 > 0.99
    assert fit.prefill_points + fit.decode_points + fit.dropped >= 400
    assert calibration.service.decode_per_context_token_s == fit.coefficients["e"]


def test_calibration_with_noisy_gaps_stays_close(tmp_path):
    """5% noise on every token gap: the per-request costs a, b, c stay within 5%, d and e within 25%
    (they are small next to c on these batches), and the residuals show the noise."""
    synthetic_run(tmp_path, noise=0.05, seed=1)
    fit = calibrate(tmp_path).fit
    for name, bound in (("a", 0.05), ("b", 0.05), ("c", 0.05), ("d", 0.25), ("e", 0.25)):
        assert fit.coefficients[name] == pytest.approx(truth()[name], rel=bound), name
    assert 0 < fit.residual_p50 <= fit.residual_p90 <= fit.residual_p99
    assert fit.rmse > 0.01 * TRUTH.decode_base_s


def test_without_engine_timings_prefill_comes_from_requests_that_found_the_engine_idle(tmp_path):
    records = synthetic_run(tmp_path / "with")
    bare = [{k: v for k, v in r.items() if not k.startswith("engine_")} for r in records]
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bare))
    calibration = calibrate(tmp_path / "bare")
    assert calibration.prefill_source == PREFILL_FROM_HARNESS
    assert calibration.as_dict()["fit"]["prefill_source"] == PREFILL_FROM_HARNESS
    assert calibration.harness_overhead_s == 0.0
    # cruder (the overhead sits in the prefills, fewer of them are usable), still of the right size
    service = calibration.service
    assert service.prefill_base_s + 300 * service.prefill_per_token_s == pytest.approx(
        TRUTH.prefill_base_s + 300 * TRUTH.prefill_per_token_s, rel=0.15
    )


def test_nonnegative_least_squares_is_the_constrained_optimum():
    """On random problems whose unconstrained solution has negative parts, the answer is non-negative
    and satisfies the optimality conditions: zero gradient on positive coefficients, a gradient >= 0
    on the ones held at 0."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.normal(size=(50, 5))
        y = x @ rng.normal(size=5) + rng.normal(0, 0.1, 50)
        solution = nonnegative_least_squares(x, y)
        gradient = x.T @ (x @ solution - y)
        assert solution.min() >= 0
        assert np.all(np.abs(gradient[solution > 0]) < 1e-8)
        assert np.all(gradient[solution == 0] > -1e-8)


def test_coefficients_the_run_cannot_tell_apart_are_named(tmp_path):
    """One-token requests but one, which decodes alone: its iterations cannot separate c from d (one
    decode each time); a run of empty prompts has no prefill token to price b with: 0."""
    records = synthetic_run(tmp_path / "run")
    for record in records[1:]:
        record |= {"output_tokens": 1, "itl_ms": [], "step_ms": record["ttft_ms"]}
    (tmp_path / "run" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert {"c", "d"} <= set(calibrate(tmp_path / "run").fit.unidentified)
    records = synthetic_run(tmp_path / "empty")
    for record in records:
        record |= {"prompt_tokens": 0}
    (tmp_path / "empty" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fit = calibrate(tmp_path / "empty").fit
    assert "b" in fit.unidentified and fit.coefficients["b"] == 0.0


def test_the_token_budget_comes_from_the_engine_arguments_first_then_the_log(tmp_path):
    assert run_batched_tokens(tmp_path) is None
    (tmp_path / "engine.log").write_text("x\nChunked prefill is enabled with max_num_batched_tokens=2048.\n")
    assert run_batched_tokens(tmp_path) == 2048
    config = {"config": {"engine": {"extra_engine_args": {"max_num_batched_tokens": 512}}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert run_batched_tokens(tmp_path) == 512


def test_the_calibrated_model_drives_the_suite(tmp_path, bench_stress):
    synthetic_run(tmp_path / "run")
    out = tmp_path / "out"
    result = bench_stress(
        "--calibrate", tmp_path / "run", "--num-requests", 500, "--gpus", 2, "--out", out, "--workers", 1
    )
    assert result.exit_code == 0, result.output
    assert "Iteration-time model fitted from the run" in result.output
    analysis = json.loads((out / "stress_analysis.json").read_text())
    assert analysis["calibration"]["service"]["prefill_per_token_s"] == pytest.approx(
        TRUTH.prefill_per_token_s, rel=0.02
    )
    assert analysis["calibration"]["harness_overhead_s"] == pytest.approx(OVERHEAD_S, abs=1e-6)
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


def test_a_run_without_token_gaps_is_refused(tmp_path):
    step = IDENTITY | {"status": "ok", "step_ms": 5, "ttft_ms": 5, "itl_ms": [], "prompt_tokens": 9}
    line = json.dumps(step | {"cached_prompt_tokens": 0}) + "\n"
    (tmp_path / "steps.jsonl").write_text(line + line.replace('"flow_index": 0', '"flow_index": 1'))
    with pytest.raises(UserError, match="inter-token gaps"):
        calibrate(tmp_path)


def test_calibrate_needs_a_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        calibrate(tmp_path / "missing")


def test_a_calibrated_vllm_test_reports_bands_over_40_replicas_by_default(tmp_path, bench_stress):
    synthetic_run(tmp_path / "run", noise=0.05)
    out = tmp_path / "out"
    result = bench_stress(
        "--calibrate", tmp_path / "run", "--num-requests", 300, "--scheduler", "vllm", "--gpus", 1,
        "--out", out, "--workers", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads((out / "stress_replicas.json").read_text())
    assert found["replicas"] == 40
    e2e = found["bands"]["e2e_p50_s"]
    assert e2e["p5"] < e2e["median"] < e2e["p95"]


def test_think_steps_of_a_session_replay_are_skipped(tmp_path):
    synthetic_run(tmp_path)
    before = calibrate(tmp_path).fit.coefficients
    think = IDENTITY | {"status": "ok", "step_ms": 250.0, "kind": "think", "step_id": "think"}
    with (tmp_path / "steps.jsonl").open("a") as steps:
        steps.write(json.dumps(think) + "\n")
    assert calibrate(tmp_path).fit.coefficients == before


def test_calibrate_repeated_pools_the_runs(tmp_path, bench_stress):
    for seed in (0, 1):
        synthetic_run(tmp_path / f"run{seed}", noise=0.05, seed=seed)
    out = tmp_path / "out"
    result = bench_stress(
        "--calibrate", tmp_path / "run0", "--calibrate", tmp_path / "run1", "--num-requests", 300,
        "--scheduler", "vllm", "--gpus", 1, "--replicas", 10, "--out", out, "--workers", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 runs, their levels spread" in result.output
    analysis = json.loads((out / "stress_analysis.json").read_text())
    assert analysis["calibration"]["steps_used"] == 800 and analysis["calibration"]["noise"]["runs"] == 2


def test_the_crowd_overhead_is_what_the_simulation_leaves_unexplained():
    """Requests served by the engine model whose harness TTFT is the engine's plus OVERHEAD_S plus 0.5 ms
    per other request in flight: measured against the simulation of the same requests, the per-count
    medians give back 0.5 ms, and 0 without the crowd. Read as ttft - engine_ttft, with the engine's TTFT
    counted from when its core took the request in between steps (vLLM's queued_ts), the wait for the
    step in progress looks like a crowd of its own: the first version's double count."""
    from flowperf.stress.replayed import Overheads, Served, harness_times

    rng = np.random.default_rng(5)
    arrival = np.cumsum(rng.exponential(0.05, 400))
    prompt = np.clip(rng.lognormal(5.3, 0.9, 400), 1, 1500).astype(np.int64)
    output = rng.integers(1, 30, 400)
    served_times = reference_token_times(arrival, prompt, output, ENGINE, TRUTH)
    taken_in = np.array([start for start, _ in served_times])
    first = np.array([emitted[0] for _, emitted in served_times])
    finished = np.array([emitted[-1] for _, emitted in served_times])
    others = np.array([((arrival <= t) & (finished > t)).sum() - 1 for t in arrival])
    assert others.max() >= 3
    served = Served(arrival, prompt, output, None, None, "test")
    simulated = harness_times(served, ENGINE, TRUTH, Overheads(OVERHEAD_S)).ttft_s

    def slope(values):
        by_count: dict[int, list[float]] = {}
        for count, value in zip(others, values, strict=True):
            if count > 0:
                by_count.setdefault(int(count), []).append(float(value))
        return slope_of_medians(by_count)

    for crowd in (0.0, 0.0005):
        measured = first - arrival + OVERHEAD_S + crowd * others
        assert slope(measured - simulated) == pytest.approx(crowd, abs=2e-5)
    raw = (first - arrival + OVERHEAD_S) - (first - taken_in) - OVERHEAD_S
    assert slope(raw) > 0.0005  # the wait alone, read as more than the whole crowd above


def test_the_calibration_has_no_crowd_overhead_for_runs_it_cannot_replay(tmp_path):
    """A run without the engine's limits (here the synthetic one, with no config.json) cannot be
    simulated: no growth with requests in flight and no limit, rather than the raw difference."""
    synthetic_run(tmp_path / "run")
    fitted = calibrate(tmp_path / "run")
    assert (fitted.overhead_per_request_s, fitted.overhead_max_others) == (0.0, None)
    assert fitted.harness_overhead_s == pytest.approx(OVERHEAD_S, abs=1e-6)  # from the steps alone
    assert slope_of_medians({1: [0.002, 0.004, 0.003], 2: [0.006]}) == pytest.approx(0.021 / 7)
    assert slope_of_medians({1: [-0.001]}) == 0.0
