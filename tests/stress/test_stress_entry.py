"""`bench stress` through the real `bench` entry point: a small suite runs, and mistakes are one line."""

from __future__ import annotations

import csv
from pathlib import Path

from helpers import run_bench


def test_bench_stress_runs_one_test_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_bench(
        "stress", "--num-requests", "600", "--scheduler", "bins-2", "--gpus", "2", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "stress_results.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["scheduler"] == "bins-2" and float(row["sla_attainment"]) <= 1.0


def test_bench_stress_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for flags, flag in (
        (["--rate", "-3"], "--rate"),
        (["--workload", str(tmp_path / "absent.csv")], "absent.csv"),
    ):
        done = run_bench("stress", *flags, "--out", str(tmp_path / "out"))
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and flag in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
