"""The suite end to end on small caps: outputs, determinism across workers, resume, step selection."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_stress_calibrate import synthetic_run
from test_stress_calibrate_iterations import synthetic_log, write_log
from test_stress_noise import known_process

from flowperf.errors import UserError
from flowperf.stress.config import parse_flags
from flowperf.stress.executors import open_executor
from flowperf.stress.metrics import outcome_metrics
from flowperf.stress.noise import NoiseModel, band, fit_noise, replica_scale
from flowperf.stress.replicas import ReplicaPlan
from flowperf.stress.results import COLUMNS, COLUMNS_BEFORE_BANDS, INCREMENTAL, STEP_FILES
from flowperf.stress.service import ServiceModel
from flowperf.stress.sim import SimConfig, simulate
from flowperf.stress.spec import TIMING_FIELDS, TestResult
from flowperf.stress.suite import planned_tests, run_suite
from flowperf.stress.workload import cached_workload

SMALL = ("--max-requests", 2000, "--max-gpus", 4, "--rate", 3)


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def figures(path):
    """The deterministic part of a results CSV."""
    return [{key: value for key, value in row.items() if key not in TIMING_FIELDS} for row in rows(path)]


def run_api(out, **flags):
    """Run the suite through the Python API; returns (report, [(test_id, resumed)])."""
    config = parse_flags(out=out, max_requests=2000, max_gpus=4, rate=3.0, workers=1, **flags)
    test_config = config.test_config(ServiceModel())
    seen = []
    with open_executor(test_config, config.executor, config.workers, config.ray_address) as run_many:
        report = run_suite(
            config, test_config, run_many, lambda result, resumed: seen.append((result.test_id, resumed))
        )
    return report, seen


def test_full_suite_writes_every_output(tmp_path, bench_stress):
    out = tmp_path / "out"
    result = bench_stress(*SMALL, "--out", out, "--workers", 1)
    assert result.exit_code == 0, result.output
    counts = {step: len(rows(out / name)) for step, name in STEP_FILES.items()}
    assert counts == {"step1": 10, "step2": 3, "step3": 6}  # {1000, 2000} x 5; GPUs {1, 2, 4}; 6 K values
    assert len(rows(out / "stress_results.csv")) == len(rows(out / INCREMENTAL)) == 19
    analysis = json.loads((out / "stress_analysis.json").read_text())
    # the choices, worked out again from the step CSVs by the rules the analysis states
    step1_rows = rows(out / STEP_FILES["step1"])
    largest = max(int(row["num_requests"]) for row in step1_rows)
    finalists = [row for row in step1_rows if int(row["num_requests"]) == largest]
    top = max(float(row["sla_attainment"]) for row in finalists)
    fastest = min(float(row["ttft_p99_s"]) for row in finalists if float(row["sla_attainment"]) == top)
    best = [
        r["scheduler"]
        for r in finalists
        if (float(r["sla_attainment"]), float(r["ttft_p99_s"])) == (top, fastest)
    ]
    assert analysis["step1"]["best_scheduler"] == best[0]
    assert analysis["step2"]["scheduler"] == analysis["step1"]["best_scheduler"]
    step2_rows = rows(out / STEP_FILES["step2"])
    target = analysis["step2"]["sla_target"]
    meeting = [int(row["n_gpus"]) for row in step2_rows if float(row["sla_attainment"]) >= target]
    assert analysis["step2"]["best_gpu_count"] == (min(meeting) if meeting else 4)
    assert analysis["step3"]["n_gpus"] == analysis["step2"]["best_gpu_count"]
    assert [entry["k"] for entry in analysis["step3"]["by_k"]] == [1, 2, 3, 4, 6, 8]
    assert "best scheduler (step 1)" in result.output and "19 tests" in result.output
    step1 = rows(out / STEP_FILES["step1"])
    assert {row["effective_k"] for row in step1 if row["scheduler"] == "continuous"} == {""}
    assert all(0 <= float(row["sla_attainment"]) <= 1 for row in step1)
    assert {row["replicas"] for row in step1} == {""} and "band" not in analysis["step1"]  # no calibration


def test_results_are_identical_with_two_workers_and_the_same_seed(tmp_path, bench_stress):
    serial, parallel, other_seed = tmp_path / "serial", tmp_path / "parallel", tmp_path / "seed"
    for out, extra in ((serial, ("--workers", 1)), (parallel, ("--workers", 2)), (other_seed, ("--seed", 9))):
        result = bench_stress(*SMALL, "--step1-only", "--out", out, *extra)
        assert result.exit_code == 0, result.output
    assert figures(serial / "stress_results.csv") == figures(parallel / "stress_results.csv")
    assert figures(serial / "stress_results.csv") != figures(other_seed / "stress_results.csv")


def test_resume_skips_finished_tests_and_survives_a_torn_line(tmp_path):
    out = tmp_path / "out"
    first, _ = run_api(out, step1_only=True)
    log = out / INCREMENTAL
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:5]) + lines[5][:30])  # header, four results, a torn fifth
    again, seen = run_api(out, step1_only=True, resume=True)
    assert sum(resumed for _, resumed in seen) == 4 and len(seen) == 10
    assert [result.model_dump(exclude=set(TIMING_FIELDS)) for result in again.results] == [
        result.model_dump(exclude=set(TIMING_FIELDS)) for result in first.results
    ]
    assert len(rows(log)) == 10 and again.analysis["resumed_tests"] == 4


def test_resume_refuses_results_made_with_other_settings(tmp_path):
    out = tmp_path / "out"
    run_api(out, num_requests=300)
    with pytest.raises(UserError, match="made with other settings"):
        run_api(out, num_requests=300, d_sla=9.0, resume=True)


def test_later_steps_alone_take_earlier_answers_from_resumed_results(tmp_path):
    out = tmp_path / "out"
    full, _ = run_api(out)
    step2, seen = run_api(out, step2_only=True, resume=True)
    assert step2.analysis["step2"]["scheduler"] == full.analysis["step1"]["best_scheduler"]
    assert step2.analysis["step2"]["scheduler_source"] == "resumed" and all(resumed for _, resumed in seen)
    step3, _ = run_api(tmp_path / "fresh", step3_only=True, best_gpu_count=3)
    assert step3.analysis["step3"]["n_gpus"] == 3 and step3.analysis["step3"]["gpu_count_source"] == "flag"
    assert {result.step for result in step3.results} == {"step3"}


def test_step2_alone_without_history_uses_the_default_scheduler(tmp_path):
    report, _ = run_api(tmp_path, step2_only=True)
    assert report.analysis["step2"]["scheduler"] == "continuous"
    assert report.analysis["step2"]["scheduler_source"] == "default"


def test_one_test_run(tmp_path, bench_stress):
    out = tmp_path / "out"
    result = bench_stress("--num-requests", 800, "--scheduler", "bins-4", "--gpus", 3, "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = rows(out / "stress_results.csv")
    assert row["test_id"] == "single/bins-4/r800/g3" and row["effective_k"] == "4"
    assert not (out / STEP_FILES["step1"]).exists()


def test_planned_tests_match_the_issue_at_default_caps():
    tests = planned_tests(parse_flags())
    assert len(tests) == 39
    assert max(test.num_requests for test in tests) == 1_000_000
    assert max(test.n_gpus for test in tests) == 100


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--rate", "-1"), "--rate: Input should be greater than 0"),
        (("--scheduler", "fifo"), "--scheduler: unknown scheduler 'fifo'"),
        (("--step1-only", "--step2-only"), "--step1-only: choose one of"),
        (("--num-requests", "10", "--step3-only"), "--num-requests: runs one test"),
        (("--ray-address", "127.0.0.1:6379"), "--ray-address: needs --executor ray"),
        (
            ("--workload", "synthetic", "--use-real-timestamps"),
            "--use-real-timestamps: the synthetic workload",
        ),
        (("--workload", "/nonexistent/trace.csv"), "--workload: '/nonexistent/trace.csv'"),
        (("--executor", "dask"), "--executor: Input should be 'local' or 'ray'"),
        (("--sla-target", "1.5"), "--sla-target: Input should be less than or equal to 1"),
        (("--workers", "0"), "--workers: Input should be greater than or equal to 1"),
        (("--calibrate", "/nonexistent/run"), "--calibrate: /nonexistent/run is not a directory"),
    ],
)
def test_flag_mistakes_are_one_line_user_errors(tmp_path, bench_stress, flags, message):
    result = bench_stress(*flags, "--out", tmp_path / "out")
    assert isinstance(result.exception, UserError), result.output
    assert str(result.exception).startswith(message) and "\n" not in str(result.exception)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_an_output_path_that_is_a_file_is_refused(tmp_path, bench_stress):
    taken = tmp_path / "taken"
    taken.write_text("")
    result = bench_stress("--num-requests", 10, "--out", taken)
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"--out: {taken} exists and is not a directory"


def test_a_burstgpt_file_drives_a_run_and_a_bad_one_stops_it_before_any_output(tmp_path, bench_stress):
    trace = tmp_path / "burst.csv"
    header = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
    trace.write_text(header + "\n" + "".join(f"{t},ChatGPT,{100 + t},{t % 7},0,API log\n" for t in range(60)))
    out = tmp_path / "out"
    flags = ("--workload", f"burstgpt:{trace}", "--use-real-timestamps", "--num-requests", 120, "--gpus", 2)
    result = bench_stress(*flags, "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = rows(out / "stress_results.csv")
    assert row["num_requests"] == "120"
    trace.write_text(trace.read_text() + "61,ChatGPT,many,3,0,API log\n")
    result = bench_stress(*flags, "--out", tmp_path / "other")
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith(
        f"{trace}: line 62: column 'Request tokens': Input should be a valid"
    )
    assert not (tmp_path / "other").exists()


# Bands: a calibration with a noise model gives every suite test perturbed replicas (stress.replicas).


def noisy():
    """A noise model like a calibration's: log-normal AR(1) multipliers, phi 0.7, sigma 0.25."""
    return fit_noise(known_process(3, 5000))


