"""`bench record`: an OpenAI-compatible proxy that forwards everything unchanged and writes a session trace.

Any client points at the proxy instead of its server. Every request (any method, any path: completions,
chat, `/v1/models`, `/version`, `/tokenize`, ...) goes to the upstream as it came, with its headers
(Authorization included, which is forwarded and never recorded) less the hop-by-hop ones and
Accept-Encoding (the proxy asks for identity bodies so it can read the streams); the response comes back
with its status, headers and body. An SSE stream is forwarded chunk by chunk as each one arrives from the
upstream (one write per chunk, which the transport sends at once). The one change: a streamed request that
did not ask for `stream_options.include_usage` gets it upstream, so the recording has the server's token
counts, and the usage-only event that adds is left out of what the client receives.

Each answered chat or completions request (status 200, usage with at least one prompt and one output token,
no error event) becomes one `TraceRequest` line (sessions/format.py): session and needs by the rule in
sessions/inference.py; `start_ms` when the proxy received the request and `end_ms` when it had forwarded
the last byte, both on the proxy's perf_counter clock from the first chat/completions request it
received; `ttft_ms` from receiving the request to forwarding the chunk with the first output (streams
only); `latency_ms` = end - start; token counts from the upstream's usage; hash ids from the prompt's
token ids (sessions/prompt_tokens.py, sessions/hashing.py). Lines are written in the order responses end
(so a request's parent is always written before it), each one as soon as its prompt is tokenized, which
starts after the response has ended: a proxy killed at any instant loses only requests whose responses
had not ended (or were still being tokenized, a few milliseconds). Prompt and output text only with
`--keep-text`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from flowperf.errors import UserError
from flowperf.sessions.format import RequestText, TraceHeader, TraceRequest, TraceWriter
from flowperf.sessions.hashing import chained_block_hashes
from flowperf.sessions.inference import Observed, SessionInference, continuation_of, transcript_of
from flowperf.sessions.prompt_tokens import LocalTokenizer, PromptTokenizer, UpstreamTokenizer
from flowperf.sessions.responses import Answer, StreamWatch, body_answer

LLM_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_NOT_TO_UPSTREAM = _HOP_BY_HOP | {"accept-encoding"}
MAX_BODY_BYTES = 1 << 30
SHUTDOWN_GRACE_S = 1.0


@dataclass(frozen=True)
class RecordSettings:
    upstream: str
    out: Path
    host: str = "127.0.0.1"
    port: int = 8001
    tokenizer: Path | None = None
    keep_text: bool = False
    block_size: int = 64


def upstream_root(url: str) -> str:
    """The server's root: clients' paths (/v1/...) are appended to it, so a trailing /v1 is dropped."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class LlmCall:
    """A chat or completions request as the proxy forwards and records it."""

    id: str
    api: str
    body: dict[str, Any]
    upstream_body: bytes
    streaming: bool
    strip_usage: bool
    declared_session: str | None
    received: float

    @classmethod
    def parse(cls, request: web.Request, raw: bytes, number: int, received: float) -> LlmCall | None:
        api = LLM_PATHS.get(request.path)
        if request.method != "POST" or api is None:
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        streaming = body.get("stream") is True
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        strip = streaming and not options.get("include_usage")
        upstream_body = (
            json.dumps(body | {"stream_options": options | {"include_usage": True}}).encode()
            if strip
            else raw
        )
        user = body.get("user")
        declared = request.headers.get("X-Session-Id") or (user if isinstance(user, str) and user else None)
        return cls(f"r{number}", api, body, upstream_body, streaming, strip, declared, received)


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    not_recorded: int = 0
    sessions: set[str] = field(default_factory=set)

    def line(self, out: Path) -> str:
        skipped = f"; {self.not_recorded} not recorded (errors or no usage)" if self.not_recorded else ""
        return (
            f"recorded {self.requests} requests in {len(self.sessions)} sessions "
            f"(prompt {self.prompt_tokens} tokens, output {self.output_tokens} tokens) to {out}{skipped}"
        )


