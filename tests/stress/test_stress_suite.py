"""The suite end to end on small caps: outputs, determinism across workers, resume, step selection."""

from __future__ import annotations

import csv
import json

import pytest

from flowperf.errors import UserError
from flowperf.stress.config import parse_flags
from flowperf.stress.executors import open_executor
from flowperf.stress.results import INCREMENTAL, STEP_FILES
from flowperf.stress.service import ServiceModel
from flowperf.stress.spec import TIMING_FIELDS
from flowperf.stress.suite import planned_tests, run_suite

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
