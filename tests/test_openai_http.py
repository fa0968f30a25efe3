"""The HTTP engine's protocol logic against a scripted transport: request shape, stream parsing, key
handling and errors. Behaviour against a real vLLM server is tested in test_server.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from flowperf.engines.base import EngineError, GenerationParams, StepResult
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine
from flowperf.errors import UserError

SECRET = "sk-test-never-written-anywhere"


def scripted_server(seen: list[httpx.Request], *, vllm: bool = True, status: int = 200):
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": "9.9"}) if vllm else httpx.Response(404)
        if status != 200:
            return httpx.Response(status, text="overloaded\nplease retry")
        events = [
            {"choices": [{"text": "", "token_ids": [5, 6]}]},
            {"choices": [{"text": "lo", "token_ids": [7]}]},
            {"choices": [{"text": "", "finish_reason": "length", "token_ids": []}]},
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 11,
                    "completion_tokens": 3,
                    "prompt_tokens_details": {"cached_tokens": 8},
                },
                "metrics": {"queue_time_ms": 0.5, "time_to_first_token_ms": 9.5},
            },
        ]
        body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return handle


def make_engine(monkeypatch: pytest.MonkeyPatch, seen: list, **server_options) -> OpenAIHttpEngine:
    monkeypatch.setenv("FLOWPERF_TEST_KEY", SECRET)
    engine = OpenAIHttpEngine(
        HttpClientConfig(base_url="http://127.0.0.1:9", api_key_env="FLOWPERF_TEST_KEY")
    )
    transport = httpx.MockTransport(scripted_server(seen, **server_options))
    original = httpx.AsyncClient

    def client_with_transport(**kwargs):
        return original(transport=transport, **kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", client_with_transport)
    return engine


def generate_once(engine: OpenAIHttpEngine, params: GenerationParams, request_id: str = "r") -> StepResult:
    """One request on a started engine, shut down afterwards whatever happens."""

    async def go() -> StepResult:
        await engine.start()
        try:
            return await engine.generate("hello", params, request_id)
        finally:
            await engine.shutdown()

    return asyncio.run(go())


def test_streamed_completion_is_measured_from_token_ids_and_usage(monkeypatch, tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    engine = make_engine(monkeypatch, seen)

    result = generate_once(engine, GenerationParams(max_tokens=3, seed=4), "req-1")
    assert (result.output_tokens, result.prompt_tokens, result.cached_prompt_tokens) == (3, 11, 8)
    assert result.text == "lo" and result.finish_reason == "length"
    assert len(result.itl_ms) == 1  # first event (2 tokens) gives TTFT, the second one gap
    assert result.engine_queue_ms == 0.5 and result.engine_ttft_ms == 10.0
    request = seen[-1]
    body = json.loads(request.content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["return_token_ids"] is True and body["seed"] == 4
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["x-request-id"] == "req-1"
    info = json.dumps(engine.info().as_dict())
    assert SECRET not in info and "FLOWPERF_TEST_KEY" not in info


def test_non_vllm_servers_get_no_vllm_extensions(monkeypatch) -> None:
    seen: list[httpx.Request] = []
    engine = make_engine(monkeypatch, seen, vllm=False)

    generate_once(engine, GenerationParams(max_tokens=3))
    body = json.loads(seen[-1].content)
    assert "ignore_eos" not in body and "return_token_ids" not in body


def test_http_errors_fail_the_step_with_the_status(monkeypatch) -> None:
    engine = make_engine(monkeypatch, [], status=503)

    with pytest.raises(EngineError, match="HTTP 503 from /v1/completions: overloaded please retry"):
        generate_once(engine, GenerationParams(max_tokens=3))


def test_missing_key_variable_and_unreachable_server(monkeypatch) -> None:
    monkeypatch.delenv("FLOWPERF_ABSENT_KEY", raising=False)
    absent = OpenAIHttpEngine(
        HttpClientConfig(base_url="http://127.0.0.1:9", api_key_env="FLOWPERF_ABSENT_KEY")
    )
    with pytest.raises(
        UserError, match="--api-key-env FLOWPERF_ABSENT_KEY: that environment variable is not set"
    ):
        asyncio.run(absent.start())
    nobody = OpenAIHttpEngine(HttpClientConfig(base_url="http://127.0.0.1:9", connect_timeout_s=1))
    with pytest.raises(EngineError, match="cannot reach the server"):
        asyncio.run(nobody.start())
