"""Any OpenAI-compatible server, over one pooled keep-alive HTTP client for the whole run.

Requests stream (`stream: true` with `stream_options.include_usage`), so TTFT is the first event that
carries a token and every later event is one inter-token gap, measured in this process. Token counts come
from the server's usage; against vLLM the request also asks for `return_token_ids`, so each event's token
count is exact even when a byte-level tokenizer leaves its text empty, and for the per-request metrics and
prompt-token details a flowperf-managed server is started with. No request is retried silently: an HTTP
error, a refused connection, a timeout, an error event inside a 200 stream or a stream cut short fails
that step, with the reason.

The client is aiohttp, whose C parser costs about a tenth of httpx's pure-Python one per streamed event
(benchmarks/client_ceiling.py): at a few thousand events a second the client's own CPU time is what
delays the tokens it timestamps. TTFT starts when the request's headers are written (aiohttp's
`on_request_headers_sent`), after the body is encoded and a pooled connection obtained; the wait for that
connection (or for a new one to open) is `connect_wait_ms`.

The API key is read from the environment variable the user names and only ever placed in the
Authorization header; it is never stored in the engine's settings, info or any file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from flowperf.engines.base import (
    EngineError,
    EngineInfo,
    GenerationParams,
    StepResult,
    StreamError,
    TruncatedStream,
)
from flowperf.engines.streaming import StreamTimer
from flowperf.errors import UserError


@dataclass(frozen=True)
class HttpClientConfig:
    base_url: str
    model: str | None = None
    api: Literal["completions", "chat"] = "completions"
    api_key_env: str | None = None
    concurrency: int = 1
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0


def _sse_payloads(buffer: bytearray, chunk: bytes) -> list[bytes]:
    """The complete `data:` payloads in `buffer` + `chunk` (except [DONE]); a partial line stays behind."""
    buffer += chunk
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buffer[: end + 1]).splitlines()
    del buffer[: end + 1]
    payloads = []
    for line in lines:
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                payloads.append(data)
    return payloads


class _StreamState:
    """What one response's events said: text, usage, per-request metrics, finish reason, error."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.usage: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.error: Any = None

    def apply(self, event: dict[str, Any], timer: StreamTimer, at: float) -> None:
        if "error" in event:
            self.error = event["error"]
        self.usage = event.get("usage") or self.usage
        self.metrics = event.get("metrics") or self.metrics
        for choice in event.get("choices") or []:
            text = choice.get("text")
            if text is None:
                text = (choice.get("delta") or {}).get("content") or ""
            token_ids = choice.get("token_ids")
            timer.tokens_arrived(len(token_ids) if token_ids is not None else (1 if text else 0), at)
            self.pieces.append(text)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def check(self, timer: StreamTimer, expected_tokens: int | None) -> None:
        """Fail a stream that a 200 status did not make an answer: an error event, no finish reason, or
        (fixed length asked) fewer tokens than asked."""
        received = self.usage.get("completion_tokens", timer.output_tokens)
        if self.error is not None:
            error = self.error if isinstance(self.error, dict) else {"message": self.error}
            kind, message = error.get("type") or "error", error.get("message") or "no message"
            raise StreamError(f"{kind}: {message} (after {received} tokens)")
        if self.finish_reason is None:
            raise TruncatedStream(
                f"truncated: the stream ended after {received} tokens without a finish reason"
            )
        if expected_tokens is not None and received < expected_tokens:
            raise TruncatedStream(
                f"truncated: {received} of {expected_tokens} tokens with ignore_eos "
                f"(finish reason {self.finish_reason})"
            )

    def engine_times(self) -> tuple[float | None, float | None]:
        """(engine_queue_ms, engine_ttft_ms) from vLLM's per-request metrics (both on the engine core's
        clock): queue_time_ms is queued to scheduled, time_to_first_token_ms scheduled to first token, so
        arrival in the engine's queue to first token is their sum; unknown if either is missing."""
        queue_ms, prefill_ms = self.metrics.get("queue_time_ms"), self.metrics.get("time_to_first_token_ms")
        return queue_ms, None if queue_ms is None or prefill_ms is None else queue_ms + prefill_ms


