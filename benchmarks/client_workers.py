"""Benchmark: load from one client process, two worker processes, and two Ray actors (issue 14).

    .venv/bin/python benchmarks/client_workers.py [--levels 16,64,128,256,512] [--rounds 2]

The deterministic mock server (its own process; time to first token 50 ms, 10 ms per token, 32 tokens)
serves `bench run` of the default three-step flow, closed loop at each concurrency, with `--workers 1`,
`--workers 2`, and `--executor ray --workers 2` (a local Ray cluster with two actors), one after the other
in the same run. Per level: output tokens/s over the measured window, and the client's timing error
against the server's own timestamps, request by request (TTFT error: client TTFT minus the server's
arrival-to-first-write; gap error: |client gap - server gap|; p50/p99, ms), with the server's own lateness
(p99 of token writes behind schedule) beside it: where the server is late, the machine is saturated, not
just the client. A setup sustains a level when every request succeeded and both p50 errors are within
5 ms (the rule `bench doctor` uses for its client ceiling).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from flowperf.cli.options import positive_whole_numbers
from flowperf.config import RunConfig
from flowperf.diagnostics.ceiling import (
    ERROR_LIMIT_MS,
    MAX_TOKENS,
    ClientTiming,
    TimingErrors,
    server_logs,
    timing_errors,
)
from flowperf.diagnostics.mockserver import MockConfig, spawn
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.store import RunStore
from perf_section import write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("/tmp/perf_sections/client_workers.md")
SETUPS = {
    "1 process": {"workers": 1},
    "2 worker processes": {"workers": 2},
    "Ray, 2 local actors": {"workers": 2, "executor": "ray"},
}


@dataclass(frozen=True)
class Level:
    setup: str
    concurrency: int
    requests: int
    failed: int
    tokens_per_s: float
    errors: TimingErrors

    @property
    def sustained(self) -> bool:
        return self.failed == 0 and max(self.errors.ttft_p50_ms, self.errors.itl_p50_ms) <= ERROR_LIMIT_MS


def measure(base_url: str, out: Path, setup: str, concurrency: int, rounds: int) -> Level:
    run_id = f"{setup.split(',')[0].replace(' ', '-')}-{concurrency}"
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "num_flows": concurrency * rounds,
            "concurrency": concurrency,
            "max_tokens": MAX_TOKENS,
            "warmup": 0,
            "monitor": {"sample_interval_s": 0},
            "output": {"out_dir": str(out), "run_id": run_id},
            "engine": {"kind": "openai", "base_url": base_url, "model": "mock"},
            "client": SETUPS[setup],
        }
    )
    result = asyncio.run(run_benchmark(config, RunHooks(echo=lambda _: None, warn=lambda _: None)))
    steps = [step for step in RunStore(result.run_dir).read_steps() if step.status == "ok"]
    measured = {
        f"{run_id}-{step.flow_id}-{step.node}": ClientTiming(step.ttft_ms or 0.0, list(step.itl_ms or []))
        for step in steps
    }
    summary = result.summary
    window_s = summary.timing.measured_window_ms / 1000.0
    return Level(
        setup=setup,
        concurrency=concurrency,
        requests=summary.counts.steps_done,
        failed=summary.counts.steps_done - summary.counts.steps_ok,
        tokens_per_s=sum(step.output_tokens or 0 for step in steps) / window_s,
        errors=timing_errors(measured, server_logs(base_url)),
    )


def table(levels: list[Level]) -> list[str]:
    lines = [
        "| setup | concurrency | requests | output tokens/s | TTFT err p50 / p99 ms | gap err p50 / p99 ms "
        "| server lag p99 ms | within 5 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for level in levels:
        errors, within = level.errors, "yes" if level.sustained else "no"
        lines.append(
            f"| {level.setup} | {level.concurrency} | {level.requests} | {level.tokens_per_s:,.0f} "
            f"| {errors.ttft_p50_ms:.2f} / {errors.ttft_p99_ms:.2f} | {errors.itl_p50_ms:.2f} / "
            f"{errors.itl_p99_ms:.2f} | {errors.server_lag_p99_ms:.2f} | {within} |"
        )
    return lines


def sustained(levels: list[Level], setup: str) -> int | None:
    """The highest level before the first one past the limit."""
    best = None
    for level in sorted(
        (level for level in levels if level.setup == setup), key=lambda level: level.concurrency
    ):
        if not level.sustained:
            break
        best = level.concurrency
    return best


def main(
    levels: Annotated[str, typer.Option(help="Concurrency levels, comma-separated.")] = "16,64,128,256,512",
    rounds: Annotated[int, typer.Option(help="Workflows (3 requests each) per session slot.")] = 2,
    out: Annotated[Path, typer.Option(help="Where the run directories go.")] = Path("/tmp/client-workers"),
) -> None:
    started = time.perf_counter()
    results: list[Level] = []
    with spawn(MockConfig(ttft_ms=50.0, itl_ms=10.0, lifetime_s=3600)) as server:
        for concurrency in positive_whole_numbers(levels):
            for setup in SETUPS:  # the setups side by side at each level, so drift hits them alike
                results.append(measure(server.base_url, out, setup, concurrency, rounds))
                print(table(results[-1:])[-1], flush=True)
    summary: dict[str, Any] = {setup: sustained(results, setup) for setup in SETUPS}
    lines = [
        f"Mock server: TTFT 50 ms, 10 ms/token, {MAX_TOKENS} tokens per request; `bench run` of the default "
        f"3-step flow, closed loop, {rounds} workflows per session slot; errors against the server's own "
        "timestamps.",
        "",
        *table(results),
        "",
        "Highest concurrency sustained with p50 TTFT and gap errors within 5 ms: "
        + ", ".join(f"{setup}: {value if value is not None else 'none'}" for setup, value in summary.items())
        + ".",
        f"Total benchmark time {time.perf_counter() - started:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs.",
    ]
    print("\n".join(lines))
    write_section(OUT, "Client workers", lines)


if __name__ == "__main__":
    typer.run(main)
