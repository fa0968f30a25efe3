"""Run as a script by tests/test_engine.py: a private in-process engine whose core exits cleanly while
requests are in flight; prints how each request ended, as one JSON line.

A process of its own because the engine is process-global and this kills it. With
`--without-watchdog` the engine's watchdog is replaced by one that does nothing, to show that the
test's protection is the watchdog and not something vLLM does by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from flowperf.config import EngineConfig
from flowperf.engines.base import EngineError, GenerationParams
from flowperf.engines.vllm_local import VllmLocalEngine

IN_FLIGHT = 4
HANG_S = 20.0  # a cleanly exiting core is seen dead within seconds: a request still waiting by then hangs
LONG = GenerationParams(max_tokens=1500)  # several seconds of decoding on CPU: surely unfinished at the kill


def outcome(request: asyncio.Task[Any], finished: float | None, since: float) -> dict[str, Any]:
    """How one request ended: its error (None if it succeeded, "hung" if it never ended) and when."""
    if finished is None:
        return {"error": "hung", "after_s": None}
    error = request.exception()
    if error is not None and not isinstance(error, EngineError):
        raise error
    ended = {"error": None if error is None else str(error), "after_s": finished - since}
    if error is None:
        result = request.result()
        ended |= {"output_tokens": result.output_tokens, "finish_reason": result.finish_reason}
    return ended


def exit_core_cleanly() -> float:
    """SIGTERM the engine core, which makes it shut down and exit normally; returns the time of the kill."""
    (core,) = [child for child in psutil.Process().children(recursive=True) if "EngineCore" in child.name()]
    core.send_signal(signal.SIGTERM)
    return time.monotonic()


async def settle(requests: list[asyncio.Task[Any]], since: float) -> list[dict[str, Any]]:
    """Wait up to HANG_S for `requests`, noting when each one ends."""
    finished: dict[asyncio.Task[Any], float] = {}
    for request in requests:
        request.add_done_callback(lambda task: finished.setdefault(task, time.monotonic()))
    await asyncio.wait(requests, timeout=HANG_S)
    outcomes = [outcome(request, finished.get(request), since) for request in requests]
    for request in requests:
        request.cancel()
    return outcomes


async def probe(model: Path, log: Path) -> dict[str, Any]:
    engine = VllmLocalEngine(EngineConfig(), model, log)
    await engine.start()
    requests = [
        asyncio.create_task(engine.generate(f"{i} tell a story", LONG, f"r{i}")) for i in range(IN_FLIGHT)
    ]
    await asyncio.sleep(1.0)
    unfinished_at_kill = sum(not request.done() for request in requests)
    in_flight = await settle(requests, exit_core_cleanly())
    later = await settle([asyncio.create_task(engine.generate("later", LONG, "later"))], time.monotonic())
    await engine.shutdown()
    return {"unfinished_at_kill": unfinished_at_kill, "in_flight": in_flight, "later": later[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("--without-watchdog", action="store_true")
    arguments = parser.parse_args()
    if arguments.without_watchdog:

        async def asleep(self: VllmLocalEngine) -> None:
            return None

        VllmLocalEngine._watch_engine_core = asleep  # type: ignore[method-assign]
    result = asyncio.run(probe(arguments.model, arguments.log))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
