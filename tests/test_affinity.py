"""The harness kept off the cores the CPU engine computes on (engines/affinity.py): found from the
engine's own threads, every thread of the measuring process moved, nothing moved when nothing is bound."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flowperf.engines.affinity import keep_harness_off_engine

ROOT = Path(__file__).resolve().parents[1]
TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 allowed cores")

MOVED = """
import os, subprocess, sys, threading, time
from flowperf.engines.affinity import keep_harness_off_engine
bind = "import os, time; os.sched_setaffinity(0, {%d}); time.sleep(30)"
bound = subprocess.Popen([sys.executable, "-c", bind])
time.sleep(1.0)
waiting = threading.Event()
before = threading.Thread(target=waiting.wait)
before.start()
placement = keep_harness_off_engine()
after = threading.Thread(target=waiting.wait)
after.start()
tasks = [int(t) for t in os.listdir("/proc/self/task")]
print(placement.describe())
print(sorted(set().union(*(os.sched_getaffinity(t) for t in tasks))), len(tasks))
waiting.set()
bound.kill()
"""


@TWO_CORES
def test_a_child_bound_to_a_core_moves_every_thread_of_this_process_off_it() -> None:
    core = min(os.sched_getaffinity(0))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", MOVED % core], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    described, threads = result.stdout.splitlines()
    rest = sorted(os.sched_getaffinity(0) - {core})
    assert described == f"engine compute threads on cores [{core}]; harness threads moved to cores {rest}"
    assert threads == f"{rest} 3"  # main, a thread from before the move and one started after it


ALONE = """
import os
from flowperf.engines.affinity import keep_harness_off_engine
before = os.sched_getaffinity(0)
placement = keep_harness_off_engine()
unmoved = os.sched_getaffinity(0) == before
print(placement.harness_cores == () and "binds no thread" in placement.reason, unmoved)
"""


def test_nothing_moves_when_no_engine_thread_is_bound() -> None:
    """In a process of its own: this one may hold the session's engine as a child."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", ALONE], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def all_threads() -> dict[int, set[int]]:
    """Every thread of this process and its children, with its affinity now."""
    pids = [os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))]
    found = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found[int(tid)] = os.sched_getaffinity(int(tid))
    return found


@pytest.mark.engine
@TWO_CORES
def test_the_real_cpu_engine_binds_its_compute_threads_and_the_harness_leaves_those_cores(engine) -> None:
    before = all_threads()  # put back afterwards: the session's engine serves later tests
    try:
        placement = keep_harness_off_engine()
        compute = set(placement.engine_cores)
        assert compute and compute < before[os.getpid()]
        assert set(placement.harness_cores) == before[os.getpid()] - compute
        for tid in os.listdir("/proc/self/task"):
            assert not os.sched_getaffinity(int(tid)) & compute
        moved = {tid: bound for tid, bound in all_threads().items() if tid in before}
        assert all(len(bound) == 1 or not bound & compute for bound in moved.values())
        assert any(len(bound) == 1 for bound in moved.values())  # the compute threads kept their cores
    finally:
        for tid, bound in before.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, bound)
