"""Benchmark: do periodic summaries disturb token timing? p99 inter-token gap with summary.json rewritten
every second (in a worker process, and the old way in a thread of the measuring process) vs never.

    flock /tmp/flowperf-heavy.lock .venv/bin/python benchmarks/summary_interference.py \
        [--num-flows 700] [--rounds 2] [--max-tokens 16] [--concurrency 8]

One process, one in-process vLLM engine on the tiny model, the same flows for every run; the three
settings are interleaved round by round (off, thread, worker, off, ...) so that drift in this noisy
machine hits them alike. "thread" re-creates the implementation this one replaced (the whole run
directory re-read and parsed with `build_summary` in a thread of the measuring process) as the baseline.
Besides the A/B figures, the CPU time the thread spent on summaries is measured directly (`thread_time`):
the time it held the GIL at most, which token timestamps could have waited behind.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import flowperf.run.benchmark
from flowperf.config import RunConfig
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.live_summary import PeriodicSummaries
from flowperf.rundir.store import SUMMARY, RunStore
from flowperf.rundir.summary import SummaryContext, build_summary

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("off", "thread (old)", "worker (new)")
console = Console(width=200)


class ThreadSummaries:
    """The replaced implementation, for comparison only: summary.json from the files in a thread."""

    cpu_s = 0.0
    written = 0

    def __init__(
        self, store: RunStore, every: int, interval_s: float, context: SummaryContext, **_: Any
    ) -> None:
        self._store, self._every, self._interval_s, self._context = store, every, interval_s, context
        self._done = 0
        self._last = time.perf_counter()
        self._task: asyncio.Future[None] | None = None

    def workflow_done(self) -> None:
        self._done += 1
        now = time.perf_counter()
        if self._done % self._every or now - self._last < self._interval_s:
            return
        if self._task is not None and not self._task.done():
            return
        self._last = now
        self._task = asyncio.ensure_future(asyncio.to_thread(self._write))

    def _write(self) -> None:
        started = time.thread_time()
        summary = build_summary(self._store, "running", self._context)
        self._store.write_json(SUMMARY, summary.to_json())
        ThreadSummaries.cpu_s += time.thread_time() - started
        ThreadSummaries.written += 1

    async def finish(self) -> None:
        if self._task is not None:
            await self._task


class CountedWorkerSummaries(PeriodicSummaries):
    """The worker-process implementation, counting the summaries it asked for."""

    requested = 0

    def workflow_done(self) -> None:
        before = self._last
        super().workflow_done()
        CountedWorkerSummaries.requested += self._last != before


IMPLEMENTATION = {
    "off": PeriodicSummaries,
    "thread (old)": ThreadSummaries,
    "worker (new)": CountedWorkerSummaries,
}


def run_config(
    setting: str, num_flows: int, max_tokens: int, concurrency: int, out_dir: Path, run_id: str
) -> RunConfig:
    every = 10**7 if setting == "off" else 1
    return RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "num_flows": num_flows,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "output": {
                "out_dir": str(out_dir),
                "run_id": run_id,
                "summary_every": every,
                "summary_interval_s": 1.0,
            },
        }
    )


async def measure(
    num_flows: int, rounds: int, max_tokens: int, concurrency: int, out_dir: Path
) -> dict[str, list[dict[str, float]]]:
    from flowperf.config import EngineConfig
    from flowperf.engines.tiny import build_tiny_model
    from flowperf.engines.vllm_local import get_vllm_engine

    results: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    engine = get_vllm_engine(EngineConfig(), build_tiny_model(ROOT / "fixtures").path, out_dir / "engine.log")
    warm = run_config("off", 40, max_tokens, concurrency, out_dir, "warm-up")  # first run's costs, unmeasured
    await run_benchmark(warm, RunHooks(echo=lambda _: None), engine=engine, shutdown_engine=False)
    for round_number in range(rounds):
        for index, setting in enumerate(SETTINGS):
            flowperf.run.benchmark.PeriodicSummaries = IMPLEMENTATION[setting]
            ThreadSummaries.cpu_s, ThreadSummaries.written, CountedWorkerSummaries.requested = 0.0, 0, 0
            config = run_config(
                setting, num_flows, max_tokens, concurrency, out_dir, f"r{round_number}-{index}"
            )
            summary = (
                await run_benchmark(
                    config, RunHooks(echo=lambda _: None), engine=engine, shutdown_engine=False
                )
            ).summary
            figures = {
                "itl_p99": summary.latency.itl_ms.p99,
                "itl_p50": summary.latency.itl_ms.p50,
                "ttft_p99": summary.latency.ttft_ms.p99,
                "steps": summary.counts.steps_ok,
                "window_s": summary.timing.measured_window_ms / 1000.0,
                "summaries": ThreadSummaries.written + CountedWorkerSummaries.requested,
                "thread_cpu_ms": ThreadSummaries.cpu_s * 1000.0,
            }
            results[setting].append(figures)
            console.print(
                f"round {round_number + 1}/{rounds} {setting}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
            )
    await engine.shutdown()
    return results


def report(results: dict[str, list[dict[str, float]]], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "summaries",
        "steps/run",
        "ITL p99 ms (each run)",
        "median",
        "vs off",
        "ITL p50 ms",
        "TTFT p99 ms",
        "summaries/run",
        "in-thread CPU ms/run",
    ):
        table.add_column(column, justify="right")
    baseline = statistics.median(r["itl_p99"] for r in results["off"])
    for setting, runs in results.items():
        median = statistics.median(r["itl_p99"] for r in runs)
        table.add_row(
            setting,
            f"{statistics.median(r['steps'] for r in runs):.0f}",
            ", ".join(f"{r['itl_p99']:.2f}" for r in runs),
            f"{median:.2f}",
            "-"
            if setting == "off"
            else f"{median - baseline:+.2f} ms ({(median / baseline - 1) * 100:+.1f}%)",
            f"{statistics.median(r['itl_p50'] for r in runs):.2f}",
            f"{statistics.median(r['ttft_p99'] for r in runs):.1f}",
            f"{statistics.median(r['summaries'] for r in runs):.0f}",
            f"{statistics.median(r['thread_cpu_ms'] for r in runs):.0f}",
        )
    return table


def main(
    num_flows: Annotated[int, typer.Option(help="Workflows per run (3 steps each).")] = 700,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds of the three settings.")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per step.")] = 16,
    concurrency: Annotated[int, typer.Option(help="Workflows in flight.")] = 8,
) -> None:
    with tempfile.TemporaryDirectory(prefix="flowperf-summary-interference-") as scratch:
        results = asyncio.run(measure(num_flows, rounds, max_tokens, concurrency, Path(scratch)))
    title = (
        f"summary interference ({num_flows} workflows x 3 steps x {max_tokens} tokens, "
        f"concurrency {concurrency}, {rounds} rounds, summaries every 1 s)"
    )
    console.print(report(results, title))
    for setting, runs in results.items():
        for r in runs:
            console.print(f"{setting}: " + ", ".join(f"{k}={v:.3f}" for k, v in r.items()))


if __name__ == "__main__":
    typer.run(main)
