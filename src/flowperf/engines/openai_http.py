"""Any OpenAI-compatible server, or several replicas of one deployment, over pooled keep-alive HTTP clients.

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

With several base URLs (replicas of one deployment) each replica gets its own pool, sized as the single
pool would be, and discovery checks every one at start. Session routing sends every request of one
workflow to replica `index mod N`, so its turns and branches find their prefix in that replica's cache and
a resumed run sends a workflow where it went before; round-robin spreads requests one by one instead.

The API key is read from the environment variable the user names and only ever placed in the
Authorization header; it is never stored in the engine's settings, info or any file.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from flowperf.engines.base import (
    EngineError,
    EngineInfo,
    GenerationParams,
    Prompt,
    StepResult,
    StreamError,
    TokenPrompt,
    TruncatedStream,
)
from flowperf.engines.streaming import StreamTimer
from flowperf.errors import UserError

Routing = Literal["session", "round-robin"]


@dataclass(frozen=True)
class HttpClientConfig:
    """`base_url` and, for replicas of one deployment, the `other_urls`; `concurrency` sizes each
    replica's pool (any one replica may get every request in flight)."""

    base_url: str
    model: str | None = None
    api: Literal["completions", "chat"] = "completions"
    api_key_env: str | None = None
    concurrency: int = 1
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    other_urls: tuple[str, ...] = ()
    routing: Routing = "session"

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.base_url, *self.other_urls)


def session_id(request_id: str) -> str:
    """The workflow a request belongs to, `{run_id}-{flow_id}` (see session_key): sent as `X-Session-Id`
    so a recording proxy in between (`bench record`) puts each workflow's requests in one session."""
    return request_id.rpartition("-")[0] or request_id


def session_key(request_id: str) -> int:
    """The workflow a request belongs to, as a number: its index where the id says it, else a stable hash.

    The engine sees only the request id, which the runner writes as `{run_id}-{flow_id}-{node}`; a node
    name never holds a `-` (`id`, `id#turn`, `id[k]`) and a flow id ends in the workflow's index
    (`<name>-<i:06d>`, warm-up `<name>-warmup-<k:06d>`), so `index mod N` spreads workflows evenly and
    routes a resumed workflow where it went before. Any other id keeps its requests together by hash."""
    session = session_id(request_id)
    digits = session.rpartition("-")[2]
    return int(digits) if digits.isdigit() else zlib.crc32(session.encode())


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

    def engine_last_token(self) -> float | None:
        """`engine_last_token_ms`: queued to first token plus vLLM's generation_time_ms (first to last
        token), all on the engine core's clock; unknown if any part is missing."""
        _, ttft_ms = self.engine_times()
        generation_ms = self.metrics.get("generation_time_ms")
        return None if ttft_ms is None or generation_ms is None else ttft_ms + generation_ms


class _Endpoint:
    """One replica: its URL, its own connection pool, and what discovery learned about it."""

    def __init__(self, url: str, client: aiohttp.ClientSession, label: str) -> None:
        self.url = url.rstrip("/")
        self.client = client
        self.label = label
        self.is_vllm = False
        self.version = "unknown"

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with self.client.get(self.url + path) as response:
            if response.status != 200:
                return response.status, None
            return 200, await response.json(content_type=None)

    async def served_models(self) -> list[str]:
        """The models it lists; an EngineError naming it if it does not answer."""
        try:
            status, listing = await self.get_json("/v1/models")
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise EngineError(
                f"{self.label}: cannot reach the server ({type(error).__name__}: {error})"
            ) from None
        if status != 200:
            raise EngineError(f"{self.label}: GET /v1/models answered {status}")
        return [entry.get("id") for entry in listing.get("data", [])]

    async def learn_version(self) -> None:
        """vLLM answers GET /version; anything else is a generic OpenAI-compatible server."""
        try:
            status, version = await self.get_json("/version")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status = 0
        self.is_vllm = status == 200
        if self.is_vllm:
            self.version = str(version.get("version", "unknown"))


