"""How far the engine model is from the engine: calibrate on a Mooncake replay at one load, validate on two
others (issue 12's target: end-to-end p50 and throughput within 10%, TTFT p95 within 20%).

Runs `bench replay mooncake` on the in-process engine at three `--time-scale` loads, fits the
iteration-time model on the calibration load (`bench stress --calibrate`; from the run's iterations.jsonl,
the engine's own steps), and simulates each other load's requests with it (`bench stress --validate RUN
--calibration CAL`), then prints one error table. Run it under the machine's lock for heavy work, so the
three replays run back to back with no other engine between them (the script takes no lock itself: the
replays would wait for the lock their parent holds):

    flock /tmp/flowperf-heavy.lock python benchmarks/sim_validation.py   # calibrate 8x, validate 2x, 20x
    python benchmarks/sim_validation.py --reuse --json     # re-fit the replays already in --out

The loads are fixed before looking at any error, from the saturation point of this 2-core machine: at
--token-scale 0.02 the first 200 requests of the trace are served at up to about 75 requests/s, so 20x
(about 68 requests/s offered) is near saturation and 2x (about 7 requests/s) light.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from flowperf.stress.calibrate import calibrate
from flowperf.stress.validate import Validation, validate

TARGETS = {"e2e_p50_s": 0.10, "throughput_rps": 0.10, "ttft_p95_s": 0.20}


def bench_command() -> str:
    """This interpreter's own `bench` (the script may run as .venv/bin/python without the venv active)."""
    beside = Path(sys.executable).with_name("bench")
    return str(beside) if beside.is_file() else "bench"


def replay(out: Path, scale: float, args: argparse.Namespace) -> Path:
    """One replay at `scale` times the trace's speed; an existing run directory is kept with --reuse."""
    run_id = f"mooncake-x{scale:g}"
    run_dir = out / run_id
    if args.reuse and (run_dir / "summary.json").is_file():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        bench_command(), "replay", "mooncake", "--token-scale", str(args.token_scale),
        "--max-requests", str(args.max_requests), "--time-scale", f"{scale:g}",
        "--out", str(out), "--run-id", run_id, "--no-progress",
    ]  # fmt: skip
    print("$", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def table(results: dict[float, Validation]) -> list[str]:
    """Markdown rows: load, figure, predicted, measured, error, target."""
    lines = [
        "| load | figure | predicted | measured | error | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scale, result in results.items():
        for figure in result.figures:
            if figure.measured is None:
                lines.append(f"| {scale:g}x | {figure.name} | {figure.predicted:.4g} | not recorded | | |")
                continue
            error = figure.relative_error or 0.0
            bound = TARGETS.get(figure.name)
            verdict = "" if bound is None else f"±{bound:.0%} {'met' if abs(error) <= bound else 'MISSED'}"
            lines.append(
                f"| {scale:g}x | {figure.name} | {figure.predicted:.4g} | {figure.measured:.4g} | "
                f"{error:+.1%} | {verdict} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/flowperf-sim-validation"))
    parser.add_argument("--calibrate-scale", type=float, default=8.0)
    parser.add_argument("--validate-scales", type=float, nargs="+", default=[2.0, 20.0])
    parser.add_argument("--token-scale", type=float, default=0.02)
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--reuse", action="store_true", help="keep replays already in --out")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calibration_run = replay(args.out, args.calibrate_scale, args)
    runs = {scale: replay(args.out, scale, args) for scale in args.validate_scales}
    fitted = calibrate(calibration_run)
    calibration_file = args.out / "calibration.json"
    calibration_file.write_text(json.dumps(fitted.as_dict(), indent=2))
    results = {scale: validate(run, calibration_file) for scale, run in runs.items()}
    if args.json:
        document = {
            "calibration_run": str(calibration_run),
            "calibration": fitted.as_dict(),
            "validations": {f"{scale:g}": result.as_dict() for scale, result in results.items()},
        }
        print(json.dumps(document, indent=2))
        return
    coefficients = ", ".join(f"{k} {v * 1000:.4g} ms" for k, v in fitted.fit.coefficients.items())
    points = fitted.fit.prefill_points + fitted.fit.decode_points
    print(f"calibrated on {calibration_run} ({args.calibrate_scale:g}x): {coefficients}, "
          f"harness overhead {fitted.harness_overhead_s * 1000:.3g} ms, R² {fitted.fit.r2 or 0:.3f} over "
          f"{points} iterations ({fitted.decode_source})")  # fmt: skip
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
