"""What reading the server's /metrics every 250 ms costs the client: a c=64 run against the mock server
(in its own process) with scraping off, on, off, on, ... (interleaved pairs), side by side.

Prints per run the client's TTFT p99, the client process's CPU time (getrusage RUSAGE_SELF: its children
not included), the CPU the scraping took inside the client process (timing.log `server_metrics_cpu_ms`:
zero for HTTP servers, read by a process of their own) and the scraper process's own CPU time, start-up
included (`process_cpu_ms`) and from its first round to its last (`window_cpu_ms`), then: the p99 change
on vs off against the noise between the two off runs, and the CPU figures as shares of the client's CPU.

    PYTHONPATH=src python benchmarks/server_metrics_overhead.py [--flows 256] [--tokens 32] [--pairs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from flowperf.config import RunConfig  # noqa: E402
from flowperf.diagnostics.mockserver import MockConfig, spawn  # noqa: E402
from flowperf.run.benchmark import RunHooks, run_benchmark  # noqa: E402
from flowperf.run.timing import parse_timing_line  # noqa: E402


def one_run(url: str, out: Path, name: str, scrape: bool, flows: int, tokens: int) -> dict[str, float]:
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"), "fixtures_dir": str(ROOT / "fixtures"), "warmup": 0,
            "num_flows": flows, "concurrency": 64, "max_tokens": tokens,
            "monitor": {"sample_interval_s": 0, "server_metrics": scrape, "server_metrics_interval_s": 0.25},
            "output": {"out_dir": str(out), "run_id": name}, "engine": {"kind": "openai", "base_url": url},
        }
    )  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(run_benchmark(config, RunHooks(echo=lambda _: None, warn=lambda _: None)))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000.0
    lines = (result.run_dir / "timing.log").read_text().splitlines()
    scraper = [parse_timing_line(line) for line in lines if "server_metrics_cpu_ms" in line]
    scraper_ms = float(scraper[0]["server_metrics_cpu_ms"]) if scraper else 0.0
    process_ms = float(scraper[0].get("process_cpu_ms", 0.0)) if scraper else 0.0
    window_ms = float(scraper[0].get("window_cpu_ms", 0.0)) if scraper else 0.0
    return {
        "ttft_p99": result.summary.latency.ttft_ms.p99 or 0.0,
        "cpu_ms": cpu_ms,
        "scraper_ms": scraper_ms,
        "process_ms": process_ms,
        "window_ms": window_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flows", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=2, help="off/on pairs, interleaved")
    args = parser.parse_args()
    runs: dict[str, dict[str, float]] = {}
    with (
        spawn(MockConfig(ttft_ms=20, itl_ms=5, lifetime_s=3600)) as server,
        tempfile.TemporaryDirectory() as out,
    ):
        for pair in range(1, args.pairs + 1):
            for name, scrape in ((f"off{pair}", False), (f"on{pair}", True)):
                runs[name] = one_run(server.base_url, Path(out), name, scrape, args.flows, args.tokens)
                print(name, {key: round(value, 2) for key, value in runs[name].items()}, flush=True)
    report(runs)


def report(runs: dict[str, dict[str, float]]) -> None:
    """On minus off (means of the p99s); the noise is the spread of the off runs' p99s (max - min), so
    with two pairs exactly the difference between the two off runs."""
    off = [run["ttft_p99"] for name, run in runs.items() if name.startswith("off")]
    on = [run["ttft_p99"] for name, run in runs.items() if name.startswith("on")]
    change = sum(on) / len(on) - sum(off) / len(off)
    noise = max(off) - min(off)
    scraped = [run for name, run in runs.items() if name.startswith("on")]
    client = sum(run["cpu_ms"] for run in scraped)
    inside = sum(run["scraper_ms"] for run in scraped) / client
    process = sum(run["process_ms"] for run in scraped) / client
    window = sum(run["window_ms"] for run in scraped) / client
    print(f"TTFT p99 change on-off: {change:+.2f} ms; noise between the off runs: {noise:.2f} ms")
    print(f"medians: on {statistics.median(on):.2f} ms, off {statistics.median(off):.2f} ms")
    print(f"scraping CPU inside the client process: {inside * 100:.2f}% of the client's CPU")
    print(f"scraper process CPU (start-up included): {process * 100:.2f}% of the client's CPU")
    print(f"scraper process CPU in the window (first round to last): {window * 100:.2f}% of the client's CPU")


if __name__ == "__main__":
    main()
