"""A deterministic OpenAI-compatible streaming server, to measure the harness itself and to inject faults.

A real engine's timing varies; this server's does not: token i of a request is due at
`arrival + ttft_ms + i * itl_ms` (an absolute schedule, so one late write does not shift the rest), and it
records when each event was actually written (`time.perf_counter`, which on Linux is CLOCK_MONOTONIC and so
comparable across processes on one machine). Comparing those records with what the client measured is the
client's own error, with no engine in between. `GET /mock/requests` returns the records.

It speaks enough of vLLM's dialect for flowperf to treat it as vLLM (`/version`, `token_ids`, usage with
per-request `metrics`) and can misbehave on demand, for the whole server (`MockConfig.fault`) or for one
request (`mock-fault=<name>` anywhere in its prompt): `error` (an error event inside a 200 stream),
`truncated` (the stream ends without a finish reason), `short` (finish reason `length` before max_tokens),
`http_error` (an HTTP error status) and `hang` (nothing is ever answered). A request with `"stream": false`
gets one JSON answer when its last token is due. With `strict_openai` it follows OpenAI's API where it
otherwise does not (for `bench record`'s tests): a request without `stream` is not streamed, and a stream
ends with its usage event only if `stream_options.include_usage` asked for it.

`GET /metrics` is a Prometheus page of the series flowperf reads from vLLM (telemetry/), computed from
the server's own records: requests running and waiting (`max_running` > 0 makes later requests wait for
a slot), tokens, prefix-cache queries (its prompts count 8 tokens, none cached), and TTFT, inter-token,
queue and end-to-end histograms of what it actually sent. `POST /mock/metrics/reset` sets every counter
and histogram back to zero (a restarted server); `POST /mock/metrics/fail` with `{"count": N}` makes the
next N reads of /metrics answer 500. With `vllm=False` the page holds two non-vLLM series only.
`burst=True` sends each stream's first token on time and every later one in one write at the end, as a
front end that holds a stream back does.

It binds 127.0.0.1 only, on a port the system picks, and stops by itself after `lifetime_s`. Run it in a
thread (`serve_in_thread`, for tests), or in a process of its own (`spawn`, for measurements: then the
server does not share a GIL or an event loop with the client it measures).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Fault = Literal["none", "error", "truncated", "short", "http_error", "hang"]
FAULTS: tuple[str, ...] = ("none", "error", "truncated", "short", "http_error", "hang")
FAULT_IN_PROMPT = re.compile(r"mock-fault=(\w+)")
READY_LINE = "MOCK-SERVER-PORT"


@dataclass(frozen=True)
class MockConfig:
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    model: str = "mock"
    vllm: bool = True
    fault: Fault = "none"
    fault_after_tokens: int = 3
    http_status: int = 503
    lifetime_s: float = 600.0
    strict_openai: bool = False  # as OpenAI's API: no stream unless asked, a stream's usage only if asked
    burst: bool = False
    max_running: int = 0


@dataclass
class RequestLog:
    """One request as the server saw it; times are perf_counter seconds (CLOCK_MONOTONIC)."""

    request_id: str
    arrived: float
    max_tokens: int
    fault: str
    headers: dict[str, str]
    body: dict[str, Any]
    token_sent: list[float] = field(default_factory=list)
    token_due: list[float] = field(default_factory=list)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MockOpenAIServer:
    """The server on the running event loop: `await start()`, then `port`, `logs`, `await stop()`."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.logs: list[RequestLog] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self.metrics = MockMetrics(config.vllm)
        self._slots = asyncio.Semaphore(config.max_running) if config.max_running > 0 else None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        asyncio.get_running_loop().call_later(self.config.lifetime_s, self._stopped.set)

    async def serve_until_stopped(self) -> None:
        await self._stopped.wait()
        await self.stop()

    async def stop(self) -> None:
        self._stopped.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
            if hasattr(server, "close_clients"):
                server.close_clients()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not self._stopped.is_set():
                request = await _read_request(reader)
                if request is None:
                    return
                if not await self._answer(*request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes, writer) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        if path == "/v1/models":
            return await _send_json(writer, 200, {"data": [{"id": self.config.model}]})
        if path == "/version":
            found = self.config.vllm
            return await _send_json(writer, 200 if found else 404, {"version": "mock"} if found else {})
        if path == "/mock/requests":
            return await _send_json(writer, 200, [log.as_dict() for log in self.logs])
        if path.startswith("/metrics") or path.startswith("/mock/metrics"):
            return await self.metrics.answer(method, path, body, writer)
        if path == "/reset_prefix_cache" and method == "POST":
            return await _send_json(writer, 200, {})
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            await self._stream(path, headers, json.loads(body), writer)
            return True
        return await _send_json(writer, 404, {"error": {"message": f"no route {path}"}})

    async def _stream(self, path: str, headers: dict[str, str], request: dict[str, Any], writer) -> None:
        arrived = time.perf_counter()
        prompt = request.get("prompt") or request.get("messages")
        prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
        match = FAULT_IN_PROMPT.search(prompt)
        fault = match.group(1) if match else self.config.fault
        log = RequestLog(
            headers.get("x-request-id", ""), arrived, int(request["max_tokens"]), fault, headers, request
        )
        self.logs.append(log)
        if fault == "hang":
            await self._stopped.wait()
            return
        if fault == "http_error":
            await _send_json(writer, self.config.http_status, {"error": {"message": "mock overload"}})
            return
        if request.get("stream") is False or (self.config.strict_openai and not request.get("stream")):
            await self._whole(path, log, writer)
            return
        self.metrics.waiting += 1
        async with self._slots or contextlib.nullcontext():
            self.metrics.admitted(log, time.perf_counter())
            try:
                await self._send_tokens(path, log, fault, writer)
            finally:
                self.metrics.finished(log)

    async def _send_tokens(self, path: str, log: RequestLog, fault: str, writer) -> None:
        """Each token on its schedule from the request's arrival, or with `max_running` from when it got
        a slot (burst: the first on time, the rest in one write once the last is due)."""
        scheduled = log.arrived if self._slots is None else time.perf_counter()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        chat = path.endswith("chat/completions")
        tokens = log.max_tokens
        if fault in ("error", "truncated", "short"):
            tokens = min(tokens, self.config.fault_after_tokens)
        held = b""
        for index in range(tokens):
            due = scheduled + (self.config.ttft_ms + index * self.config.itl_ms) / 1000.0
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            last = index == tokens - 1 and fault not in ("truncated", "error")
            event = _token_event(index, chat, "length" if last else None)
            if self.config.burst and index > 0:
                held += _chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
                if index == tokens - 1:
                    writer.write(held)
                    await writer.drain()
            else:
                await _send_event(writer, event)
            log.token_due.append(due)
            log.token_sent.append(time.perf_counter())
        await self._finish(writer, log, fault)

    async def _whole(self, path: str, log: RequestLog, writer) -> None:
        """A non-streamed answer (`"stream": false`), sent when its last token is due."""
        due = log.arrived + (self.config.ttft_ms + (log.max_tokens - 1) * self.config.itl_ms) / 1000.0
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        text = "".join(f" t{index}" for index in range(log.max_tokens))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if path.endswith("chat/completions"):
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {"prompt_tokens": 8, "completion_tokens": log.max_tokens, "total_tokens": 8 + log.max_tokens}
        kind = "chat.completion" if "message" in choice else "text_completion"
        answer = {"id": "mock", "object": kind, "created": 0, "model": self.config.model, "choices": [choice]}
        await _send_json(writer, 200, answer | {"usage": usage})
        log.finished = time.perf_counter()

    async def _finish(self, writer, log: RequestLog, fault: str) -> None:
        asked = (log.body.get("stream_options") or {}).get("include_usage")
        if fault == "error":
            error = {"message": "mock failure mid-stream", "type": "InternalServerError", "code": 500}
            await _send_event(writer, {"error": error})
        elif asked or not self.config.strict_openai:
            first = log.token_sent[0] if log.token_sent else log.arrived
            usage = {
                "prompt_tokens": 8,
                "completion_tokens": len(log.token_sent),
                "prompt_tokens_details": {"cached_tokens": 0},
            }
            metrics = {"queue_time_ms": 0.0, "time_to_first_token_ms": (first - log.arrived) * 1000.0}
            await _send_event(writer, {"choices": [], "usage": usage, "metrics": metrics})
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        log.finished = time.perf_counter()


