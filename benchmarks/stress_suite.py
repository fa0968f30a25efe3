"""Benchmark the full `bench stress` suite (39 tests at the default caps): wall time with N workers.

Runs the `bench stress` command itself (progress bar, summary table, every output file) into a temporary
directory, then prints the wall time and where it went. The issue's target is 120 s on 2 cores; the
original suite took about 24 minutes.

Run: python benchmarks/stress_suite.py [--workers 2] [--cold] [-- extra bench stress flags]
(--cold starts from an empty numba cache, so the one-off compilation is included.)
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = [sys.executable, "-c", "from flowperf.cli.main import main; main()"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="start from an empty numba cache")
    parser.add_argument("extra", nargs="*", help="more bench stress flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out"
        env = os.environ | ({"NUMBA_CACHE_DIR": str(Path(scratch) / "numba")} if args.cold else {})
        flags = ["--workers", str(args.workers), "--out", str(out), *args.extra]
        began = time.perf_counter()
        subprocess.run([*BENCH, "stress", *flags], env=env, check=True)
        wall = time.perf_counter() - began
        with open(out / "stress_results.csv", newline="") as handle:
            results = list(csv.DictReader(handle))
    print(f"\nbench stress {' '.join(flags[:2] + args.extra)}{' (cold numba cache)' if args.cold else ''}")
    print(f"{len(results)} tests, wall {wall:.1f} s (process start to exit, {os.cpu_count()} cores)")
    print("| step | tests | sum of test wall s | slowest test | its wall s |")
    print("| --- | --- | --- | --- | --- |")
    for step in ("step1", "step2", "step3"):
        rows = [row for row in results if row["step"] == step]
        if rows:
            slowest = max(rows, key=lambda row: float(row["wall_s"]))
            total = sum(float(row["wall_s"]) for row in rows)
            slowest_s = float(slowest["wall_s"])
            print(f"| {step} | {len(rows)} | {total:.1f} | {slowest['test_id']} | {slowest_s:.2f} |")


if __name__ == "__main__":
    main()
