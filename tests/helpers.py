"""Running `bench` as a subprocess the way a user does, and reading what it leaves behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowperf.config import RunConfig
from flowperf.run.benchmark import RunHooks, RunResult, run_benchmark
from flowperf.run.timing import parse_timing_line

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-c", "from flowperf.cli.main import main; main()"]


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def timing(self) -> list[dict[str, str]]:
        return [parse_timing_line(line) for line in self.stdout.splitlines() if line.startswith("[TIMING]")]


def run_bench(
    *args: str, cwd: Path = ROOT, timeout: float = 300, env: dict[str, str] | None = None
) -> Completed:
    """Run `bench ARGS` in its own process group; on timeout kill that group (only what we started)."""
    process = subprocess.Popen(
        [*BENCH, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"bench {' '.join(args)} timed out after {timeout}s\n{stderr[-2000:]}") from None
    return Completed(process.returncode, stdout, stderr)


def run_in_process(out_dir: Path, run_id: str, engine: dict[str, Any], **settings: Any) -> RunResult:
    """A short `bench run` in this process on the project's flows and fixtures: no warm-up, no sampling."""
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "warmup": 0,
            "monitor": {"sample_interval_s": 0},
            "output": {"out_dir": str(out_dir), "run_id": run_id},
            "engine": engine,
        }
        | settings
    )
    return asyncio.run(run_benchmark(config, RunHooks(echo=lambda _: None, warn=lambda _: None)))
