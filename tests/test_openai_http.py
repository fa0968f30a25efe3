"""The HTTP engine against the deterministic mock server (flowperf.diagnostics.mockserver): request
shape, stream parsing, faults inside a 200 stream, key handling, and timing checked
against the server's own clock. Behaviour against a real vLLM server is tested in test_server.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from flowperf.diagnostics.mockserver import MockConfig, MockOpenAIServer, serve_in_thread
from flowperf.engines.base import EngineError, GenerationParams, StepResult, StreamError, TruncatedStream
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine, _StreamState
from flowperf.errors import UserError

SECRET = "sk-test-never-written-anywhere"
FAST = MockConfig(ttft_ms=20, itl_ms=2, lifetime_s=60)


def replace_config(**changes) -> MockConfig:
    return replace(FAST, **changes)


def engine_for(server: MockOpenAIServer, monkeypatch: pytest.MonkeyPatch, **options) -> OpenAIHttpEngine:
    monkeypatch.setenv("FLOWPERF_TEST_KEY", SECRET)
    settings = HttpClientConfig(
        base_url=f"http://127.0.0.1:{server.port}", api_key_env="FLOWPERF_TEST_KEY", **options
    )
    return OpenAIHttpEngine(settings)


def generate(engine: OpenAIHttpEngine, *calls: tuple[str, GenerationParams]) -> list[StepResult]:
    """Concurrent requests on a started engine, shut down afterwards whatever happens."""

    async def go() -> list[StepResult]:
        await engine.start()
        try:
            return await asyncio.gather(
                *(
                    engine.generate(prompt, params, f"req-{index}")
                    for index, (prompt, params) in enumerate(calls)
                )
            )
        finally:
            await engine.shutdown()

    return asyncio.run(go())


def test_streamed_completion_is_measured_from_token_ids_usage_and_metrics(monkeypatch) -> None:
    with serve_in_thread(FAST) as server:
        engine = engine_for(server, monkeypatch)
        (result,) = generate(engine, ("hello", GenerationParams(max_tokens=8, seed=4)))
    assert (result.output_tokens, result.prompt_tokens, result.cached_prompt_tokens) == (8, 8, 0)
    assert result.text == "".join(f" t{index}" for index in range(8)) and result.finish_reason == "length"
    assert len(result.itl_ms) == 7
    (log,) = server.logs
    server_ttft_ms = (log.token_sent[0] - log.arrived) * 1000.0
    # engine_ttft_ms = queue_time_ms + time_to_first_token_ms of the server's per-request metrics
    assert result.engine_queue_ms == 0.0 and result.engine_ttft_ms == pytest.approx(server_ttft_ms)
    # the client cannot see the first token before the server wrote it
    assert result.ttft_ms is not None and result.ttft_ms >= server_ttft_ms
    assert result.connect_wait_ms is not None and result.connect_wait_ms >= 0
    body = log.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["return_token_ids"] is True and body["seed"] == 4
    assert log.headers["authorization"] == f"Bearer {SECRET}" and log.request_id == "req-0"
    assert log.headers["x-session-id"] == "req"  # the workflow, for a recording proxy in between
    info = json.dumps(engine.info().as_dict())
    assert SECRET not in info and "FLOWPERF_TEST_KEY" not in info


def test_chat_api_reads_deltas(monkeypatch) -> None:
    with serve_in_thread(FAST) as server:
        (result,) = generate(
            engine_for(server, monkeypatch, api="chat"), ("hi", GenerationParams(max_tokens=3))
        )
    assert result.text == " t0 t1 t2" and server.logs[0].body["messages"][0]["content"] == "hi"


def test_an_error_event_inside_a_200_stream_fails_the_step(monkeypatch) -> None:
    with serve_in_thread(FAST) as server, pytest.raises(StreamError) as failure:
        generate(engine_for(server, monkeypatch), ("x mock-fault=error", GenerationParams(max_tokens=16)))
    assert str(failure.value) == "InternalServerError: mock failure mid-stream (after 3 tokens)"


def test_a_stream_without_a_finish_reason_is_truncated(monkeypatch) -> None:
    with (
        serve_in_thread(FAST) as server,
        pytest.raises(TruncatedStream, match=r"^truncated: .*finish reason"),
    ):
        generate(engine_for(server, monkeypatch), ("mock-fault=truncated", GenerationParams(max_tokens=16)))


def test_fewer_tokens_than_a_fixed_length_request_asked_for_is_truncated(monkeypatch) -> None:
    short = ("mock-fault=short", GenerationParams(max_tokens=16))
    with serve_in_thread(FAST) as server, pytest.raises(TruncatedStream, match=r"^truncated: 3 of 16 tokens"):
        generate(engine_for(server, monkeypatch), short)
    # without ignore_eos, or from a server that is not vLLM, an early stop is a legitimate answer
    with serve_in_thread(FAST) as server:
        (result,) = generate(
            engine_for(server, monkeypatch), ("mock-fault=short", GenerationParams(16, ignore_eos=False))
        )
        assert result.output_tokens == 3
    with serve_in_thread(replace_config(vllm=False)) as server:
        (result,) = generate(engine_for(server, monkeypatch), short)
        assert result.output_tokens == 3 and "ignore_eos" not in server.logs[0].body


def test_http_errors_and_hung_servers_fail_the_step(monkeypatch) -> None:
    with serve_in_thread(replace_config(http_status=503)) as server:
        engine = engine_for(server, monkeypatch, read_timeout_s=0.5)
        with pytest.raises(EngineError, match=r"HTTP 503 from /v1/completions: .*mock overload"):
            generate(engine, ("mock-fault=http_error", GenerationParams(max_tokens=3)))
        with pytest.raises(EngineError, match="Timeout"):
            generate(engine, ("mock-fault=hang", GenerationParams(max_tokens=3)))


def test_ttft_starts_when_the_request_is_sent_not_while_it_waits_for_a_connection(monkeypatch) -> None:
    """One pooled connection, two requests: the second waits the whole first response for the
    connection; that wait is connect_wait_ms, and its TTFT is only the server's time to first token."""
    config = replace_config(ttft_ms=20, itl_ms=10)
    with serve_in_thread(config) as server:
        first, second = generate(
            engine_for(server, monkeypatch, concurrency=1),
            ("long", GenerationParams(max_tokens=40)),
            ("short", GenerationParams(max_tokens=2)),
        )
    by_id = {log.request_id: log for log in server.logs}
    first_duration_ms = (by_id["req-0"].finished - by_id["req-0"].arrived) * 1000.0
    assert first_duration_ms > 300
    assert second.connect_wait_ms is not None and second.connect_wait_ms > first_duration_ms / 2
    assert second.ttft_ms is not None and second.ttft_ms < first_duration_ms / 2
    assert first.ttft_ms is not None and first.ttft_ms < first_duration_ms / 2


def test_engine_ttft_is_queue_plus_first_token_and_unknown_without_the_queue_time() -> None:
    state = _StreamState()
    state.metrics = {"queue_time_ms": 4.0, "time_to_first_token_ms": 6.0}
    assert state.engine_times() == (4.0, 10.0)
    state.metrics = {"time_to_first_token_ms": 6.0}
    assert state.engine_times() == (None, None)


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