class OpenAIHttpEngine:
    """Streams completions or chat completions from an OpenAI-compatible server."""

    engine_name = "openai"

    def __init__(self, settings: HttpClientConfig) -> None:
        self.settings = settings
        self.model = settings.model
        self._client: aiohttp.ClientSession | None = None
        self._server_version = "unknown"
        self._is_vllm = False
        self.reused = False

    @property
    def started(self) -> bool:
        return self._client is not None

    def _headers(self) -> dict[str, str]:
        name = self.settings.api_key_env
        if not name:
            return {}
        key = os.environ.get(name)
        if not key:
            raise UserError(f"--api-key-env {name}: that environment variable is not set")
        return {"Authorization": f"Bearer {key}"}

    async def start(self) -> None:
        if self._client is not None:
            return
        limit = max(1, self.settings.concurrency)
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_request_sent)
        self._client = aiohttp.ClientSession(
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.settings.connect_timeout_s,
                sock_read=self.settings.read_timeout_s,
            ),
            connector=aiohttp.TCPConnector(limit=limit),
            trace_configs=[trace],
        )
        try:
            await self._discover()
        except BaseException:
            await self.shutdown()
            raise

    def _url(self, path: str) -> str:
        return self.settings.base_url.rstrip("/") + path

    async def _get_json(self, path: str) -> tuple[int, Any]:
        assert self._client is not None
        async with self._client.get(self._url(path)) as response:
            if response.status != 200:
                return response.status, None
            return 200, await response.json(content_type=None)

    async def _discover(self) -> None:
        """Check the server answers, pick the model, learn whether it is vLLM (for its extensions)."""
        try:
            status, listing = await self._get_json("/v1/models")
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise EngineError(
                f"{self.settings.base_url}: cannot reach the server ({type(error).__name__}: {error})"
            ) from None
        if status != 200:
            raise EngineError(f"{self.settings.base_url}: GET /v1/models answered {status}")
        served = [entry.get("id") for entry in listing.get("data", [])]
        if self.model is None:
            if not served:
                raise EngineError(f"{self.settings.base_url}: the server lists no model")
            self.model = served[0]
        elif served and self.model not in served:
            offered = ", ".join(served)
            raise UserError(
                f"--model {self.model}: not served at {self.settings.base_url} (it serves {offered})"
            )
        try:
            status, version = await self._get_json("/version")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status = 0
        self._is_vllm = status == 200
        if self._is_vllm:
            self._server_version = str(version.get("version", "unknown"))

    def _body(self, prompt: str, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self.settings.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self._is_vllm:
            body["ignore_eos"] = params.ignore_eos
            body["return_token_ids"] = True
        return body

    async def generate(self, prompt: str, params: GenerationParams, request_id: str) -> StepResult:
        client = self._client
        if client is None:
            raise EngineError("the engine was not started")
        path = "/v1/chat/completions" if self.settings.api == "chat" else "/v1/completions"
        content = json.dumps(self._body(prompt, params)).encode()
        state = _StreamState()
        timer = StreamTimer()
        try:
            async with client.post(
                self._url(path),
                data=content,
                headers={"Content-Type": "application/json", "X-Request-Id": request_id},
                trace_request_ctx=timer,
            ) as response:
                await _read_stream(response, path, state, timer)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineError(f"{type(error).__name__}: {error or 'connection failed'}") from None
        except ValueError as error:
            raise EngineError(f"malformed event from the server: {error}") from None
        state.check(timer, params.max_tokens if self._is_vllm and params.ignore_eos else None)
        details = state.usage.get("prompt_tokens_details") or {}
        queue_ms, engine_ttft_ms = state.engine_times()
        return timer.result(
            text="".join(state.pieces),
            prompt_tokens=int(state.usage.get("prompt_tokens", 0)),
            output_tokens=state.usage.get("completion_tokens"),
            cached_prompt_tokens=details.get("cached_tokens"),
            finish_reason=state.finish_reason,
            engine_queue_ms=queue_ms,
            engine_ttft_ms=engine_ttft_ms,
        )

    async def reset_prefix_cache(self) -> bool:
        """vLLM serves POST /reset_prefix_cache in its dev mode (flowperf's managed servers enable it)."""
        if self._client is None or not self._is_vllm:
            return False
        try:
            async with self._client.post(self._url("/reset_prefix_cache")) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.engine_name,
            engine_version=self._server_version,
            model=str(self.model),
            device="remote",
            cuda_graph_mode="unknown",
            cuda_graph_note="decided by the server's own settings",
            init_count=0,
            reused=self.reused,
            details={"base_url": self.settings.base_url, "api": self.settings.api, "vllm": self._is_vllm},
        )

    async def shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


async def _request_sent(session: Any, context: Any, params: Any) -> None:
    """aiohttp trace hook: the request's headers are written, so its TTFT starts now."""
    timer = context.trace_request_ctx
    if isinstance(timer, StreamTimer):
        timer.request_sent()


async def _read_stream(
    response: aiohttp.ClientResponse, path: str, state: _StreamState, timer: StreamTimer
) -> None:
    """Read the response as raw bytes, taking the clock once per network read (see StreamTimer)."""
    if response.status != 200:
        detail = (await response.read()).decode("utf-8", "replace")[:300]
        raise EngineError(f"HTTP {response.status} from {path}: {' '.join(detail.split())}")
    buffer = bytearray()
    async for chunk in response.content.iter_any():
        arrived = time.perf_counter()
        for payload in _sse_payloads(buffer, chunk):
            state.apply(json.loads(payload), timer, arrived)
