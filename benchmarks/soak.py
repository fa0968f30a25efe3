"""Soak: 1,000 workflows on the default model; does the harness's memory grow?

    .venv/bin/python benchmarks/soak.py [--workflows 1000] [--concurrency 8]

Runs `bench run` (the real CLI, in-process engine, resource monitor on) and reads the run's metrics.jsonl:
harness RSS per 100 completed workflows, and the least-squares growth over the run after the first 100
(warm-up: allocators, caches and the first batches settle there). Target (issue 3): under 20 MB per
1,000 workflows. Concurrency only shortens the wall time; every workflow still runs all its steps.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from flowperf.rundir.records import ResourceSample
from flowperf.rundir.store import RunStore
from flowperf.rundir.summary_schema import RunSummary

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_WORKFLOW = 3
TARGET_MB_PER_1000 = 20.0

console = Console()


def main(
    workflows: Annotated[int, typer.Option(help="Workflows in the soak run.")] = 1000,
    concurrency: Annotated[int, typer.Option(help="Workflows in flight.")] = 8,
) -> None:
    with tempfile.TemporaryDirectory(prefix="flowperf-soak-") as scratch:
        command = [
            sys.executable, "-c", "from flowperf.cli.main import main; main()", "run", "-n", str(workflows),
            "--concurrency", str(concurrency), "--out", scratch, "--run-id", "soak", "--no-progress",
        ]  # fmt: skip
        console.print("running: bench " + " ".join(command[3:]))
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        run_dir = Path(scratch) / "soak"
        records = RunStore(run_dir).read_metrics()
        summary = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    samples = [r for r in records if isinstance(r, ResourceSample) and r.steps_done > 0]
    done_workflows = np.array([s.steps_done / STEPS_PER_WORKFLOW for s in samples])
    harness = np.array([s.rss_mb for s in samples])
    engine = np.array([s.children_rss_mb for s in samples], dtype=float)  # None (no engine) is NaN

    table = Table(title=f"soak: {workflows} workflows, concurrency {concurrency}")
    for column in ("workflows done", "harness RSS MB", "engine processes RSS MB"):
        table.add_column(column, justify="right")
    for start in range(0, workflows, 100):
        bucket = (done_workflows >= start) & (done_workflows < start + 100)
        if bucket.any():
            table.add_row(
                f"{start}-{start + 99}",
                f"{np.median(harness[bucket]):.1f}",
                f"{np.median(engine[bucket]):.1f}",
            )
    console.print(table)
    settled = done_workflows >= 100
    slope_harness = np.polyfit(done_workflows[settled], harness[settled], 1)[0] * 1000
    slope_engine = np.polyfit(done_workflows[settled], engine[settled], 1)[0] * 1000
    verdict = "met" if slope_harness < TARGET_MB_PER_1000 else "NOT met"
    console.print(
        f"harness RSS growth after warm-up: {slope_harness:+.2f} MB per 1,000 workflows "
        f"(target < {TARGET_MB_PER_1000:.0f}: {verdict}); engine processes: {slope_engine:+.2f} MB per 1,000"
    )
    console.print(
        f"wall: measured window {summary.timing.measured_window_ms / 1000:.0f} s, "
        f"{summary.counts.workflows_ok} ok, {summary.counts.workflows_failed} failed; "
        f"summary's own fit: {summary.resources.rss_growth_mb_per_100_steps} MB per 100 steps"
    )


if __name__ == "__main__":
    typer.run(main)
