"""Benchmark: what resampling whole workflows costs `bench compare`, and what it buys.

    .venv/bin/python benchmarks/compare_bootstrap.py [--trials 200]

Time: one metric's bootstrap (2,000 resamples of base and new) for runs of 20 to 10,000 workflows of three
steps, resampling workflows (block bootstrap, what `bench compare` does) vs resampling steps one by one (what
it did), side by side in one process. Calibration: two runs of one workload whose steps are correlated within
a workflow (most variance between workflows, as on a shared machine): the share of comparisons that call a
change at alpha 0.05, which should be about 0.05.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from flowperf.outputs.compare import Samples, bootstrap_differences, bootstrap_p_value

console = Console()


def correlated_run(rng: np.random.Generator, workflows: int, steps: int = 3) -> Samples:
    levels = rng.lognormal(np.log(100.0), 0.5, workflows)
    values = np.repeat(levels, steps) * rng.lognormal(0.0, 0.05, workflows * steps)
    return Samples(values, np.repeat(np.arange(workflows), steps))


def seconds(base: Samples | np.ndarray, new: Samples | np.ndarray) -> float:
    started = time.perf_counter()
    bootstrap_differences(base, new, seed=0)
    return time.perf_counter() - started


def main(
    trials: Annotated[int, typer.Option(help="null comparisons for the false-alarm rate")] = 200,
) -> None:
    timing = Table(title="one metric, 2,000 resamples (s)", title_justify="left")
    for column in ("workflows", "steps", "by workflow", "by step", "ratio"):
        timing.add_column(column, justify="right")
    for workflows in (20, 100, 1_000, 10_000):
        rng = np.random.default_rng(workflows)
        base, new = correlated_run(rng, workflows), correlated_run(rng, workflows)
        block, steps = seconds(base, new), seconds(base.values, new.values)
        timing.add_row(
            str(workflows), str(3 * workflows), f"{block:.3f}", f"{steps:.3f}", f"{block / steps:.2f}"
        )
    console.print(timing)
    alarms = {"by workflow": 0, "by step": 0}
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        base, new = correlated_run(rng, 30), correlated_run(rng, 30)
        alarms["by workflow"] += bootstrap_p_value(bootstrap_differences(base, new, seed=trial)) <= 0.05
        alarms["by step"] += (
            bootstrap_p_value(bootstrap_differences(base.values, new.values, seed=trial)) <= 0.05
        )
    console.print(
        f"false alarms at alpha 0.05 over {trials} null comparisons (30 workflows x 3 steps): "
        + ", ".join(f"{name} {count / trials:.3f}" for name, count in alarms.items())
    )


if __name__ == "__main__":
    typer.run(main)
