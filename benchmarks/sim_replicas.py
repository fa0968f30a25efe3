"""Benchmark perturbed replicas: K replicas of a 1M-request engine-model test, warm, on the cores given.

Each replica is the `vllm` scheduler's simulation of the same 1M requests on 100 GPUs with its own
per-iteration cost multipliers (an AR(1) noise model fitted to a synthetic calibration, phi 0.7, sigma
0.25); replicas are independent, so they run in `--workers` processes, each compiled and warmed before the
clock starts. Prints the wall time for K replicas, the resulting 5-95% band of TTFT p95 and e2e p50, and
how much each band's width and median moved from the first K/2 replicas to all K (band stability).
Target (issue 23): K replicas of 1M requests under 30 s warm on 2 cores.

Run: python benchmarks/sim_replicas.py [--replicas 20] [--workers 2] [--requests 1000000] [--gpus 100]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from flowperf.stats import percentile
from flowperf.stress.engine import EngineConfig, simulate_engine
from flowperf.stress.noise import band, fit_noise, replica_scale
from flowperf.stress.service import ServiceModel

_STATE: dict = {}


def _synthetic_noise():
    rng = np.random.default_rng(0)
    z = np.zeros(5000)
    for i in range(1, z.size):
        z[i] = 0.7 * z[i - 1] + rng.normal(0.0, 0.25 * np.sqrt(1 - 0.49))
    return fit_noise(np.exp(z))


def _setup(requests: int, gpus: int, rate_per_gpu: float) -> None:
    rng = np.random.default_rng(1)
    arrival = np.cumsum(rng.exponential(1.0 / (rate_per_gpu * gpus), requests))
    prompt, output = rng.integers(100, 2000, requests), rng.integers(20, 400, requests)
    _STATE.update(arrival=arrival, prompt=prompt, output=output, gpus=gpus, noise=_synthetic_noise())
    _replica(-1)  # compile and warm this process


def _replica(seed: int) -> tuple[float, float]:
    s = _STATE
    scale = None if seed < 0 else replica_scale(s["noise"], seed)
    out = simulate_engine(
        s["arrival"], s["prompt"], s["output"], s["gpus"], EngineConfig(), ServiceModel(), scale=scale
    )
    return percentile(out.first_token - s["arrival"], 95), percentile(out.finish - s["arrival"], 50)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--gpus", type=int, default=100)
    parser.add_argument("--rate-per-gpu", type=float, default=1.5)
    args = parser.parse_args()
    setup = (args.requests, args.gpus, args.rate_per_gpu)
    with ProcessPoolExecutor(args.workers, initializer=_setup, initargs=setup) as pool:
        list(pool.map(time.sleep, [0.1] * args.workers))  # every worker set up and warm
        began = time.perf_counter()
        figures = np.array(list(pool.map(_replica, range(args.replicas))))
        wall = time.perf_counter() - began
    print(
        f"{args.replicas} replicas x {args.requests:,} requests x {args.gpus} GPUs on {args.workers} workers:"
    )
    print(f"  wall {wall:.1f} s ({wall / args.replicas:.2f} s per replica per worker-slot)")
    for column, name in enumerate(("TTFT p95", "e2e p50")):
        _print_stability(name, figures[:, column])


def _print_stability(name: str, values: np.ndarray) -> None:
    """The band over all K replicas and how much its width and median moved from the first K/2: the
    measure of whether K is enough for a stable 5-95% band."""
    whole, half = band(values), band(values[: values.size // 2])
    width, half_width = whole["p95"] - whole["p5"], half["p95"] - half["p5"]
    print(
        f"  {name} median {whole['median']:.4g} s, band {whole['p5']:.4g}-{whole['p95']:.4g} "
        f"(width {width / whole['median']:.2%} of the median); first {values.size // 2} replicas: "
        f"width {half_width / half['median']:.2%}, width change {(width - half_width) / width:+.1%}, "
        f"median change {(whole['median'] - half['median']) / whole['median']:+.2%}"
    )


if __name__ == "__main__":
    main()