def _token_event(index: int, chat: bool, finish_reason: str | None) -> dict[str, Any]:
    text = f" t{index}"
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "token_ids": [index]}
    if chat:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    return {"id": "mock", "object": "text_completion", "choices": [choice]}


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _send_event(writer, event: dict[str, Any]) -> None:
    writer.write(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
    await writer.drain()


async def _send_json(writer, status: int, payload: Any) -> bool:
    data = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    writer.write(head.encode() + data)
    await writer.drain()
    return True


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target.split("?", 1)[0], headers, body


HISTOGRAM_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
"""Bucket upper bounds (s) of the mock's histograms: vLLM's TTFT buckets, trimmed."""


class MockMetrics:
    """The mock's Prometheus page, from what it actually did (see the module docstring)."""

    def __init__(self, vllm: bool) -> None:
        self.vllm = vllm
        self.running = 0
        self.waiting = 0
        self.fail_next = 0
        self.scrapes = 0
        self.reset()

    def reset(self) -> None:
        self.counters = dict.fromkeys(COUNTERS, 0.0)
        self.observed = {name: MockHistogram() for name in HISTOGRAMS}

    def admitted(self, log: RequestLog, now: float) -> None:
        self.waiting -= 1
        self.running += 1
        self.observed["request_queue_time_seconds"].observe(now - log.arrived)
        self.counters["prefix_cache_queries"] += 8

    def finished(self, log: RequestLog) -> None:
        self.running -= 1
        sent = log.token_sent
        self.counters["prompt_tokens"] += 8
        self.counters["generation_tokens"] += len(sent)
        self.counters["request_success"] += 1
        if sent:
            self.observed["time_to_first_token_seconds"].observe(sent[0] - log.arrived)
            self.observed["e2e_request_latency_seconds"].observe(sent[-1] - log.arrived)
            for a, b in itertools.pairwise(sent):
                self.observed["inter_token_latency_seconds"].observe(b - a)

    async def answer(self, method: str, path: str, body: bytes, writer) -> bool:
        if path == "/mock/metrics/reset" and method == "POST":
            self.reset()
            return await _send_json(writer, 200, {})
        if path == "/mock/metrics/fail" and method == "POST":
            self.fail_next = int(json.loads(body or b"{}").get("count", 1))
            return await _send_json(writer, 200, {})
        self.scrapes += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return await _send_json(writer, 500, {"error": {"message": "mock metrics failure"}})
        data = self.page().encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data)
        await writer.drain()
        return True

    def page(self) -> str:
        if not self.vllm:
            done = self.counters["request_success"]
            running = _family("mock:requests_running", "gauge", [f"mock:requests_running {self.running}"])
            return running + _family("mock:requests_total", "counter", [f"mock:requests_total {done}"])
        label = '{engine="0",model_name="mock"}'
        running = self.running
        text = _family("vllm:num_requests_running", "gauge", [f"vllm:num_requests_running{label} {running}"])
        text += _family(
            "vllm:num_requests_waiting", "gauge", [f"vllm:num_requests_waiting{label} {self.waiting}"]
        )
        usage = min(1.0, running / 16)
        text += _family("vllm:kv_cache_usage_perc", "gauge", [f"vllm:kv_cache_usage_perc{label} {usage}"])
        for name, value in self.counters.items():
            text += _family(f"vllm:{name}_total", "counter", [f"vllm:{name}_total{label} {value}"])
        for name, histogram in self.observed.items():
            text += _family(f"vllm:{name}", "histogram", histogram.lines(f"vllm:{name}"))
        return text


