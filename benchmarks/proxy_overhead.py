"""Benchmark: the TTFT that `bench record` adds between a client and its server (issue 21, section 1).

    .venv/bin/python benchmarks/proxy_overhead.py [--rounds-1 30] [--rounds-64 5]

The deterministic mock server (its own process; 50 ms to the first token, then 32 tokens 5 ms apart) is
asked directly and through `bench record` (its own process, as users run it), alternately, in the same
run, in alternating phases (direct, proxied, direct, ...; `--rounds-1` / `--rounds-64` pairs). In a phase
each of `concurrency` workers sends 4 requests one after the other, the workers started a request's
duration / concurrency apart, so at 64 there are 64 streams in flight and a new request every ~3 ms
(a steady closed loop, not synchronized bursts). A request's excess is the
client's TTFT (request sent to first token chunk read, perf_counter) minus the server's own (arrival to
first token written, from `GET /mock/requests`, the same clock): what the path between them costs. The
proxy's added TTFT is the proxied excess minus the direct one, at p50 and p99. Target: <= 1 ms p50,
<= 5 ms p99 added, at both levels.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import aiohttp
import numpy as np
import typer

from flowperf.diagnostics.mockserver import MockConfig, spawn
from perf_section import write_section

OUT = Path("/tmp/perf_sections/proxy_overhead.md")
MOCK = MockConfig(ttft_ms=50, itl_ms=5, lifetime_s=1800)
REQUEST_S = (50 + 31 * 5) / 1000.0  # one request's duration on MOCK with 32 tokens
REQUESTS_PER_WORKER = 4
BODY = {
    "model": "mock",
    "prompt": "x",
    "max_tokens": 32,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def _one(session: aiohttp.ClientSession, base: str, request_id: str, sent: dict[str, float]) -> float:
    """Client TTFT of one streamed request, ms; the rest of the stream is read to its end."""
    started = time.perf_counter()
    first = None
    async with session.post(
        base + "/v1/completions", data=json.dumps(BODY), headers={"X-Request-Id": request_id}
    ) as response:
        async for _ in response.content.iter_any():
            if first is None:
                first = time.perf_counter()
    sent[request_id] = started
    return ((first or time.perf_counter()) - started) * 1000.0


async def _measure(direct: str, proxied: str, concurrency: int, rounds: int) -> dict[str, dict[str, float]]:
    """Client TTFT per request id, for each path: alternating phases in which `concurrency` workers,
    started a request's duration / concurrency apart (so arrivals are spread, not bursts), each send
    REQUESTS_PER_WORKER requests one after the other."""
    ttft: dict[str, dict[str, float]] = {"direct": {}, "proxy": {}}
    sent: dict[str, float] = {}
    spacing_s = REQUEST_S / concurrency

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(path: str, base: str, round_index: int, k: int) -> None:
            await asyncio.sleep(k * spacing_s)
            for j in range(REQUESTS_PER_WORKER):
                rid = f"{path}-{concurrency}-{round_index}-{k}-{j}"
                ttft[path][rid] = await _one(session, base, rid, sent)

        for round_index in range(rounds):
            for path, base in (("direct", direct), ("proxy", proxied)):
                await asyncio.gather(*(worker(path, base, round_index, k) for k in range(concurrency)))
    return ttft


def _server_ttft(base: str) -> dict[str, float]:
    import httpx

    logs = httpx.get(base + "/mock/requests", timeout=60).json()
    return {
        log["request_id"]: (log["token_sent"][0] - log["arrived"]) * 1000.0
        for log in logs
        if log["token_sent"]
    }


def _level(server_base: str, proxy_base: str, concurrency: int, rounds: int) -> dict[str, float]:
    ttft = asyncio.run(_measure(server_base, proxy_base, concurrency, rounds))
    server = _server_ttft(server_base)
    excess = {
        path: np.array([value - server[rid] for rid, value in by_id.items() if rid in server])
        for path, by_id in ttft.items()
    }
    row = {"concurrency": concurrency, "requests": len(excess["proxy"])}
    for quantile in (50, 99):
        direct, proxied = (float(np.percentile(excess[p], quantile)) for p in ("direct", "proxy"))
        row |= {
            f"direct_p{quantile}": direct,
            f"proxy_p{quantile}": proxied,
            f"added_p{quantile}": proxied - direct,
        }
    return row


def _start_proxy(upstream: str, out: Path) -> tuple[subprocess.Popen, str]:
    command = "from flowperf.cli.main import main; main()"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            command,
            "record",
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line.split(" at ")[1].split()[0]


def main(
    rounds_1: Annotated[int, typer.Option(help="Direct/proxied phase pairs at concurrency 1.")] = 30,
    rounds_64: Annotated[int, typer.Option(help="Direct/proxied phase pairs at concurrency 64.")] = 5,
) -> None:
    started = time.perf_counter()
    with (
        spawn(MOCK) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        process, proxy_base = _start_proxy(server.base_url, Path(tmp) / "trace.jsonl")
        try:
            rows = [
                _level(server.base_url, proxy_base, 1, rounds_1),
                _level(server.base_url, proxy_base, 64, rounds_64),
            ]
        finally:
            process.terminate()
            process.wait(30)
        recorded = len((Path(tmp) / "trace.jsonl").read_text().splitlines()) - 1
    lines = [
        "| concurrency | requests per path | excess TTFT direct p50 / p99 | through the proxy p50 / p99 | "
        "added p50 | added p99 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | "
            f"{row['direct_p50']:.2f} / {row['direct_p99']:.2f} ms | "
            f"{row['proxy_p50']:.2f} / {row['proxy_p99']:.2f} ms | "
            f"{row['added_p50']:.2f} ms | {row['added_p99']:.2f} ms |"
        )
    lines.append("")
    lines.append(f"{recorded} requests recorded; {time.perf_counter() - started:.0f} s in all.")
    print("\n".join(lines))
    write_section(OUT, "Recording proxy overhead (`bench record`, issue 21)", lines)


if __name__ == "__main__":
    typer.run(main)
