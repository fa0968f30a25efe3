"""One engine speed on CPU: the same replay with the harness kept off the engine's cores (`--pin-harness`,
the default) and without (`--no-pin-harness`), interleaved, side by side.

Each run is `bench replay mooncake --token-scale 0.02 --max-requests N --time-scale X` on the in-process
engine (a fresh process each, as a user's runs are). Per run: the median engine step of one or two
decodes and no prefill (iterations.jsonl `elapsed_ms`, the engine's own clock), e2e p50 and TTFT p95 (the
harness's); per arm: the spread of each (max / min) over its runs. Run it under the engine lock:

    flock /tmp/flowperf-engine.lock env PYTHONPATH=src .venv/bin/python benchmarks/cpu_pinning.py [--pairs 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from flowperf.stats import percentile


def bench_command() -> str:
    beside = Path(sys.executable).with_name("bench")
    return str(beside) if beside.is_file() else "bench"


def one_run(out: Path, name: str, pin: bool, args: argparse.Namespace) -> dict[str, float]:
    command = [
        bench_command(), "replay", "mooncake", "--token-scale", "0.02", "--max-requests", str(args.requests),
        "--time-scale", str(args.time_scale), "--out", str(out), "--run-id", name, "--no-progress",
        "--pin-harness" if pin else "--no-pin-harness",
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    steps = [json.loads(line) for line in (out / name / "iterations.jsonl").read_text().splitlines() if line]
    decode = [s["elapsed_ms"] for s in steps if s.get("prefills") == 0 and s.get("decodes") in (1, 2)]
    records = [json.loads(line) for line in (out / name / "steps.jsonl").read_text().splitlines() if line]
    ok = [r for r in records if r.get("status") == "ok"]
    return {
        "decode_ms": float(np.median(decode)),
        "e2e_p50_ms": float(percentile(np.array([r["step_ms"] for r in ok]), 50)),
        "ttft_p95_ms": float(percentile(np.array([r["ttft_ms"] for r in ok]), 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=35.33, help="50%% of capacity on the 2-core host")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"pinned": [], "unpinned": []}
    with tempfile.TemporaryDirectory() as directory:
        for pair in range(1, args.pairs + 1):
            for arm, pin in (("unpinned", False), ("pinned", True)):
                result = one_run(Path(directory), f"{arm}{pair}", pin, args)
                runs[arm].append(result)
                print(arm, pair, {key: round(value, 2) for key, value in result.items()}, flush=True)
    for arm, results in runs.items():
        spreads = []
        for key in results[0]:
            values = [result[key] for result in results]
            spreads.append(f"{key} {min(values):.2f}-{max(values):.2f} (x{max(values) / min(values):.2f})")
        print(f"{arm}: " + "; ".join(spreads))


if __name__ == "__main__":
    main()
