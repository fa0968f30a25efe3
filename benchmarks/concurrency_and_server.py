"""Benchmark: concurrency, persistent-server reuse, and the cost of HTTP, on the default model.

    .venv/bin/python benchmarks/concurrency_and_server.py [--num-flows 25] [--rounds 2]

In one process, with a private FLOWPERF_HOME (so the first server start is cold):
1. the in-process engine, --concurrency 1 vs --concurrency N, interleaved over `--rounds`;
2. `--engine server`: the first run starts the persistent server, later runs reuse it; engine_init_ms of
   the first vs the second run;
3. the same flows over HTTP (the server) at concurrency 1 and N, against the in-process figures: the HTTP
   overhead per step (mean step time and TTFT difference).
Targets (issue 5): concurrency N=25 at least 5x faster than 1; a reused server's engine_init_ms at most 1%
of the cold start. The server is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from flowperf.rundir.summary_schema import RunSummary

ROOT = Path(__file__).resolve().parents[1]
console = Console()


async def measure(num_flows: int, rounds: int, out_dir: Path) -> dict[str, list[RunSummary]]:
    from flowperf.config import EngineConfig, RunConfig
    from flowperf.engines.server import ServerRegistry
    from flowperf.engines.tiny import build_tiny_model
    from flowperf.engines.vllm_local import get_vllm_engine
    from flowperf.run.benchmark import RunHooks, run_benchmark

    results: dict[str, list[RunSummary]] = {}
    lines: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    local = get_vllm_engine(EngineConfig(), build_tiny_model(ROOT / "fixtures").path, out_dir / "engine.log")

    async def one(label: str, kind: str, concurrency: int) -> None:
        config = RunConfig.model_validate(
            {
                "flows_dir": str(ROOT / "flows"),
                "fixtures_dir": str(ROOT / "fixtures"),
                "num_flows": num_flows,
                "concurrency": concurrency,
                "engine": {"kind": kind},
                "output": {
                    "out_dir": str(out_dir),
                    "run_id": f"{kind}-c{concurrency}-{len(results.get(label, []))}",
                },
            }
        )
        lines.clear()
        engine = local if kind == "vllm" else None
        result = await run_benchmark(
            config, RunHooks(echo=lines.append), engine=engine, shutdown_engine=False
        )
        summary = result.summary
        results.setdefault(label, []).append(summary)
        timing, counts = summary.timing, summary.counts
        console.print(
            f"{label}: window {timing.measured_window_ms:.0f} ms, "
            f"engine_init {timing.engine_init_ms:.1f} ms, failed {counts.workflows_failed}"
        )

    try:
        for _ in range(rounds):
            await one("in-process c=1", "vllm", 1)
            await one(f"in-process c={num_flows}", "vllm", num_flows)
    finally:
        # gone before the HTTP rounds: an idle engine's processes would share the 2 cores with the server
        await local.shutdown()
    try:
        for _ in range(rounds):
            await one("server c=1", "server", 1)
            await one(f"server c={num_flows}", "server", num_flows)
    finally:
        ServerRegistry().stop(None, everything=True)
    return results


def median_of(summaries: list[RunSummary], figure: Callable[[RunSummary], float | None]) -> float:
    """The median of `figure` over the summaries; a summary without the figure is an error, not a zero."""
    values = [figure(summary) for summary in summaries]
    if any(value is None for value in values):
        raise ValueError("a run's summary lacks the figure (did every workflow fail?)")
    return statistics.median(values)


def window_ms(summary: RunSummary) -> float:
    return summary.timing.measured_window_ms


def workflows_per_s(summary: RunSummary) -> float | None:
    return summary.throughput.workflows_per_s


def step_ms_mean(summary: RunSummary) -> float | None:
    return summary.latency.step_ms.mean


def ttft_ms_mean(summary: RunSummary) -> float | None:
    return summary.latency.ttft_ms.mean


def main(
    num_flows: Annotated[int, typer.Option(help="Workflows per run (and the concurrent level).")] = 25,
    rounds: Annotated[int, typer.Option(help="Rounds per configuration.")] = 2,
) -> None:
    with tempfile.TemporaryDirectory(prefix="flowperf-conc-") as scratch:
        os.environ["FLOWPERF_HOME"] = str(Path(scratch) / "home")
        results = asyncio.run(measure(num_flows, rounds, Path(scratch) / "runs"))
    high = f"c={num_flows}"

    table = Table(title=f"{num_flows} workflows x 3 steps x 64 tokens, default model (medians of {rounds})")
    for column in ("engine, concurrency", "window ms", "workflows/s", "step ms mean", "ttft ms mean"):
        table.add_column(column, justify="right")
    for label, summaries in results.items():
        table.add_row(
            label,
            f"{median_of(summaries, window_ms):.0f}",
            f"{median_of(summaries, workflows_per_s):.2f}",
            f"{median_of(summaries, step_ms_mean):.1f}",
            f"{median_of(summaries, ttft_ms_mean):.1f}",
        )
    console.print(table)

    for engine in ("in-process", "server"):
        one = median_of(results[f"{engine} c=1"], window_ms)
        many = median_of(results[f"{engine} {high}"], window_ms)
        console.print(f"{engine}: {high} is {one / many:.1f}x faster than c=1 (target >= 5x)")
    cold = results["server c=1"][0].timing.engine_init_ms
    warm = results[f"server {high}"][0].timing.engine_init_ms
    console.print(
        f"server: cold engine_init_ms {cold:.0f}, reused {warm:.1f} = {warm / cold * 100:.2f}% (target <= 1%)"
    )
    for level in ("c=1", high):
        step = median_of(results[f"server {level}"], step_ms_mean) - median_of(
            results[f"in-process {level}"], step_ms_mean
        )
        ttft = median_of(results[f"server {level}"], ttft_ms_mean) - median_of(
            results[f"in-process {level}"], ttft_ms_mean
        )
        console.print(f"HTTP overhead per step at {level}: step {step:+.1f} ms, TTFT {ttft:+.1f} ms")


if __name__ == "__main__":
    typer.run(main)
