"""Shared fixtures: one tiny model and one real vLLM engine for the whole test session.

The engine lives on an event loop in a background thread, because vLLM's AsyncLLM is bound to the loop
that created it; tests hand coroutines to that loop with `engine_loop.run(...)`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tiers
from flowperf.config import EngineConfig
from flowperf.engines import vllm_local
from flowperf.engines.affinity import Placement
from flowperf.engines.tiny import build_tiny_model
from flowperf.engines.vllm_local import VllmLocalEngine, get_vllm_engine

ROOT = Path(__file__).resolve().parents[1]
FLOWS_DIR = ROOT / "flows"
FIXTURES_DIR = ROOT / "fixtures"

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="session", autouse=True)
def flowperf_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private FLOWPERF_HOME for the session (subprocesses inherit it, so the model is built once)."""
    home = tmp_path_factory.mktemp("flowperf-home")
    previous = os.environ.get("FLOWPERF_HOME")
    os.environ["FLOWPERF_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("FLOWPERF_HOME", None)
    else:
        os.environ["FLOWPERF_HOME"] = previous


@pytest.fixture(scope="session", autouse=True)
def harness_keeps_every_core() -> Iterator[None]:
    """The tests share one process, and whichever test starts the in-process engine first would move it,
    and every later test, onto the cores the engine leaves free (engines/affinity.py, tested on its own
    in test_affinity.py): here the engine starts without moving anything."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vllm_local, "keep_harness_off_engine", lambda: Placement((), (), "not moved in tests"))
        yield


@pytest.fixture(scope="session")
def tiny_model(flowperf_home: Path) -> Path:
    return build_tiny_model(FIXTURES_DIR).path


@pytest.fixture(scope="session")
def engine_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def engine(
    tiny_model: Path, engine_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmLocalEngine]:
    """The session's one real engine, started before the first test that needs it."""
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    vllm_engine = get_vllm_engine(EngineConfig(), tiny_model, log)
    engine_loop.run(vllm_engine.start())
    yield vllm_engine
    engine_loop.run(vllm_engine.shutdown())


# Test tiers (`bash scripts/test.sh --tier fast|middle|all`, or `pytest --tier ...`). The fast tier starts
# no engine, no server and no child process; the middle tier adds the tests on the session's one engine.
# Tests say what they start with markers; in the fast tier a guard fails any test that starts one of these
# without its marker, so the tier cannot quietly grow slow.
TIER_EXCLUDES = {
    "fast": ("engine", "slow", "subprocess", "server"),
    "middle": ("slow", "subprocess", "server"),
    "all": (),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        choices=tuple(TIER_EXCLUDES),
        default="all",
        help="fast: no engine, server or child process (<2 min); middle: plus the one-engine tests (<6 min)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        test = item.nodeid.split("[")[0]
        for marker, listed in (
            ("subprocess", tiers.SUBPROCESS),
            ("server", tiers.SERVER),
            ("slow", tiers.SLOW),
        ):
            if test in listed:
                item.add_marker(marker)
    excluded = TIER_EXCLUDES[config.getoption("--tier")]
    if not excluded:
        return
    kept, dropped = [], []
    for item in items:
        (dropped if any(item.get_closest_marker(name) for name in excluded) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the fast tier, starting a child process or listening on a socket fails the test, naming the
    marker it lacks."""
    if request.config.getoption("--tier") != "fast":
        return

    def refuse(what: str, marker: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{request.node.nodeid} {what}: mark it @pytest.mark.{marker}")

        return refused

    import multiprocessing.process
    import socket
    import subprocess

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a child process", "subprocess"))
    process_start = refuse("starts a process", "subprocess")
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", process_start)
    monkeypatch.setattr(socket.socket, "listen", refuse("starts a server", "server"))
    monkeypatch.setattr(VllmLocalEngine, "start", refuse("starts the engine", "engine"))
