"""Session validation (issue 23), `python benchmarks/sim_validation.py --sessions`: the shipped
coding-agent sessions replayed on the in-process engine at two closed-loop loads, predicted by the session
simulator from a calibration made on a different replay.

1. The shipped `coding-agent` trace is scaled once into `--out`/trace.jsonl (token lengths and blocks by
   --session-token-scale with `bench replay`'s own rule, think times and starts divided by
   --session-time-scale), so the engine and the simulator see exactly the same sessions.
2. With --session-warmup, a replay at the calibration load first, discarded (in two rounds the first
   replay ran 12-50% slower in mean decode step than those after it). A calibration replay
   (`bench replay TRACE --sessions C`, C = --session-calibrate-load) is fitted as
   `bench stress --calibrate` does; the loads (--session-loads, sessions in flight) are replayed apart.
3. Each load is simulated as `bench stress --sessions TRACE --calibrate RUN --concurrency N --gpus 1`
   would, on the engine limits the replay recorded (KV cache, block size, max_num_seqs, token budget),
   K replicas: session makespan p50 and the cache hit (overall and per turn depth) as median and 5-95% band.

Measured: a session's makespan is its workflow's wall time (first request sent to last token, think time
included; the simulator's first release to last finish); the cache hit is the engine's cached prompt
tokens over prompt tokens per request, grouped by the request's turn depth in the trace. Targets: the
light and moderate targets of the request protocol, makespan p50 within 10% and cache hit within 20%.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flowperf.rundir.rundata import load_run
from flowperf.sessions.format import read_trace, write_trace
from flowperf.sessions.shipped import shipped_session_trace
from flowperf.sessions.source import scaled_lengths
from flowperf.stats import percentile
from flowperf.stress.calibrate import Calibration, calibrate
from flowperf.stress.noise import band, replica_scale
from flowperf.stress.replayed import engine_of
from flowperf.stress.sessions import session_figures, simulate_sessions, workload_from_trace

TARGETS = {"session_p50_s": 0.10, "cache_hit": 0.20}
DEPTH_CAP = 10  # turn depths 10 and deeper are one group (few sessions reach them)


def scaled_trace(out: Path, token_scale: float, time_scale: float) -> Path:
    """The shipped coding-agent sessions with lengths and times scaled, written once to `out`."""
    trace = read_trace(shipped_session_trace("coding-agent"))
    block = trace.header.block_size
    requests = []
    for session in trace.sessions:
        for request in session.requests:
            lengths = scaled_lengths(request, block, token_scale)
            requests.append(
                request.model_copy(
                    update={
                        "prompt_tokens": lengths.prompt,
                        "output_tokens": lengths.output,
                        "start_ms": request.start_ms / time_scale,
                        "think_ms": request.think_ms / time_scale,
                        "end_ms": None,
                        "ttft_ms": None,
                        "latency_ms": None,
                    }
                )
            )
    size = max(1, round(block * token_scale))
    path = out / "trace.jsonl"
    path.unlink(missing_ok=True)  # the trace writer appends
    write_trace(path, trace.header.model_copy(update={"block_size": size}), requests)
    return path


def pinning(pin: bool) -> list[str]:
    """The replay's flag for where its threads run: `bench`'s default keeps the harness off the cores the
    CPU engine computes on (`--pin-harness`); --no-pin runs replays as they ran before that existed
    (on 2 cores, a replay's median decode step was then 1.25-1.4 or 1.75-2.45 ms, whatever the load)."""
    return [] if pin else ["--no-pin-harness"]


def replay_sessions(trace: Path, out: Path, run_id: str, sessions: int, reuse: bool, pin: bool) -> Path:
    """`bench replay TRACE --sessions N` on the in-process engine (kept with --reuse)."""
    run_dir = out / run_id
    if reuse and (run_dir / "summary.json").is_file():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    bench = Path(sys.executable).with_name("bench")
    command = [str(bench) if bench.is_file() else "bench", "replay", str(trace), "--sessions", str(sessions)]
    command += ["--out", str(out), "--run-id", run_id, "--no-progress"]
    command += pinning(pin)
    print("$", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def engine_speed(run_dir: Path) -> str:
    """The mean, median and 90th percentile of the engine's decode-only step gaps (iterations.jsonl): how fast
    the engine ran during this replay, to tell a slow calibration machine from a wrong model."""
    gaps = []
    for line in (run_dir / "iterations.jsonl").read_text(encoding="utf-8").splitlines():
        step = json.loads(line) if line.strip() else {}
        if step.get("prefills") == 0 and step.get("engine_gap_ms"):
            gaps.append(float(step["engine_gap_ms"]))
    if not gaps:
        return f"{run_dir.name}: no decode-only steps logged"
    p50, p90 = percentile(np.array(gaps), [50, 90])
    return (
        f"{run_dir.name}: decode-only step gap mean {np.mean(gaps):.2f} ms, p50 {p50:.2f}, p90 {p90:.2f} "
        f"({len(gaps)} steps)"
    )


def depth_group(depth: np.ndarray) -> np.ndarray:
    return np.minimum(depth, DEPTH_CAP)


def measured(run_dir: Path, depth_of: dict[str, int]) -> dict[str, Any]:
    """The replay's session makespan p50 and cache hit, overall and per turn depth."""
    run = load_run(run_dir)
    steps = run.ok_steps
    llm = steps[steps["step_id"] == "request"]
    depth = depth_group(np.array([depth_of[r] for r in llm["request_id"]]))
    prompt, cached = llm["prompt_tokens"].to_numpy(float), llm["cached_prompt_tokens"].to_numpy(float)
    return {
        "session_p50_s": percentile(run.ok_workflows["workflow_ms"].to_numpy(float), 50) / 1000.0,
        "cache_hit": float(cached.sum() / prompt.sum()),
        "hit_by_depth": {
            int(d): float(cached[depth == d].sum() / prompt[depth == d].sum()) for d in np.unique(depth)
        },
        "sessions": len(run.ok_workflows),
    }


def predicted(trace: Path, fitted: Calibration, run_dir: Path, load: int, args: Any) -> dict[str, Any]:
    """K replicas of the closed loop of `load` sessions on one GPU of the replay's engine."""
    engine = engine_of(load_run(run_dir), 8192)
    workload = workload_from_trace(read_trace(trace))
    depth = depth_group(workload.depth)
    rows: dict[str, list[float]] = {"session_p50_s": [], "cache_hit": []}
    by_depth: dict[int, list[float]] = {int(d): [] for d in np.unique(depth)}
    for k in range(args.replicas):
        scale = replica_scale(fitted.noise, args.seed + k)
        outcome = simulate_sessions(workload, 1, engine, fitted.service, "session", load, scale)
        figures = session_figures(workload, outcome, engine)
        for name in rows:
            rows[name].append(figures[name])
        for d in by_depth:
            mine = depth == d
            by_depth[d].append(float(outcome.hit_tokens[mine].sum() / workload.prompt_tokens[mine].sum()))
    return {
        **{name: band(values) for name, values in rows.items()},
        "hit_by_depth": {d: band(values) for d, values in by_depth.items()},
    }


def rows(load: int, found: dict[str, Any], truth: dict[str, Any]) -> list[str]:
    """Markdown rows of one load: each figure's predicted median [band], measured, error, verdict."""
    lines = []
    figures = [(name, found[name], truth[name], TARGETS[name]) for name in TARGETS]
    figures += [
        (f"cache_hit depth {d}{'+' if d == DEPTH_CAP else ''}", found["hit_by_depth"][d], value, 0.20)
        for d, value in truth["hit_by_depth"].items()
    ]
    for name, guess, value, bound in figures:
        error = (guess["median"] - value) / value if value else float("nan")
        verdict = "yes" if abs(error) <= bound else "no"
        lines.append(
            f"| {load} | {name} | {guess['median']:.4g} [{guess['p5']:.4g}-{guess['p95']:.4g}] | "
            f"{value:.4g} | {error:+.1%} | {verdict} (±{bound:.0%}) |"
        )
    return lines


def session_protocol(args: Any) -> None:
    """Scale the trace, replay the calibration and the loads, predict each load, print the table."""
    args.out.mkdir(parents=True, exist_ok=True)
    trace = scaled_trace(args.out, args.session_token_scale, args.session_time_scale)
    workload = workload_from_trace(read_trace(trace))
    depth_of = {
        request.id: int(workload.depth[i])
        for i, request in enumerate(r for s in read_trace(trace).sessions for r in s.requests)
    }
    if args.session_warmup:  # a replay whose figures are discarded: the first replay of a round ran slow
        replay_sessions(trace, args.out, "warmup", args.session_calibrate_load, args.reuse, args.pin)
    calibration_run = replay_sessions(
        trace,
        args.out,
        f"calibration{args.session_calibrate_load}",
        args.session_calibrate_load,
        args.reuse,
        args.pin,
    )
    fitted = calibrate(calibration_run)
    coefficients = ", ".join(f"{n} {v * 1000:.4g} ms" for n, v in fitted.fit.coefficients.items())
    noise = "" if fitted.noise is None else f"; phi {fitted.noise.phi:.2f}, sigma {fitted.noise.sigma:.3f}"
    print(f"calibration ({calibration_run.name}): {coefficients}{noise}")
    print(engine_speed(calibration_run))
    lines = [
        "| sessions in flight | figure | predicted [5-95%] | measured | error | within target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for load in args.session_loads:
        run_dir = replay_sessions(trace, args.out, f"load{load}", load, args.reuse, args.pin)
        truth = measured(run_dir, depth_of)
        print(engine_speed(run_dir))
        lines += rows(load, predicted(trace, fitted, run_dir, load, args), truth)
    print("\n".join(lines))
