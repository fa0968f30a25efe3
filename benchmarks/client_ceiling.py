"""Benchmark: the HTTP client's own timing error and CPU cost at concurrency 1 to 512 (issue 15, item 13).

    .venv/bin/python benchmarks/client_ceiling.py [--rounds 3] [--ttft-ms 50] [--itl-ms 10]

flowperf's HTTP engine streams 32-token completions from the deterministic mock server (its own process;
time to first token 50 ms, 10 ms per token) in a closed loop at each concurrency. Per level: the TTFT error
(client TTFT minus the server's arrival-to-first-write) and inter-token error (|client gap - server gap|),
p50/p99 in ms, and the client's CPU seconds per 1,000 tokens. Side by side in the same run, the raw cost
per streamed event of the two transports flowperf could use (httpx, aiohttp) at concurrency 64, which is
why the engine streams with aiohttp. Targets: p50 error <= 2 ms at 1 and <= 5 ms at 64. The result is also
saved as this host's client ceiling (what `bench doctor` reports and `bench run` warns against).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Annotated

import aiohttp
import httpx
import typer

from flowperf.diagnostics import ceiling
from flowperf.diagnostics.mockserver import MockConfig, spawn
from perf_section import write_section

OUT = Path("/tmp/perf_sections/client_ceiling.md")
HIGH_LEVEL_ROUNDS = 1  # 256 and 512 streams: one request per worker keeps the run short on 2 cores


async def _transport_cost(kind: str, base_url: str, concurrency: int, requests: int) -> float:
    """Client CPU milliseconds per streamed event, reading raw chunks and nothing else."""
    body = json.dumps({"model": "mock", "prompt": "x", "max_tokens": ceiling.MAX_TOKENS, "stream": True})
    url, pending, events = f"{base_url}/v1/completions", list(range(requests)), 0
    if kind == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def one() -> int:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as reply:
                return sum([chunk.count(b"data:") async for chunk in reply.content.iter_any()])
    else:
        session = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency))

        async def one() -> int:
            async with session.stream("POST", url, content=body) as reply:
                return sum([chunk.count(b"data:") async for chunk in reply.aiter_bytes()])

    async def worker() -> None:
        nonlocal events
        while pending:
            pending.pop()
            count = await one()  # not `events += await one()`: that reads `events` before awaiting
            events += count

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    spent = time.process_time() - started
    await (session.close() if kind == "aiohttp" else session.aclose())
    return spent / max(events, 1) * 1000.0


def main(
    rounds: Annotated[int, typer.Option(help="Requests per worker at concurrency 1, 16 and 64.")] = 3,
    ttft_ms: Annotated[float, typer.Option(help="The mock server's time to first token.")] = 50.0,
    itl_ms: Annotated[float, typer.Option(help="The mock server's time per token.")] = 10.0,
) -> None:
    started = time.perf_counter()
    with spawn(MockConfig(ttft_ms=ttft_ms, itl_ms=itl_ms, lifetime_s=900)) as server:
        results = [
            ceiling.measure_level(
                server, level, max(8, level * (rounds if level <= 64 else HIGH_LEVEL_ROUNDS))
            )
            for level in ceiling.LEVELS
        ]
        transports = {
            kind: asyncio.run(_transport_cost(kind, server.base_url, 64, 256))
            for kind in ("httpx", "aiohttp")
        }
    cache = ceiling.save(results)
    limit = ceiling.ceiling(results)
    lines = [
        f"Client ceiling (mock server: TTFT {ttft_ms:g} ms, {itl_ms:g} ms/token, {ceiling.MAX_TOKENS} tokens;"
        f" errors vs the server's own timestamps):",
        "",
        "| concurrency | requests | TTFT err p50 / p99 ms | ITL err p50 / p99 ms | CPU s / 1k tokens "
        "| server lag p99 ms | failed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in results:
        lines.append(
            f"| {level.concurrency} | {level.requests} | {level.ttft_error_p50_ms:.2f} / "
            f"{level.ttft_error_p99_ms:.2f} | {level.itl_error_p50_ms:.2f} / {level.itl_error_p99_ms:.2f} "
            f"| {level.cpu_s_per_1k_tokens:.3f} | {level.server_lag_p99_ms:.2f} | {level.failed} |"
        )
    lines += [
        "",
        f"Client ceiling (highest concurrency with p50 error <= {ceiling.ERROR_LIMIT_MS:g} ms): {limit} "
        f"(saved to {cache}).",
        f"Raw transport cost per streamed event at concurrency 64: httpx {transports['httpx']:.3f} ms CPU, "
        f"aiohttp {transports['aiohttp']:.3f} ms CPU ({transports['httpx'] / transports['aiohttp']:.1f}x).",
        f"Total benchmark time {time.perf_counter() - started:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (the server lag column shows a busy machine).",
    ]
    print("\n".join(lines))
    write_section(OUT, "Client ceiling", lines)


if __name__ == "__main__":
    typer.run(main)
