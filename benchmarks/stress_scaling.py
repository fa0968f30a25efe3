"""Benchmark one `bench stress` test: the 1M-request, 100-GPU target and how cost grows with size.

Prints three tables:
1. the 1M x 100 GPU test per scheduler, end to end (workload build, simulation, metrics), warm;
2. the same from a fresh process with an empty numba cache, so compilation is counted honestly;
3. simulation time and events per second over requests x GPUs, with the arrival rate scaled with the
   GPU count (--rate-per-gpu) so every cluster is equally loaded.
`vllm` is the engine model (vLLM V1's scheduler per GPU, defaults of `bench stress`: 8192 batched tokens,
400,000 KV tokens); its events are its iterations plus its arrivals, every iteration being stepped.

Run: python benchmarks/stress_scaling.py [--rate-per-gpu 1.5] [--interpreted]
(--interpreted adds a row with numba's JIT disabled, the baseline that motivated compiling the loops).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from flowperf.stress.config import parse_flags
from flowperf.stress.executors import run_test, warm_up
from flowperf.stress.service import ServiceModel
from flowperf.stress.spec import Scheduler, TestSpec
from flowperf.stress.workload import cached_workload

SCHEDULERS = ("bins-1", "bins-4", "continuous", "vllm")
REQUESTS = (10_000, 100_000, 1_000_000)
GPUS = (1, 10, 100)
COLD_SCRIPT = """
import sys, time
began = time.perf_counter()
from flowperf.stress.config import parse_flags
from flowperf.stress.executors import run_test
from flowperf.stress.service import ServiceModel
from flowperf.stress.spec import Scheduler, TestSpec
test_config = parse_flags(rate=float(sys.argv[2])).test_config(ServiceModel())
test = TestSpec(step="single", scheduler=Scheduler.parse(sys.argv[1]), n_gpus=100, num_requests=1_000_000)
result = run_test(test_config, test)
print(f"{time.perf_counter() - began:.2f} {result.sim_s:.2f}")
"""


def one_test(scheduler: str, requests: int, gpus: int, rate: float):
    test_config = parse_flags(rate=rate).test_config(ServiceModel())
    test = TestSpec(step="single", scheduler=Scheduler.parse(scheduler), n_gpus=gpus, num_requests=requests)
    began = time.perf_counter()
    result = run_test(test_config, test)
    return result, time.perf_counter() - began


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-per-gpu", type=float, default=1.5, help="arrivals/s per GPU (default 1.5)")
    parser.add_argument("--interpreted", action="store_true", help="also time the loops without numba")
    args = parser.parse_args()
    rate = args.rate_per_gpu * 100
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; azure-conv, batch 16, default service")

    warm_up()
    rows = []
    for scheduler in SCHEDULERS:
        cached_workload.cache_clear()  # the workload build is part of the cost here
        result, total = one_test(scheduler, 1_000_000, 100, rate)
        rows.append(
            (scheduler, f"{rate:g}", f"{result.events:,}", f"{result.sim_s:.2f}", f"{total:.2f}",
             f"{result.events_per_s / 1e6:.2f}M", f"{result.gpu_utilisation:.0%}",
             f"{result.sla_attainment:.1%}")
        )  # fmt: skip
    table(
        "1M requests on 100 GPUs, warm (target <= 5 s per test)",
        ("scheduler", "rate/s", "events", "simulation s", "test total s", "events/s", "util", "SLA"),
        rows,
    )

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for scheduler in ("bins-4", "continuous", "vllm"):
            env = os.environ | {"NUMBA_CACHE_DIR": cache}
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", COLD_SCRIPT, scheduler, str(rate)],
                env=env,
                capture_output=True,
                text=True,
            )
            done.check_returncode()
            process_s, sim_s = done.stdout.split()
            rows.append((scheduler, f"{time.perf_counter() - began:.2f}", process_s, sim_s))
    table(
        "1M x 100 GPUs in a fresh process, empty numba cache (the first run compiles both loops)",
        ("scheduler", "process wall s", "imports + test s", "of which simulation s (incl. compile)"),
        rows,
    )

    rows = []
    for scheduler in ("bins-4", "continuous", "vllm"):
        for requests in REQUESTS:
            for gpus in GPUS:
                result, total = one_test(scheduler, requests, gpus, args.rate_per_gpu * gpus)
                rows.append(
                    (scheduler, f"{requests:,}", gpus, f"{args.rate_per_gpu * gpus:g}", f"{result.events:,}",
                     f"{result.iterations:,.0f}", f"{result.sim_s:.3f}", f"{result.events_per_s / 1e6:.2f}M",
                     f"{total:.2f}")
                )  # fmt: skip
    table(
        f"Cost over sizes at {args.rate_per_gpu:g} arrivals/s per GPU (warm; iterations = decode steps)",
        (
            "scheduler",
            "requests",
            "GPUs",
            "rate/s",
            "events",
            "iterations",
            "simulation s",
            "events/s",
            "test s",
        ),
        rows,
    )

    if args.interpreted:
        env = os.environ | {"NUMBA_DISABLE_JIT": "1"}
        script = COLD_SCRIPT.replace("1_000_000", "20_000").replace("n_gpus=100", "n_gpus=2")
        rows = []
        for scheduler in ("bins-4", "continuous"):
            done = subprocess.run(
                [sys.executable, "-c", script, scheduler, str(args.rate_per_gpu * 2)],
                env=env,
                capture_output=True,
                text=True,
            )
            done.check_returncode()
            compiled, _ = one_test(scheduler, 20_000, 2, args.rate_per_gpu * 2)
            rows.append((scheduler, done.stdout.split()[1], f"{compiled.sim_s:.3f}", f"{compiled.events:,}"))
        table(
            "Interpreted versus compiled loops, 20,000 requests on 2 GPUs",
            ("scheduler", "interpreted s", "compiled s", "events"),
            rows,
        )


if __name__ == "__main__":
    main()
