"""Issue 13's evidence: does `bench ab` stay quiet on identical arms and find a real change, where
back-to-back `bench run` + `bench compare` cannot tell drift from a change?

N times, alternating so the machine's drift weighs on every kind alike:
  1. `bench ab` of identical arms (64 output tokens per step): a regression verdict is a false alarm;
  2. `bench ab` of 64 vs 96 output tokens per step: it must find the regression;
  3. the same two pairs as back-to-back `bench run`s judged by `bench compare` (default gates, 5%).
All runs use one persistent managed server (`--engine server`), started once here and stopped at the end,
so no run pays an engine start-up and the arms of a pair see the same engine. Each command runs under
`flock LOCK` so other heavy jobs on a shared machine do not overlap with it (they may run between).

    python benchmarks/ab_false_regressions.py --n 10 --markdown /tmp/perf_sections/issue13_ab.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-c", "from flowperf.cli.main import main; main()"]
HOME = tempfile.mkdtemp(prefix="ab-bench-home-")  # a server registry of our own: we stop only our server
ENV = {**os.environ, "FLOWPERF_HOME": HOME}


def bench(lock: str | None, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    prefix = ["flock", lock] if lock else []
    return subprocess.run(
        [*prefix, *BENCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        env=ENV,
    )  # fmt: skip


def ab_once(lock: str | None, out: Path, run_id: str, b_tokens: int, common: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    done = bench(
        lock, "ab", *common, "--max-tokens", "64", "--b", f"--max-tokens {b_tokens}", "--out", str(out),
        "--run-id", run_id, "--json", "--no-progress",
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"bench ab failed ({done.returncode}): {done.stderr[-2000:]}")
    document = json.loads(done.stdout)
    by_metric = {row["metric"]: row for row in document["analysis"]["metrics"]}
    workflow = by_metric["workflow_p50_ms"]
    return {
        "exit": done.returncode,
        "regressed": document["regressed"],
        "workflow_p50_change_pct": workflow["change_pct"],
        "workflow_p50_ci_pct": [workflow["ci_low_pct"], workflow["ci_high_pct"]],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def compare_once(
    lock: str | None, out: Path, run_id: str, b_tokens: int, common: list[str]
) -> dict[str, Any]:
    started = time.perf_counter()
    for name, tokens in (("base", 64), ("new", b_tokens)):
        done = bench(lock, "run", *common, "--max-tokens", str(tokens), "--out", str(out),
                     "--run-id", f"{run_id}-{name}", "--no-progress")  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"bench run failed ({done.returncode}): {done.stderr[-2000:]}")
    base, new = out / f"{run_id}-base", out / f"{run_id}-new"
    force = ["--force"] if b_tokens != 64 else []
    done = bench(lock, "compare", str(base), str(new), *force)
    if done.returncode not in (0, 1):
        raise SystemExit(f"bench compare failed ({done.returncode}): {done.stderr[-2000:]}")
    row = next((line for line in done.stdout.splitlines() if line.startswith("workflow_ms")), "")
    delta = re.search(r"([+-]\d+\.\d)%", row)
    regressed = re.search(r"regression in gated metric\(s\): (.*)", done.stderr)
    return {
        "exit": done.returncode,
        "regressed": regressed.group(1).split(", ") if regressed else [],
        "workflow_p50_change_pct": float(delta.group(1)) if delta else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def start_server(lock: str | None) -> str:
    done = bench(lock, "serve", "start")
    match = re.search(r"server (\S+) (?:ready|already running)", done.stdout)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"could not start the server: {done.stderr[-2000:]}")
    return match.group(1)


def summary_line(rows: list[dict[str, Any]]) -> str:
    changes = [row["workflow_p50_change_pct"] for row in rows if row["workflow_p50_change_pct"] is not None]
    flagged = sum(row["exit"] == 1 for row in rows)
    spread = f"{min(changes):+.1f}% .. {max(changes):+.1f}%" if changes else "-"
    return f"{flagged} of {len(rows)} | {spread}"


def markdown(results: dict[str, list[dict[str, Any]]], command: str, n: int, minutes: float) -> str:
    return "\n".join([
        "### `bench ab` against drift: false and true regressions (issue 13)",
        "",
        f"`{command}` ({minutes:.0f} min on this 2-core shared VM; each command under the shared",
        "heavy-job lock).",
        f"N = {n} of each, alternating; one persistent managed server for every run (`--engine server`).",
        "`bench ab`: default verdict rule (Wilcoxon over block pairs, Holm over the 4 default gated metrics,",
        "alpha 0.05, threshold 5%), 10 pairs of blocks of 2 workflows, `--warmup 0`.",
        "`bench run` + `bench compare`:",
        "20 workflows per run (as many as one `bench ab` arm), default gates and threshold.",
        "",
        "| experiment | exit 1 (regression) | workflow p50 change, min .. max |",
        "| --- | --- | --- |",
        f"| `bench ab`, identical arms (64 tokens/step) | {summary_line(results['ab_same'])} |",
        f"| `bench ab`, 64 vs 96 tokens/step | {summary_line(results['ab_change'])} |",
        f"| `bench run` x2 + `bench compare`, identical | {summary_line(results['compare_same'])} |",
        f"| `bench run` x2 + `bench compare`, 64 vs 96 | {summary_line(results['compare_change'])} |",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument(
        "--lock", default="/tmp/flowperf-heavy.lock", help="flock file per command ('' = none)"
    )
    parser.add_argument("--markdown", type=Path, help="write the section here")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    lock = args.lock or None
    common = ["--engine", "server", "--warmup", "0"]
    ab_common = [*common, "--pairs", "10", "--block-workflows", "2"]
    run_common = [*common, "-n", "20"]
    results: dict[str, list[dict[str, Any]]] = {"ab_same": [], "ab_change": [], "compare_same": [],
                                                "compare_change": []}  # fmt: skip
    started = time.perf_counter()
    server = start_server(lock)
    try:
        with tempfile.TemporaryDirectory(prefix="ab-bench-") as scratch:
            out = Path(scratch)
            for index in range(args.n):
                results["ab_same"].append(ab_once(lock, out, f"same{index}", 64, ab_common))
                results["compare_same"].append(compare_once(lock, out, f"csame{index}", 64, run_common))
                results["ab_change"].append(ab_once(lock, out, f"change{index}", 96, ab_common))
                results["compare_change"].append(compare_once(lock, out, f"cchange{index}", 96, run_common))
                print(json.dumps({key: rows[-1] for key, rows in results.items()}), flush=True)
    finally:
        bench(None, "serve", "stop", server)
    minutes = (time.perf_counter() - started) / 60.0
    command = shlex.join(["python", "benchmarks/ab_false_regressions.py", "--n", str(args.n)])
    section = markdown(results, command, args.n, minutes)
    print(section)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(section)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