class OpenAIHttpEngine:
    """Streams completions or chat completions from an OpenAI-compatible server or its replicas."""

    engine_name = "openai"

    def __init__(self, settings: HttpClientConfig) -> None:
        self.settings = settings
        self.model = settings.model
        self._endpoints: list[_Endpoint] = []
        self._round_robin = itertools.count()
        self.reused = False

    @property
    def started(self) -> bool:
        return bool(self._endpoints)

    def _headers(self) -> dict[str, str]:
        name = self.settings.api_key_env
        if not name:
            return {}
        key = os.environ.get(name)
        if not key:
            raise UserError(f"--api-key-env {name}: that environment variable is not set")
        return {"Authorization": f"Bearer {key}"}

    def _client(self, headers: dict[str, str]) -> aiohttp.ClientSession:
        """A pool of its own for one replica, as large as the requests that can be in flight."""
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_request_sent)
        return aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.settings.connect_timeout_s,
                sock_read=self.settings.read_timeout_s,
            ),
            connector=aiohttp.TCPConnector(limit=max(1, self.settings.concurrency)),
            trace_configs=[trace],
        )

    async def start(self) -> None:
        if self._endpoints:
            return
        headers, urls = self._headers(), self.settings.urls
        self._endpoints = [
            _Endpoint(url, self._client(headers), url if len(urls) == 1 else f"{url} (replica {i + 1})")
            for i, url in enumerate(urls)
        ]
        try:
            for endpoint in self._endpoints:
                await self._discover(endpoint)
        except BaseException:
            await self.shutdown()
            raise

    async def _discover(self, endpoint: _Endpoint) -> None:
        """Check a replica answers and serves the model (the first one picks it when none was named), and
        learn whether it is vLLM (for its extensions)."""
        served = await endpoint.served_models()
        if self.model is None:
            if not served:
                raise EngineError(f"{endpoint.label}: the server lists no model")
            self.model = served[0]
        elif served and self.model not in served:
            offered = ", ".join(served)
            raise UserError(f"--model {self.model}: not served at {endpoint.label} (it serves {offered})")
        await endpoint.learn_version()

    def _route(self, request_id: str) -> int:
        """The replica for this request: its workflow's (session routing) or the next one (round-robin)."""
        count = len(self._endpoints)
        if count == 1:
            return 0
        if self.settings.routing == "round-robin":
            return next(self._round_robin) % count
        return session_key(request_id) % count

    def _path(self, prompt: Prompt) -> str:
        """A transcript always goes to chat completions, token ids always to completions (the one
        endpoint that takes them); a plain prompt to the endpoint of --api."""
        chat = isinstance(prompt, tuple) or (self.settings.api == "chat" and isinstance(prompt, str))
        return "/v1/chat/completions" if chat else "/v1/completions"

    def _body(self, prompt: Prompt, params: GenerationParams, is_vllm: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if isinstance(prompt, TokenPrompt):
            body["prompt"] = list(prompt.ids)
        elif not isinstance(prompt, str):
            body["messages"] = list(prompt)
        elif self.settings.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if is_vllm:
            body["ignore_eos"] = params.ignore_eos
            body["return_token_ids"] = True
        return body

    async def generate(self, prompt: Prompt, params: GenerationParams, request_id: str) -> StepResult:
        if not self._endpoints:
            raise EngineError("the engine was not started")
        index = self._route(request_id)
        endpoint = self._endpoints[index]
        path = self._path(prompt)
        content = json.dumps(self._body(prompt, params, endpoint.is_vllm)).encode()
        state = _StreamState()
        timer = StreamTimer()
        try:
            async with endpoint.client.post(
                endpoint.url + path,
                data=content,
                headers={
                    "Content-Type": "application/json",
                    "X-Request-Id": request_id,
                    "X-Session-Id": session_id(request_id),
                },
                trace_request_ctx=timer,
            ) as response:
                await _read_stream(response, path, state, timer)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineError(f"{type(error).__name__}: {error or 'connection failed'}") from None
        except ValueError as error:
            raise EngineError(f"malformed event from the server: {error}") from None
        state.check(timer, params.max_tokens if endpoint.is_vllm and params.ignore_eos else None)
        details = state.usage.get("prompt_tokens_details") or {}
        queue_ms, engine_ttft_ms = state.engine_times()
        result = timer.result(
            text="".join(state.pieces),
            prompt_tokens=int(state.usage.get("prompt_tokens", 0)),
            output_tokens=state.usage.get("completion_tokens"),
            cached_prompt_tokens=details.get("cached_tokens"),
            finish_reason=state.finish_reason,
            engine_queue_ms=queue_ms,
            engine_ttft_ms=engine_ttft_ms,
        )
        result.endpoint = index if len(self._endpoints) > 1 else None
        result.engine_last_token_ms = state.engine_last_token()
        return result

    async def reset_prefix_cache(self) -> bool:
        """vLLM serves POST /reset_prefix_cache in its dev mode (flowperf's managed servers enable it);
        with replicas, True only when every one emptied its cache."""
        if not self._endpoints or not all(endpoint.is_vllm for endpoint in self._endpoints):
            return False
        done = True
        for endpoint in self._endpoints:
            try:
                async with endpoint.client.post(endpoint.url + "/reset_prefix_cache") as response:
                    done = done and response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                done = False
        return done

    def metrics_urls(self) -> list[str]:
        """Each server's Prometheus page (telemetry/), in --base-url order; empty before `start`."""
        return [endpoint.url + "/metrics" for endpoint in self._endpoints]

    def info(self) -> EngineInfo:
        """One base URL is described as it always was; replicas add the endpoints and the routing."""
        endpoints = self._endpoints
        versions = sorted({endpoint.version for endpoint in endpoints}) or ["unknown"]
        details: dict[str, Any] = {
            "base_url": self.settings.base_url,
            "api": self.settings.api,
            "vllm": bool(endpoints) and all(endpoint.is_vllm for endpoint in endpoints),
        }
        if self.settings.other_urls:
            details |= {"endpoints": list(self.settings.urls), "routing": self.settings.routing}
        return EngineInfo(
            engine=self.engine_name,
            engine_version=", ".join(versions),
            model=str(self.model),
            device="remote",
            cuda_graph_mode="unknown",
            cuda_graph_note="decided by the server's own settings",
            init_count=0,
            reused=self.reused,
            details=details,
        )

    async def shutdown(self) -> None:
        endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            await endpoint.client.close()


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
