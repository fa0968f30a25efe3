"""The harness's own ceiling: how many concurrent streams this machine's client can time truthfully.

The HTTP engine is driven against the deterministic mock server (flowperf.diagnostics.mockserver, in a
process of its own) and what the client measured is compared with what the server did, request by request:
the TTFT error is the client's TTFT minus the server's (arrival to first token written), the inter-token
error is |client gap - server gap| for each gap. Both are the client's own lateness: transport on the
loopback, its parsing, and its event loop's other work. The ceiling is the highest measured concurrency
whose p50 error (TTFT and gap) stays within ERROR_LIMIT_MS; `bench doctor` measures it and caches it per
host, and `ceiling_warning` (called by `bench run`) only reads that cache, so a run never pays for the
measurement.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from flowperf.diagnostics.mockserver import MockConfig, SpawnedServer, spawn
from flowperf.engines.base import GenerationParams, StepResult
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine
from flowperf.paths import flowperf_home
from flowperf.stats import percentile

ERROR_LIMIT_MS = 5.0
MAX_TOKENS = 32
LEVELS = (1, 16, 64, 256, 512)


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    tokens: int
    ttft_error_p50_ms: float
    ttft_error_p99_ms: float
    itl_error_p50_ms: float
    itl_error_p99_ms: float
    cpu_s_per_1k_tokens: float
    server_lag_p99_ms: float
    failed: int

    @property
    def within_limit(self) -> bool:
        return self.failed == 0 and max(self.ttft_error_p50_ms, self.itl_error_p50_ms) <= ERROR_LIMIT_MS


async def _drive(base_url: str, concurrency: int, requests: int, prefix: str) -> tuple[dict, float, int]:
    """Closed loop of `concurrency` workers; (results by request id, client CPU seconds, failures)."""
    engine = OpenAIHttpEngine(HttpClientConfig(base_url=base_url, concurrency=concurrency))
    await engine.start()
    pending = list(range(requests))
    results: dict[str, StepResult] = {}
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while pending:
            request_id = f"{prefix}-{pending.pop()}"
            try:
                results[request_id] = await engine.generate("x", GenerationParams(MAX_TOKENS), request_id)
            except Exception:
                failures += 1

    cpu = time.process_time()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu = time.process_time() - cpu
    finally:
        await engine.shutdown()
    return results, cpu, failures


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p99 = percentile(values, [50, 99])
    return round(float(p50), 3), round(float(p99), 3)


@dataclass(frozen=True)
class ClientTiming:
    """What the client measured of one request: its TTFT and each gap between tokens, ms."""

    ttft_ms: float
    itl_ms: list[float]


@dataclass(frozen=True)
class TimingErrors:
    """Client minus server, over many requests (ms): TTFT and token-gap error p50/p99, server lag p99."""

    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    server_lag_p99_ms: float


def timing_errors(measured: dict[str, ClientTiming], logs: dict[str, dict]) -> TimingErrors:
    """Each request's client timing against the mock server's record of it (by request id)."""
    ttft_errors, gap_errors, lags = [], [], []
    for request_id, timing in measured.items():
        sent = logs[request_id]["token_sent"]
        ttft_errors.append(timing.ttft_ms - (sent[0] - logs[request_id]["arrived"]) * 1000.0)
        server_gaps = np.diff(sent) * 1000.0
        gap_errors += list(
            np.abs(np.asarray(timing.itl_ms[: len(server_gaps)]) - server_gaps[: len(timing.itl_ms)])
        )
        lags += [(s - d) * 1000.0 for s, d in zip(sent, logs[request_id]["token_due"], strict=True)]
    ttft, itl = _percentiles(ttft_errors), _percentiles([float(gap) for gap in gap_errors])
    return TimingErrors(ttft[0], ttft[1], itl[0], itl[1], _percentiles(lags)[1])


def server_logs(base_url: str) -> dict[str, dict]:
    """The mock server's record of every request it served, by request id."""
    return {log["request_id"]: log for log in httpx.get(f"{base_url}/mock/requests", timeout=30).json()}


def measure_level(server: SpawnedServer, concurrency: int, requests: int) -> LevelResult:
    prefix = f"c{concurrency}-{time.monotonic_ns()}"
    results, cpu, failures = asyncio.run(_drive(server.base_url, concurrency, requests, prefix))
    measured = {
        key: ClientTiming(result.ttft_ms or 0.0, list(result.itl_ms)) for key, result in results.items()
    }
    errors = timing_errors(measured, server_logs(server.base_url))
    tokens = sum(result.output_tokens for result in results.values())
    return LevelResult(
        concurrency=concurrency,
        requests=requests,
        tokens=tokens,
        ttft_error_p50_ms=errors.ttft_p50_ms,
        ttft_error_p99_ms=errors.ttft_p99_ms,
        itl_error_p50_ms=errors.itl_p50_ms,
        itl_error_p99_ms=errors.itl_p99_ms,
        cpu_s_per_1k_tokens=round(cpu / max(tokens, 1) * 1000.0, 4),
        server_lag_p99_ms=errors.server_lag_p99_ms,
        failed=failures,
    )


def measure(
    levels: tuple[int, ...], rounds: int, ttft_ms: float = 50.0, itl_ms: float = 10.0
) -> list[LevelResult]:
    """Each level runs `rounds` requests per worker (at least 8 requests) against one spawned server."""
    with spawn(MockConfig(ttft_ms=ttft_ms, itl_ms=itl_ms, lifetime_s=900)) as server:
        return [measure_level(server, level, max(8, level * rounds)) for level in levels]


def ceiling(results: list[LevelResult]) -> int | None:
    """The highest concurrency measured within the limit before the first level past it; None if even
    the first level is past it."""
    best = None
    for result in sorted(results, key=lambda level: level.concurrency):
        if not result.within_limit:
            break
        best = result.concurrency
    return best


def cache_path() -> Path:
    return flowperf_home() / "client-ceiling" / f"{socket.gethostname()}.json"


def save(results: list[LevelResult]) -> Path:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "host": socket.gethostname(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "error_limit_ms": ERROR_LIMIT_MS,
        "ceiling": ceiling(results),
        "levels": [asdict(result) for result in results],
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
    temporary.replace(path)
    return path


def cached_ceiling() -> tuple[int | None, int] | None:
    """(ceiling, highest level measured) from this host's cache; None if never measured or unreadable."""
    try:
        document = json.loads(cache_path().read_text(encoding="utf-8"))
        return document["ceiling"], max(level["concurrency"] for level in document["levels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ceiling_warning(concurrency: int | None, workers: int = 1) -> str | None:
    """A one-line warning when an HTTP run's concurrency per client process (None: uncapped open loop)
    is past this host's measured client ceiling; None when it is not, or when `bench doctor` never
    measured it here."""
    if concurrency is not None:
        concurrency = -(-concurrency // workers)
    known = cached_ceiling()
    if known is None:
        return None
    limit, highest = known
    if limit is not None and limit >= highest:
        return None
    if concurrency is not None and limit is not None and concurrency <= limit:
        return None
    where = "any concurrency" if limit is None else f"more than {limit} concurrent streams"
    streams = "uncapped" if concurrency is None else concurrency
    return (
        f"the HTTP client's timing error on this host passes {ERROR_LIMIT_MS:g} ms (p50) at {where} "
        f"(measured by bench doctor, {cache_path()}); at {streams} streams per client process the harness, "
        "not the server, may set TTFT and inter-token gaps (--workers shares them out)"
    )