def run_with_replicas(out, noise, replicas=4, **flags):
    config = parse_flags(out=out, max_requests=2000, max_gpus=4, rate=3.0, workers=1, **flags)
    test_config = config.test_config(ServiceModel())
    plan = ReplicaPlan(noise, replicas, config.seed)
    with open_executor(test_config, config.executor, 1, config.ray_address, plan) as run_many:
        return run_suite(config, test_config, run_many, lambda *_: None, replicas=plan), test_config


def test_suite_tests_get_bands_that_are_their_replicas(tmp_path):
    noise = noisy()
    report, test_config = run_with_replicas(tmp_path, noise)
    assert all(result.replicas == 4 for result in report.results)
    for result in report.results:
        for figure in ("sla_attainment", "ttft_p99_s", "e2e_p50_s", "throughput_rps"):
            p5, median, p95 = (getattr(result, f"{figure}_{key}") for key in ("p5", "median", "p95"))
            assert p5 <= median <= p95, (result.test_id, figure)
    for kind in ("bins", "continuous"):
        spread = [
            r for r in report.results if r.scheduler.startswith(kind) and r.e2e_p50_s_p5 < r.e2e_p50_s_p95
        ]
        assert spread, kind  # the multipliers reach every scheduler
    # one test's band worked out again straight from the loop and the replicas' multipliers
    test = next(r for r in report.results if r.step == "step2" and r.scheduler == "continuous")
    workload = cached_workload(test_config.workload(test.num_requests))
    config = SimConfig(test.n_gpus, test_config.batch_size, True, test_config.service)
    e2e = []
    for k in range(4):
        outcome = simulate(
            workload.arrival_s,
            workload.input_tokens,
            workload.output_tokens,
            config,
            scale=replica_scale(noise, k),
        )
        e2e.append(outcome_metrics(workload, outcome, test.n_gpus, test_config.d_sla)["e2e_p50_s"])
    assert band(e2e) == {"median": test.e2e_p50_s_median, "p5": test.e2e_p50_s_p5, "p95": test.e2e_p50_s_p95}
    assert not np.allclose(e2e, test.e2e_p50_s)
    # the CSV keeps every earlier column where it was, the bands after them
    with open(tmp_path / "stress_results.csv", newline="") as handle:
        header = tuple(next(csv.reader(handle)))
    assert header == COLUMNS and header[: len(COLUMNS_BEFORE_BANDS)] == COLUMNS_BEFORE_BANDS
    assert header[len(COLUMNS_BEFORE_BANDS)] == "replicas"
    step2_rows = rows(tmp_path / STEP_FILES["step2"])
    analysis = json.loads((tmp_path / "stress_analysis.json").read_text())
    meeting = [
        int(r["n_gpus"])
        for r in step2_rows
        if float(r["sla_attainment_p5"]) >= analysis["step2"]["sla_target"]
    ]
    assert analysis["step2"]["band"]["best_gpu_count_p5"] == (min(meeting) if meeting else None)
    assert analysis["replicas"] == {"count": 4, "seed": 0}
    assert analysis["step1"]["band"]["replicas"] == analysis["step3"]["band"]["replicas"] == 4


