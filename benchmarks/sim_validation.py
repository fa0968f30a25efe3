"""The simulator's validation protocol (issue 23): five independent rounds on the in-process engine, each
calibrating and predicting three loads with a 5-95% band.

First, once: the engine's capacity, the median throughput of --capacity-replays replays of the window
(`bench replay mooncake --token-scale T --max-requests N`) with every request at once (`--time-scale`
--burst-scale), and from it the loads, fixed before any prediction is made: light (25% of capacity),
moderate (70%) and near saturation (95%), each a `--time-scale` of the trace's own rate. Every round
replays the same loads, so the rounds' measurements at a load can be compared (measured in each round
instead, the capacity came out 194-280 requests/s and the rounds' loads 40% apart).

One round:
1. --calibration-replays replays at --calibrate-load (50%), fitted together as `bench stress --calibrate
   RUN1 --calibrate RUN2 ...` does (their iterations.jsonl, the per-iteration multipliers, their AR(1)
   and how the engine's speed moved between the replays);
2. a replay at each load, predicted as `bench stress --validate RUN --calibration CAL --replicas K`.

Every replay keeps its harness off the engine's cores (`bench`'s default `--pin-harness`; --no-pin
passes `--no-pin-harness`): unpinned on 2 cores the engine ran each replay at one of two speeds (median
decode step 1.25-1.4 or 1.75-2.45 ms), whatever the load.

Then the targets, over the rounds (each measured figure against the median of the rounds' measurements
at that load, and each prediction against its own round's replay for the band):
- light and moderate: e2e p50 and throughput within 10%, TTFT p95 within 20% of the measured median, in
  at least 4 of 5 rounds;
- near saturation: throughput within 10% in every round; measured e2e p50 and TTFT p95 inside the
  predicted 5-95% band in at least 4 of 5 rounds; the band no wider than twice the spread (max - min) of
  the engine's own measurements over the rounds.
Coverage is reported as found, met or not. Run it under the engine lock (the replays start engines):

    flock /tmp/flowperf-engine.lock .venv/bin/python benchmarks/sim_validation.py --out DIR
    python benchmarks/sim_validation.py --out DIR --reuse      # re-fit and re-predict existing replays
    ... --rounds 2 --max-requests 100 --replicas 100           # a reduced run
    ... --sessions --out DIR                                      # agent sessions (sim_session_validation.py)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flowperf.stats import percentile
from flowperf.stress.calibrate import calibrate
from flowperf.stress.traces import load_trace
from flowperf.stress.validate import validate
from sim_session_validation import pinning  # this script's neighbour

TARGETS = {"e2e_p50_s": 0.10, "throughput_rps": 0.10, "ttft_p95_s": 0.20}
LOADS = {"light": 0.25, "moderate": 0.70, "saturation": 0.95}
BANDED = ("e2e_p50_s", "ttft_p95_s")


def bench_command() -> str:
    """This interpreter's own `bench` (the script may run as .venv/bin/python without the venv active)."""
    beside = Path(sys.executable).with_name("bench")
    return str(beside) if beside.is_file() else "bench"


def replay(out: Path, run_id: str, scale: float, args: argparse.Namespace) -> Path:
    """One replay at `scale` times the trace's speed; an existing run directory is kept with --reuse."""
    run_dir = out / run_id
    if args.reuse and (run_dir / "summary.json").is_file():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        bench_command(),
        "replay",
        "mooncake",
        "--token-scale",
        str(args.token_scale),
        "--max-requests",
        str(args.max_requests),
        "--time-scale",
        f"{scale:.6g}",
        "--out",
        str(out),
        "--run-id",
        run_id,
        "--no-progress",
    ]
    command += pinning(args.pin)
    print("$", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def trace_rate(args: argparse.Namespace) -> float:
    """Requests per second of the replayed window at 1x."""
    trace = load_trace("mooncake", token_scale=args.token_scale, max_requests=args.max_requests)
    return trace.size / float(trace.arrival_s.max() - trace.arrival_s.min())


def measured_throughput(run_dir: Path, calibration: Path) -> float:
    """The run's measured throughput, as validation computes it (requests over first submission to last
    completion)."""
    return float(validate(run_dir, calibration).figure("throughput_rps").measured or 0.0)


def capacity(args: argparse.Namespace) -> float:
    """The engine's capacity: the median throughput of the burst replays."""
    measured = []
    for k in range(1, args.capacity_replays + 1):
        burst = replay(args.out, f"capacity{k}", args.burst_scale, args)
        model = args.out / f"capacity{k}-model.json"  # validate() needs a model; only the measurement is read
        model.write_text(json.dumps(calibrate(burst).as_dict()))
        measured.append(measured_throughput(burst, model))
    print(f"capacity: {', '.join(f'{value:.4g}' for value in measured)} requests/s", file=sys.stderr)
    return float(np.median(measured))


def one_round(
    k: int, args: argparse.Namespace, scales: dict[str, float], calibrate_scale: float
) -> dict[str, Any]:
    """The calibration replays and the three predicted loads of round `k`."""
    out = args.out / f"round{k}"
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        replay(out, f"calibration{j}", calibrate_scale, args) for j in range(1, args.calibration_replays + 1)
    ]
    fitted = calibrate(runs)
    calibration_file = out / "calibration.json"
    calibration_file.write_text(json.dumps(fitted.as_dict(), indent=2))
    results = {}
    for name, scale in scales.items():
        run = replay(out, name, scale, args)
        results[name] = validate(run, calibration_file, replicas=args.replicas, seed=1000 * k)
    return {"scales": scales, "calibration": fitted, "results": results}


