"""Running `bench` as a subprocess the way a user does, and reading what it leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from flowperf.timing import parse_timing_line

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-c", "from flowperf.cli import main; main()"]


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