COUNTERS = (
    "prompt_tokens",
    "generation_tokens",
    "num_preemptions",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "request_success",
)
HISTOGRAMS = (
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "request_queue_time_seconds",
    "e2e_request_latency_seconds",
)


def _family(name: str, kind: str, lines: list[str]) -> str:
    return f"# HELP {name} mock\n# TYPE {name} {kind}\n" + "".join(line + "\n" for line in lines)


class MockHistogram:
    """A Prometheus histogram as a real server keeps one: cumulative counts per bound, updated as each
    value is observed, so a page costs the same however long the server has run (a page computed from
    every value kept took the mock's event loop for hundreds of ms late in a long run, delaying tokens)."""

    def __init__(self) -> None:
        self.counts = [0] * len(HISTOGRAM_BOUNDS)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index in range(bisect.bisect_left(HISTOGRAM_BOUNDS, value), len(HISTOGRAM_BOUNDS)):
            self.counts[index] += 1

    def lines(self, name: str) -> list[str]:
        label = 'engine="0",model_name="mock"'
        lines = [
            f'{name}_bucket{{{label},le="{bound}"}} {count}'
            for bound, count in zip(HISTOGRAM_BOUNDS, self.counts, strict=True)
        ]
        lines.append(f'{name}_bucket{{{label},le="+Inf"}} {self.count}')
        return [*lines, f"{name}_count{{{label}}} {self.count}", f"{name}_sum{{{label}}} {self.sum}"]