class RecordingProxy:
    """The proxy on the running event loop: `await start()` (returns its URL), then `await stop()`."""

    def __init__(self, settings: RecordSettings, warn: Callable[[str], None]) -> None:
        self.settings = settings
        self.totals = Totals()
        self._warn = warn
        self._warned: set[str] = set()
        self._upstream = upstream_root(settings.upstream)
        self._numbers = itertools.count(1)
        self._origin: float | None = None
        self._inference = SessionInference()
        self._pending: asyncio.Queue[asyncio.Task[TraceRequest | None] | None] = asyncio.Queue()
        self._tokenizer: PromptTokenizer = (
            LocalTokenizer(settings.tokenizer)
            if settings.tokenizer
            else UpstreamTokenizer(self._upstream, self._warn_once)
        )
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._writer: TraceWriter | None = None
        self._writing: asyncio.Task[None] | None = None

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self._warn(message)

    async def start(self) -> str:
        if self.settings.out.exists():
            raise UserError(f"--out {self.settings.out}: already exists (a recording is never appended to)")
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            where = f"{self.settings.host}:{self.settings.port}"
            raise UserError(f"--listen {where}: cannot listen there ({error.strerror})") from None
        port = self._runner.addresses[0][1]
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        )
        await self._tokenizer.start()
        self._writer = TraceWriter(self.settings.out, self._header())
        self._writing = asyncio.create_task(self._write_in_order())
        return f"http://{self.settings.host}:{port}"

    def _header(self) -> TraceHeader:
        source = self._tokenizer.source
        return TraceHeader(
            block_size=self.settings.block_size,
            source="recorded",
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            notes=f"recorded by bench record; hash ids from the {source}",
        )

    async def stop(self) -> None:
        """Stop listening (requests in flight get SHUTDOWN_GRACE_S to end), write what was answered."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._writing is not None:
            await self._pending.put(None)
            await self._writing
        for closing in (self._client, self._tokenizer):
            if closing is not None:
                await closing.close()
        if self._writer is not None:
            self._writer.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = time.perf_counter()
        raw = await request.read()
        call = LlmCall.parse(request, raw, next(self._numbers), received)
        if call is not None and self._origin is None:
            self._origin = received
        headers = CIMultiDict(
            (name, value) for name, value in request.headers.items() if name.lower() not in _NOT_TO_UPSTREAM
        )
        assert self._client is not None
        try:
            async with self._client.request(
                request.method,
                self._upstream + request.path_qs,
                data=call.upstream_body if call else raw,
                headers=headers,
                allow_redirects=False,
            ) as upstream:
                if call and upstream.status == 200 and _is_event_stream(upstream):
                    return await self._relay_stream(request, upstream, call)
                return await self._relay_body(request, upstream, call)
        except (aiohttp.ClientError, TimeoutError) as error:
            message = f"bench record: the upstream did not answer ({type(error).__name__}: {error})"
            return web.json_response({"error": {"message": message, "type": "BadGateway"}}, status=502)

    async def _relay_body(
        self, request: web.Request, upstream: aiohttp.ClientResponse, call: LlmCall | None
    ) -> web.StreamResponse:
        body = await upstream.read()
        response = web.Response(status=upstream.status, body=body, headers=_response_headers(upstream))
        await response.prepare(request)
        await response.write_eof()
        if call is not None:
            answer = body_answer(body) if upstream.status == 200 else Answer(error=upstream.status)
            self._answered(call, answer, None, time.perf_counter())
        return response

    async def _relay_stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, call: LlmCall
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream))
        await response.prepare(request)
        watch = StreamWatch(call.strip_usage)
        first: float | None = None
        try:
            async for chunk in upstream.content.iter_any():
                forward = watch.feed(chunk)
                if forward:
                    await response.write(forward)
                if first is None and watch.content_in_last_feed:
                    first = time.perf_counter()
            tail = watch.flush()
            if tail:
                await response.write(tail)
            await response.write_eof()
        except ConnectionResetError:  # the client left: nothing it saw is an answered request
            self.totals.not_recorded += 1
            return response
        self._answered(call, watch.answer(), first, time.perf_counter())
        return response

    def _answered(self, call: LlmCall, answer: Answer, first: float | None, ended: float) -> None:
        """Place an ended response in its session now (in end order), write it once tokenized."""
        usage = answer.usage or {}
        prompt_tokens, output_tokens = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        if answer.error is not None or prompt_tokens < 1 or output_tokens < 1:
            self.totals.not_recorded += 1
            if answer.error is None:
                self._warn_once("a response without usage token counts was not recorded")
            return
        origin = self._origin if self._origin is not None else call.received
        start_ms, end_ms = (call.received - origin) * 1000.0, (ended - origin) * 1000.0
        transcript = transcript_of(call.api, call.body)
        after = None if transcript is None else continuation_of(call.api, transcript, answer.text)
        placement = self._inference.place(
            Observed(
                id=call.id,
                start_ms=start_ms,
                end_ms=end_ms,
                declared_session=call.declared_session,
                transcript=transcript,
                continuation=after,
                chat=call.api == "chat",
            )
        )
        record = TraceRequest(
            session=placement.session,
            id=call.id,
            needs=placement.needs,
            start_ms=start_ms,
            end_ms=end_ms,
            think_ms=placement.think_ms,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            ttft_ms=None if first is None else (first - call.received) * 1000.0,
            latency_ms=end_ms - start_ms,
            api=call.api,
            streaming=call.streaming,
            model=call.body.get("model") if isinstance(call.body.get("model"), str) else None,
            text=self._text(call, answer),
        )
        self._pending.put_nowait(asyncio.create_task(self._with_hash_ids(call, record)))

    def _text(self, call: LlmCall, answer: Answer) -> RequestText | None:
        if not self.settings.keep_text:
            return None
        prompt = call.body.get("prompt")
        messages = call.body.get("messages")
        return RequestText(
            prompt=prompt if isinstance(prompt, str) else None,
            messages=messages if isinstance(messages, list) else None,
            output=answer.text,
        )

    async def _with_hash_ids(self, call: LlmCall, record: TraceRequest) -> TraceRequest:
        ids = await self._tokenizer.token_ids(call.api, call.body)
        if ids is None:
            return record
        if len(ids) != record.prompt_tokens:
            self._warn_once(
                f"the {self._tokenizer.source} gave {len(ids)} tokens where the server counted "
                f"{record.prompt_tokens} (request {record.id}): such requests are recorded without hash ids"
            )
            return record
        return record.model_copy(update={"hash_ids": chained_block_hashes(ids, self.settings.block_size)})

    async def _write_in_order(self) -> None:
        """Write records in the order their responses ended, each as soon as it is complete."""
        assert self._writer is not None
        while (task := await self._pending.get()) is not None:
            record = await task
            if record is None:
                continue
            self._writer.write(record)
            self.totals.requests += 1
            self.totals.prompt_tokens += record.prompt_tokens
            self.totals.output_tokens += record.output_tokens
            self.totals.sessions.add(record.session)


def _is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.headers.get("Content-Type", "").startswith("text/event-stream")


def _response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, value) for name, value in upstream.headers.items() if name.lower() not in _HOP_BY_HOP
    )