def verdicts(rounds: list[dict[str, Any]]) -> list[str]:
    """The targets over the rounds, as markdown lines."""
    lines = []
    for load in LOADS:
        figures = {name: [r["results"][load].figure(name) for r in rounds] for name in (*TARGETS, *BANDED)}
        if load != "saturation":
            for name, bound in TARGETS.items():
                middle = percentile(np.array([f.measured for f in figures[name]]), 50)
                hits = sum(abs(f.predicted - middle) <= bound * middle for f in figures[name])
                lines.append(
                    f"- {load}: {name} within {bound:.0%} of the measured median ({middle:.4g}) "
                    f"in {hits} of {len(rounds)} rounds"
                )
            continue
        throughput = figures["throughput_rps"]
        hits = sum(abs(f.relative_error or 0.0) <= 0.10 for f in throughput)
        lines.append(f"- saturation: throughput within 10% in {hits} of {len(rounds)} rounds")
        for name in BANDED:
            inside = sum(bool(f.inside_band) for f in figures[name])
            measured = np.array([f.measured for f in figures[name]])
            spread = float(measured.max() - measured.min())
            widths = [f.p95 - f.p5 for f in figures[name] if f.p5 is not None]
            narrow = sum(w <= 2 * spread for w in widths)
            lines.append(
                f"- saturation: measured {name} inside the band in {inside} of {len(rounds)} rounds; "
                f"band <= 2x the engine's spread ({spread:.4g}) in {narrow} of {len(widths)}"
            )
    return lines


def table(rounds: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: round, load, figure, predicted median [band], measured, error, in band."""
    lines = [
        "| round | load (share, x) | figure | predicted [5-95%] | measured | error | in band |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, r in enumerate(rounds, start=1):
        for load, result in r["results"].items():
            for f in result.figures:
                if f.measured is None or f.name not in (*TARGETS, "e2e_p95_s"):
                    continue
                band = "" if f.p5 is None else f" [{f.p5:.4g}-{f.p95:.4g}]"
                inside = "" if f.inside_band is None else ("yes" if f.inside_band else "no")
                lines.append(
                    f"| {k} | {load} ({LOADS[load]:.0%}, {r['scales'][load]:.3g}x) | {f.name} | "
                    f"{f.predicted:.4g}{band} | {f.measured:.4g} | {f.relative_error or 0:+.1%} | {inside} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/flowperf-sim-validation"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst-scale", type=float, default=1000.0)
    parser.add_argument("--capacity-replays", type=int, default=3)
    parser.add_argument("--calibration-replays", type=int, default=3)
    parser.add_argument("--calibrate-load", type=float, default=0.5)
    parser.add_argument("--token-scale", type=float, default=0.02)
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=200)
    parser.add_argument("--reuse", action="store_true", help="keep replays already in --out")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replays keep the harness off the engine's cores",
    )
    parser.add_argument("--seed", type=int, default=0, help="--sessions: replica k's seed is seed + k")
    parser.add_argument("--sessions", action="store_true", help="the session validation instead")
    parser.add_argument("--session-token-scale", type=float, default=0.25)
    parser.add_argument("--session-time-scale", type=float, default=10.0)
    parser.add_argument("--session-calibrate-load", type=int, default=4)
    parser.add_argument("--session-loads", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--session-warmup", action="store_true", help="a discarded replay first")
    args = parser.parse_args()
    if args.sessions:
        from sim_session_validation import session_protocol  # this script's neighbour

        session_protocol(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rate = trace_rate(args)
    capacity_rps = capacity(args)
    scales = {name: share * capacity_rps / rate for name, share in LOADS.items()}
    calibrate_scale = args.calibrate_load * capacity_rps / rate
    rounds = [one_round(k, args, scales, calibrate_scale) for k in range(1, args.rounds + 1)]
    document = [
        {
            "capacity_rps": capacity_rps,
            "scales": r["scales"],
            "calibration": r["calibration"].as_dict(),
            "validations": {load: v.as_dict() for load, v in r["results"].items()},
        }
        for r in rounds
    ]
    (args.out / "protocol.json").write_text(json.dumps(document, indent=2, default=float))
    for k, r in enumerate(rounds, start=1):
        coefficients = ", ".join(
            f"{n} {v * 1000:.4g} ms" for n, v in r["calibration"].fit.coefficients.items()
        )
        noise = r["calibration"].noise
        spread = "" if noise is None else f"; multipliers phi {noise.phi:.2f}, sigma {noise.sigma:.3f}"
        levels = "" if noise is None or noise.runs < 2 else f", replays' levels spread {noise.between:.3f}"
        print(f"round {k}: capacity {capacity_rps:.4g} req/s; fit {coefficients}{spread}{levels}")
    print("\n".join(table(rounds)))
    print("\n".join(verdicts(rounds)))


if __name__ == "__main__":
    main()