def test_flat_noise_gives_bands_of_zero_width_at_the_expectation(tmp_path):
    """Multipliers all exactly 1 (no spread, no level error): each replica is the expected run exactly."""
    flat = NoiseModel(0.0, 0.0, np.zeros(10), np.zeros(10))
    report, _ = run_with_replicas(tmp_path, flat, replicas=2, step1_only=True)
    for result in report.results:
        for figure in ("sla_attainment", "ttft_p99_s", "e2e_p50_s", "throughput_rps"):
            expected = getattr(result, figure)
            assert [getattr(result, f"{figure}_{key}") for key in ("p5", "median", "p95")] == [expected] * 3
    assert report.analysis["step1"]["band"]["best_by_median"] == report.analysis["step1"]["best_scheduler"]


def test_bands_enter_the_fingerprint_and_results_from_before_bands_still_resume(tmp_path):
    banded = tmp_path / "banded"
    run_with_replicas(banded, noisy(), replicas=2, step1_only=True)
    with pytest.raises(UserError, match="made with other settings"):
        run_api(banded, step1_only=True, resume=True)
    plain = tmp_path / "plain"
    first, _ = run_api(plain, step1_only=True)
    log = plain / INCREMENTAL
    older = [row[: len(COLUMNS_BEFORE_BANDS)] for row in csv.reader(log.read_text().splitlines())]
    log.write_text("".join(",".join(row) + "\n" for row in older))  # as written before the band columns
    assert tuple(older[0]) == COLUMNS_BEFORE_BANDS
    again, seen = run_api(plain, step1_only=True, resume=True)
    assert all(resumed for _, resumed in seen) and len(seen) == 10
    assert [r.model_dump(exclude=set(TIMING_FIELDS)) for r in again.results] == [
        r.model_dump(exclude=set(TIMING_FIELDS)) for r in first.results
    ]
    assert "replicas" not in again.analysis and "band" not in again.analysis["step1"]


