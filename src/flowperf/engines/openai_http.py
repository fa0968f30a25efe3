"""Any OpenAI-compatible server, over one pooled keep-alive HTTP client for the whole run.

Requests stream (`stream: true` with `stream_options.include_usage`), so TTFT is the first event that
carries a token and every later event is one inter-token gap, measured in this process. Token counts come
from the server's usage; against vLLM the request also asks for `return_token_ids`, so each event's token
count is exact even when a byte-level tokenizer leaves its text empty, and for the per-request metrics and
prompt-token details a flowperf-managed server is started with. No request is retried silently: an HTTP
error, a refused connection or a timeout fails that step, with the reason.

The API key is read from the environment variable the user names and only ever placed in the
Authorization header; it is never stored in the engine's settings, info or any file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from flowperf.engines.base import EngineError, EngineInfo, GenerationParams, StepResult
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


def _event_payload(line: str) -> dict[str, Any] | None:
    """The JSON payload of a server-sent-event `data:` line; None for other lines and [DONE]."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return json.loads(data) if data and data != "[DONE]" else None


class OpenAIHttpEngine:
    """Streams completions or chat completions from an OpenAI-compatible server."""

    engine_name = "openai"

    def __init__(self, settings: HttpClientConfig) -> None:
        self.settings = settings
        self.model = settings.model
        self._client: httpx.AsyncClient | None = None
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
        self._client = httpx.AsyncClient(
            base_url=self.settings.base_url.rstrip("/"),
            headers=self._headers(),
            timeout=httpx.Timeout(self.settings.read_timeout_s, connect=self.settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        )
        try:
            await self._discover()
        except BaseException:
            await self.shutdown()
            raise

    async def _discover(self) -> None:
        """Check the server answers, pick the model, learn whether it is vLLM (for its extensions)."""
        assert self._client is not None
        try:
            listing = await self._client.get("/v1/models")
            listing.raise_for_status()
        except httpx.HTTPStatusError as error:
            raise EngineError(
                f"{self.settings.base_url}: GET /v1/models answered {error.response.status_code}"
            ) from None
        except httpx.HTTPError as error:
            raise EngineError(
                f"{self.settings.base_url}: cannot reach the server ({type(error).__name__}: {error})"
            ) from None
        served = [entry.get("id") for entry in listing.json().get("data", [])]
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
            version = await self._client.get("/version")
            if version.status_code == 200:
                self._server_version = str(version.json().get("version", "unknown"))
                self._is_vllm = True
        except (httpx.HTTPError, ValueError):
            self._is_vllm = False

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
        timer = StreamTimer()
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        finish_reason = None
        metrics: dict[str, Any] = {}
        try:
            async with client.stream(
                "POST", path, json=self._body(prompt, params), headers={"X-Request-Id": request_id}
            ) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:300]
                    raise EngineError(f"HTTP {response.status_code} from {path}: {' '.join(detail.split())}")
                async for line in response.aiter_lines():
                    if (event := _event_payload(line)) is not None:
                        usage = event.get("usage") or usage
                        metrics = event.get("metrics") or metrics
                        for choice in event.get("choices") or []:
                            text = choice.get("text")
                            if text is None:
                                text = (choice.get("delta") or {}).get("content") or ""
                            token_ids = choice.get("token_ids")
                            timer.tokens_arrived(
                                len(token_ids) if token_ids is not None else (1 if text else 0)
                            )
                            pieces.append(text)
                            finish_reason = choice.get("finish_reason") or finish_reason
        except httpx.HTTPError as error:
            raise EngineError(f"{type(error).__name__}: {error or 'connection failed'}") from None
        except ValueError as error:
            raise EngineError(f"malformed event from the server: {error}") from None
        details = usage.get("prompt_tokens_details") or {}
        queue_ms, engine_ttft = metrics.get("queue_time_ms"), metrics.get("time_to_first_token_ms")
        return timer.result(
            text="".join(pieces),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=usage.get("completion_tokens"),
            cached_prompt_tokens=details.get("cached_tokens"),
            finish_reason=finish_reason,
            engine_queue_ms=queue_ms,
            engine_ttft_ms=None if engine_ttft is None else engine_ttft + (queue_ms or 0.0),
        )

    async def reset_prefix_cache(self) -> bool:
        """vLLM serves POST /reset_prefix_cache in its dev mode (flowperf's managed servers enable it)."""
        if self._client is None or not self._is_vllm:
            return False
        try:
            response = await self._client.post("/reset_prefix_cache")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

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
            await client.aclose()
