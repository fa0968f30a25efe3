"""Benchmark: cached flow expansion at 25 / 1,000 / 100,000 flows, and engine start-up eager vs compiled.

    .venv/bin/python benchmarks/startup_and_expansion.py [--skip-engine] [--repeats 5]

Expansion runs in process on a private copy of flows/ and fixtures/ (the same code path `bench run`
uses): one fresh expansion, then `--repeats` cache hits, reported as median and min. Engine start-up runs
`bench run -n 1` in a new process per configuration (vLLM allows one engine per process) and reads its
`engine_init_ms` [TIMING] line: eager, compiled with an empty compile cache, compiled with that cache warm.
Targets (issue 2): cached expansion <= 20 ms for 25 flows and <= 1 s for 100,000 flows.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flowperf.flows.cache import expand_with_cache
from flowperf.run.timing import parse_timing_line

ROOT = Path(__file__).resolve().parents[1]
FLOW = "summarize_critique_refine"
SIZES = (25, 1_000, 100_000)
TARGETS_MS = {25: 20.0, 100_000: 1000.0}

console = Console()


def time_expansion(template: Path, num_flows: int, repeats: int) -> dict[str, float]:
    def once(force: bool) -> tuple[float, str]:
        started = time.perf_counter()
        result = expand_with_cache(template, num_flows, force=force, warn=console.print)
        return (time.perf_counter() - started) * 1000.0, result.source

    fresh_ms, source = once(force=True)
    assert source == "generated"
    cached = []
    for _ in range(repeats):
        elapsed, source = once(force=False)
        assert source == "cache"
        cached.append(elapsed)
    return {"fresh_ms": fresh_ms, "cached_median_ms": statistics.median(cached), "cached_min_ms": min(cached)}


def engine_init_ms(extra_args: list[str], env: dict[str, str], workdir: Path) -> float:
    command = [
        sys.executable, "-c", "from flowperf.cli.main import main; main()",
        "run", "-n", "1", "--max-tokens", "4",
        "--no-progress", "--out", str(workdir / "runs"), *extra_args,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench run {' '.join(extra_args)} failed:\n{done.stderr[-2000:]}")
    for line in done.stdout.splitlines():
        if line.startswith("[TIMING] engine_init_ms="):
            return float(parse_timing_line(line)["engine_init_ms"])
    raise RuntimeError("no engine_init_ms line in the output")


def main(
    repeats: Annotated[int, typer.Option(help="Cache hits timed per size.")] = 5,
    skip_engine: Annotated[bool, typer.Option(help="Only time expansion.")] = False,
) -> None:
    with tempfile.TemporaryDirectory(prefix="flowperf-bench-") as scratch:
        workdir = Path(scratch)
        shutil.copytree(ROOT / "flows", workdir / "flows", ignore=shutil.ignore_patterns(".expanded*"))
        shutil.copytree(ROOT / "fixtures", workdir / "fixtures")
        template = workdir / "flows" / f"{FLOW}.yaml"

        table = Table(title=f"flow expansion ({FLOW})")
        for column in ("flows", "fresh ms", "cached median ms", "cached min ms", "target", "met"):
            table.add_column(column, justify="right")
        for size in SIZES:
            figures = time_expansion(template, size, repeats)
            target = TARGETS_MS.get(size)
            met = "-" if target is None else ("yes" if figures["cached_median_ms"] <= target else "NO")
            table.add_row(
                f"{size:,}",
                f"{figures['fresh_ms']:.1f}",
                f"{figures['cached_median_ms']:.1f}",
                f"{figures['cached_min_ms']:.1f}",
                "-" if target is None else f"<= {target:.0f} ms",
                met,
            )
        console.print(table)

        if skip_engine:
            return
        compile_cache = workdir / "vllm-cache"
        runs = [
            ("eager (default on CPU)", ["--eager"], {}),
            ("compiled, cold compile cache", ["--compiled"], {"VLLM_CACHE_ROOT": str(compile_cache)}),
            ("compiled, warm compile cache", ["--compiled"], {"VLLM_CACHE_ROOT": str(compile_cache)}),
        ]
        engine_table = Table(title="engine start-up (engine_init_ms, tiny model, fresh process each)")
        engine_table.add_column("configuration")
        engine_table.add_column("engine_init_ms", justify="right")
        for label, args, env in runs:
            console.print(f"starting engine: {label} ...")
            engine_table.add_row(label, f"{engine_init_ms(args, env, workdir):.0f}")
        console.print(engine_table)


if __name__ == "__main__":
    typer.run(main)
