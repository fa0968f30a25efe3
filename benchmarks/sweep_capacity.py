"""Capacity of the default flow on the in-process engine: `bench sweep --auto` with an SLO and --find-max.

Runs the command as a user does (one subprocess, one engine for the whole sweep), then prints the levels,
the knee, the max sustainable load and the wall time, as a Markdown section for docs/PERFORMANCE.md.

    python benchmarks/sweep_capacity.py [--out DIR] [--duration S] [--auto N] [--slo TEXT] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTERED = (
    "from flowperf.cli import main as cli\nfrom flowperf.cli.sweep import sweep\n"
    "from flowperf.cli.options import HtmlCommand\n"
    "if not any(c.name == 'sweep' for c in cli.app.registered_commands):\n"
    "    cli.app.command('sweep', cls=HtmlCommand)(sweep)\ncli.main()"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/flowperf-sweep-capacity"))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--auto", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--slo", default="workflow_p95_ms=1000,ttft_p99_ms=300")
    parser.add_argument("--max-search-levels", type=int, default=3)
    options = parser.parse_args()
    run_id = f"capacity-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["sweep", "--auto", str(options.auto), "--duration", str(options.duration),
            "--max-tokens", str(options.max_tokens), "--slo", options.slo, "--find-max",
            "--max-search-levels", str(options.max_search_levels),
            "--out", str(options.out), "--run-id", run_id, "--json", "--no-progress", "--html"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", REGISTERED, *args], cwd=ROOT, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    document = json.loads(done.stdout)
    print(f"command: bench {shlex.join(args)}\nwall time: {wall_s:.1f} s\n")
    print("| level | offered | achieved wf/s | p50 ms | p95 ms | TTFT p50 ms | attainment | goodput wf/s | "
          "most missed | wall s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for level in document["levels"]:
        load = f"{level['rate']:g}/s" if level["mode"] == "open_loop" else f"c={level['concurrency']}"
        cells = [level["name"], load] + [
            "-" if level[key] is None else f"{level[key]:.3g}"
            for key in ("achieved_per_s", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "attainment",
                        "goodput_per_s")
        ] + [level["failing_objective"] or "-", f"{level['wall_s']:.1f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print(f"\nknee: {document['knee']}; max sustainable: {json.dumps(document['max_sustainable'])}")
    print(f"sweep directory: {options.out / run_id}")


if __name__ == "__main__":
    main()
