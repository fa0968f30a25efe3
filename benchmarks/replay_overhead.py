"""Benchmark: `bench replay`'s own overhead per request at the trace's peak rate (issue 12).

    .venv/bin/python benchmarks/replay_overhead.py [--requests 200] [--token-scale 0.02] [--window-s 60]

Finds the busiest `--window-s` of the shipped Mooncake trace, replays `--requests` requests from its start
on the in-process engine at the trace's own pace (`--time-scale 1`), and reports, per request, against the
engine's own timestamps:
- schedule lateness: scheduled arrival to submission (`start_delay_ms`, harness clock): how late the
  harness sends a request it should have sent on time;
- TTFT beyond the engine: `ttft_ms - engine_ttft_ms` (two durations, each on its own clock): the time to
  first token the engine does not see (tokenising the token-id prompt is skipped, so: submission, the
  engine's input and output processing in this process, the stream reaching the harness).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def busiest_window_start(window_s: float) -> tuple[float, float]:
    """Where the trace's busiest window starts (s) and its rate (requests/s)."""
    from flowperf.stress.traces import load_trace

    arrivals = load_trace("mooncake").arrival_s
    ends = np.searchsorted(arrivals, arrivals + window_s)
    counts = ends - np.arange(arrivals.size)
    best = int(np.argmax(counts))
    return float(arrivals[best]), float(counts[best] / window_s)


async def replay(start_s: float, requests: int, token_scale: float, out_dir: Path):
    from flowperf.config import RunConfig
    from flowperf.run.benchmark import RunHooks, run_benchmark

    config = RunConfig.model_validate(
        {
            "fixtures_dir": str(ROOT / "fixtures"),
            "trace": {
                "source": "mooncake",
                "token_scale": token_scale,
                "start_s": start_s,
                "max_requests": requests,
            },
            "output": {"out_dir": str(out_dir), "run_id": "peak"},
        }
    )
    return await run_benchmark(config, RunHooks(echo=lambda _: None))


def main(
    requests: Annotated[int, typer.Option(help="Requests to replay from the busiest window.")] = 200,
    token_scale: Annotated[float, typer.Option(help="Length scale (2-core machine).")] = 0.02,
    window_s: Annotated[float, typer.Option(help="Window the peak rate is measured over.")] = 60.0,
) -> None:
    from flowperf.rundir.rundata import load_run

    start_s, peak_rate = busiest_window_start(window_s)
    with tempfile.TemporaryDirectory(prefix="flowperf-replay-") as scratch:
        os.environ["FLOWPERF_HOME"] = str(Path(scratch) / "home")
        result = asyncio.run(replay(start_s, requests, token_scale, Path(scratch) / "runs"))
        run = load_run(result.run_dir)
    steps, workflows = run.steps, run.workflows
    ok = steps[steps["status"] == "ok"]
    lateness = (workflows["start_offset_ms"] - workflows["arrival_offset_ms"]).to_numpy()
    beyond = (ok["ttft_ms"] - ok["engine_ttft_ms"]).dropna().to_numpy()
    table = Table(
        title=f"Mooncake, busiest {window_s:g} s from {start_s:.1f} s ({peak_rate:.2f} requests/s), "
        f"{len(ok)} of {len(steps)} requests ok, --token-scale {token_scale:g}"
    )
    for column in ("per request (ms)", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="right")
    for label, values in (
        ("schedule lateness", lateness),
        ("TTFT beyond the engine", beyond),
        ("engine queue", ok["engine_queue_ms"].dropna().to_numpy()),
        ("TTFT (harness)", ok["ttft_ms"].to_numpy()),
    ):
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        table.add_row(label, f"{p50:.2f}", f"{p95:.2f}", f"{p99:.2f}", f"{values.max():.2f}")
    console.print(table)
    console.print(
        f"achieved {result.summary.throughput.workflows_per_s:.2f} requests/s, "
        f"prefix-cache hit {ok['cached_prompt_tokens'].sum() / ok['prompt_tokens'].sum():.3f}"
    )


if __name__ == "__main__":
    typer.run(main)
