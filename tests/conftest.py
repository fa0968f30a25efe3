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

from flowperf.config import EngineConfig
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