def test_a_calibrated_suite_and_one_test_print_their_bands(tmp_path, bench_stress):
    """`--calibrate RUN` from an engine iteration log with noisy steps: the suite's tests get band columns
    and the conclusions say whether the choices hold; a --num-requests continuous test its replicas file."""
    run = tmp_path / "run"
    run.mkdir()
    synthetic_run(run, requests=60)
    records, _ = synthetic_log()
    rng = np.random.default_rng(1)
    for record in records:
        record["elapsed_ms"] *= float(np.exp(rng.normal(0.0, 0.2)))
    write_log(run, records)
    out = tmp_path / "out"
    result = bench_stress(
        *SMALL, "--calibrate", run, "--replicas", 2, "--step2-only", "--out", out, "--workers", 1
    )
    assert result.exit_code == 0, result.output
    assert {row["replicas"] for row in rows(out / STEP_FILES["step2"])} == {"2"}
    assert "GPU count meeting the SLA target (step 2, 2 replicas)" in result.output
    one = tmp_path / "one"
    flags = ("--num-requests", 300, "--scheduler", "continuous", "--gpus", 2, "--replicas", 3)
    result = bench_stress(*flags, "--calibrate", run, "--out", one, "--workers", 1)
    assert result.exit_code == 0, result.output
    bands = json.loads((one / "stress_replicas.json").read_text())
    assert bands["replicas"] == 3 and bands["bands"]["e2e_p50_s"]["p5"] <= bands["bands"]["e2e_p50_s"]["p95"]


def test_a_choice_is_contested_when_a_rivals_best_case_beats_its_worst_case():
    from flowperf.stress.band_choices import contenders

    def result(name, sla, ttft):
        """A test whose SLA attainment band is `sla` and p99 TTFT band `ttft` (p5, median, p95)."""
        fields = {
            f"sla_attainment_{key}": value for key, value in zip(("p5", "median", "p95"), sla, strict=True)
        }
        fields |= {
            f"ttft_p99_s_{key}": value for key, value in zip(("p5", "median", "p95"), ttft, strict=True)
        }
        return TestResult.model_construct(scheduler=name, replicas=10, **fields)

    chosen = result("a", (0.90, 0.95, 0.97), (1.0, 1.1, 1.2))
    below = result("b", (0.80, 0.85, 0.89), (0.5, 0.6, 0.7))  # worse SLA even at its best
    overlapping = result("c", (0.85, 0.88, 0.91), (2.0, 2.1, 2.2))  # its best SLA beats a's worst
    assert contenders([chosen, below], chosen, "scheduler")["contenders"] == []
    assert contenders([chosen, below, overlapping], chosen, "scheduler")["contenders"] == ["c"]
    # all at full attainment: the p99 TTFT bands decide
    full = (1.0, 1.0, 1.0)
    first, faster, slower = (
        result("a", full, (1.0, 1.1, 1.2)),
        result("b", full, (1.15, 1.3, 1.4)),
        result("c", full, (1.3, 1.4, 1.5)),
    )
    verdict = contenders([first, faster, slower], first, "scheduler")
    assert verdict["contenders"] == ["b"] and not verdict["clear"] and verdict["best_by_median"] == "a"