@contextlib.contextmanager
def serve_in_thread(config: MockConfig) -> Iterator[MockOpenAIServer]:
    """The server on an event loop of its own in a daemon thread; stopped when the block ends."""
    loop = asyncio.new_event_loop()
    server = MockOpenAIServer(config)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_until_complete(server.serve_until_stopped())

    thread = threading.Thread(target=run, name="mock-openai-server", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the mock server did not start")
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(server._stopped.set)
        thread.join(10)
        loop.close()


@dataclass
class SpawnedServer:
    process: subprocess.Popen
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def spawn(config: MockConfig) -> Iterator[SpawnedServer]:
    """The server in a child process (it exits when its stdin closes, i.e. with this process)."""
    argv = [sys.executable, "-m", "flowperf.diagnostics.mockserver"]
    for item in fields(MockConfig):
        argv += [f"--{item.name.replace('_', '-')}", str(getattr(config, item.name))]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith(READY_LINE):
            raise RuntimeError(f"the mock server did not start (it said {line!r})")
        yield SpawnedServer(process, int(line.split()[1]))
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _main(config: MockConfig) -> None:
    server = MockOpenAIServer(config)
    await server.start()
    print(READY_LINE, server.port, flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    stdin_closed.add_done_callback(lambda _: server._stopped.set())
    await server.serve_until_stopped()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flowperf.diagnostics.mockserver")
    for item in fields(MockConfig):
        kind = {"bool": lambda text: text == "True", "float": float, "int": int}.get(str(item.type), str)
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=kind, default=item.default)
    config = replace(MockConfig(), **vars(parser.parse_args(argv)))
    if config.fault not in FAULTS:
        parser.error(f"--fault: one of {', '.join(FAULTS)}")
    try:
        import uvloop  # the server's own overhead is then smaller still; asyncio does when it is absent
    except ImportError:
        asyncio.run(_main(config))
    else:
        uvloop.run(_main(config))


if __name__ == "__main__":
    main()
