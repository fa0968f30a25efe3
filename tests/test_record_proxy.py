"""`bench record` against the deterministic mock server: what clients receive through the proxy is what
the server sends, when it sends it; what the trace says (sessions, needs, times, tokens) is checked
against the client's and the server's own clocks; a killed or interrupted proxy leaves a readable trace.
The round trip through a real vLLM server is the one engine test at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowperf.diagnostics.mockserver import MockConfig, MockOpenAIServer, serve_in_thread
from flowperf.sessions.format import SessionTrace, TraceRequest, read_trace
from flowperf.sessions.hashing import chained_block_hashes
from flowperf.sessions.record import RecordingProxy, RecordSettings
from helpers import BENCH, ROOT

# every test here runs the proxy (a server) in front of the mock server or vLLM
pytestmark = pytest.mark.server

SECRET = "sk-record-test-never-stored"
MOCK = MockConfig(ttft_ms=20, itl_ms=2, lifetime_s=120, strict_openai=True)


class Proxy:
    """A RecordingProxy on an event loop of its own in a thread, with the warnings it printed."""

    def __init__(self, settings: RecordSettings) -> None:
        self.warnings: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = self._run(self._make(settings))
        self.url = self._run(self.proxy.start())

    async def _make(self, settings: RecordSettings) -> RecordingProxy:
        return RecordingProxy(settings, self.warnings.append)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        self._run(self.proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def recording(
    tmp_path: Path, mock: MockConfig = MOCK, **options: Any
) -> Iterator[tuple[MockOpenAIServer, Proxy, Path]]:
    """The mock server, a proxy in front of it, and the trace it writes (complete once the block ends)."""
    out = tmp_path / "trace.jsonl"
    with serve_in_thread(mock) as server:
        proxy = Proxy(RecordSettings(f"http://127.0.0.1:{server.port}/v1", out, port=0, **options))
        try:
            yield server, proxy, out
        finally:
            proxy.stop()
            time.sleep(0.05)  # the mock sees the proxy's pooled connections close before its loop does


def post(base: str, path: str, body: dict[str, Any], **headers: str) -> tuple[httpx.Response, list[float]]:
    """One request, read raw; with it, when each token event arrived (perf_counter)."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", base + path, json=body, headers=headers) as response,
    ):
        chunks, arrivals = [], []
        for chunk in response.iter_raw():
            now = time.perf_counter()
            chunks.append(chunk)
            arrivals += [now] * chunk.count(b'"finish_reason"')
    response._content = b"".join(chunks)
    return response, arrivals


def events(body: bytes) -> list[Any]:
    """A stream's events, less the mock's per-request timings (which differ between two requests)."""
    found = []
    for line in body.decode().splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            event = payload if payload == "[DONE]" else json.loads(payload)
            if isinstance(event, dict):
                event.pop("metrics", None)
            found.append(event)
    return found


def chat(messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    """A chat request (not streamed unless `extra` says so: the mock streams when `stream` is absent)."""
    return {"model": "mock", "messages": messages, "max_tokens": 4, "stream": False} | extra


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "mock", "prompt": prompt, "max_tokens": 3, "stream": False} | extra


def by_id(trace: SessionTrace) -> dict[str, TraceRequest]:
    return {request.id: request for request in trace.requests()}


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_answers_pass_through_as_the_server_sends_them(tmp_path: Path, api: str, streaming: bool) -> None:
    """Status, content type and body through the proxy equal a direct request's; a stream that did not
    ask for usage gets none (the proxy asked upstream and removed it), one that asked gets it."""
    path = f"/v1/{'chat/completions' if api == 'chat' else 'completions'}"
    body = (
        chat([{"role": "user", "content": "hi"}]) if api == "chat" else {"prompt": "hi", "max_tokens": 4}
    ) | {
        "model": "mock",
        "stream": streaming,
    }
    variants = [body, body | {"stream_options": {"include_usage": True}}] if streaming else [body]
    with recording(tmp_path) as (server, proxy, out):
        for variant in variants:
            direct, _ = post(f"http://127.0.0.1:{server.port}", path, variant)
            proxied, _ = post(proxy.url, path, variant)
            assert proxied.status_code == direct.status_code == 200
            assert proxied.headers["content-type"] == direct.headers["content-type"]
            if streaming:
                assert events(proxied.content) == events(direct.content)
                usage_sent = any(isinstance(e, dict) and e.get("usage") for e in events(proxied.content))
                assert usage_sent == ("stream_options" in variant)
            else:
                assert proxied.content == direct.content
        upstream_bodies = [log.body for log in server.logs[1::2]]
    if streaming:  # what the server got from the proxy asked for usage either way
        assert all(b["stream_options"] == {"include_usage": True} for b in upstream_bodies)
    trace = read_trace(out)
    assert trace.request_count == len(variants)
    assert all(
        (r.prompt_tokens, r.output_tokens, r.api, r.streaming) == (8, 4, api, streaming)
        for r in trace.requests()
    )
    assert all((r.ttft_ms is not None) == streaming for r in trace.requests())


def test_events_are_forwarded_as_they_arrive_and_ttft_is_the_proxys_view(tmp_path: Path) -> None:
    """Each token event reaches the client within a few ms of the server sending it (25 ms apart here),
    and the recorded TTFT and latency hold the server's own and sit within the client's."""
    mock = MockConfig(ttft_ms=30, itl_ms=25, lifetime_s=60, strict_openai=True)
    with recording(tmp_path, mock) as (server, proxy, out):
        sent = time.perf_counter()
        response, arrivals = post(
            proxy.url, "/v1/completions", {"prompt": "x", "max_tokens": 12, "stream": True}
        )
        done = time.perf_counter()
        (log,) = server.logs
    assert response.status_code == 200 and len(log.token_due) == len(arrivals) == 12
    # each token event reaches the client within a few ms of its due time at the server (the server's
    # own write timestamp is taken after the write, in another thread, so it can come after the arrival)
    lags = [(arrival - due) * 1000.0 for arrival, due in zip(arrivals, log.token_due, strict=True)]
    assert min(lags) >= 0 and max(lags) < 10, lags
    (request,) = read_trace(out).requests()
    server_ttft = (log.token_due[0] - log.arrived) * 1000.0
    client_ttft = (arrivals[0] - sent) * 1000.0
    assert server_ttft <= request.ttft_ms <= client_ttft
    assert (log.token_due[-1] - log.arrived) * 1000.0 <= request.latency_ms <= (done - sent) * 1000.0


def test_errors_and_other_paths_pass_through_and_are_not_recorded(tmp_path: Path) -> None:
    with recording(tmp_path, MockConfig(ttft_ms=1, itl_ms=1, http_status=429, lifetime_s=60)) as (
        server,
        proxy,
        out,
    ):
        base = f"http://127.0.0.1:{server.port}"
        overloaded = {"prompt": "mock-fault=http_error", "max_tokens": 4, "stream": True}
        failing = {"prompt": "mock-fault=error", "max_tokens": 8, "stream": True}
        for path, body in [("/v1/completions", overloaded), ("/v1/completions", failing)]:
            direct, proxied = post(base, path, body)[0], post(proxy.url, path, body)[0]
            assert proxied.status_code == direct.status_code
            assert events(proxied.content) == events(direct.content) or proxied.content == direct.content
        assert proxied.status_code == 200 and "mock failure mid-stream" in proxied.text
        with httpx.Client() as client:
            assert client.get(proxy.url + "/v1/models").json() == {"data": [{"id": "mock"}]}
            missing = client.get(proxy.url + "/v1/nothing-here")
            assert missing.status_code == 404 and "no route /v1/nothing-here" in missing.text
        assert proxy.proxy.totals.not_recorded == 2
    assert out.read_text().count("\n") == 1  # the header alone
    with serve_in_thread(MOCK) as server:
        gone = Proxy(RecordSettings("http://127.0.0.1:9", tmp_path / "gone.jsonl", port=0))
        try:
            refused, _ = post(gone.url, "/v1/completions", {"prompt": "x", "max_tokens": 2})
        finally:
            gone.stop()
    assert refused.status_code == 502 and "the upstream did not answer" in refused.text


def chat_turns(proxy: Proxy, first: str, turns: int, **headers: str) -> list[list[dict[str, str]]]:
    """A conversation that resends its history with each answer, as agents do."""
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": first}]
    sent = []
    for turn in range(turns):
        response, _ = post(proxy.url, "/v1/chat/completions", chat(messages), **headers)
        answer = response.json()["choices"][0]["message"]["content"]
        sent.append(list(messages))
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"go on {turn}"}]
    return sent


def test_sessions_from_the_header_the_user_field_or_the_conversation(tmp_path: Path) -> None:
    with recording(tmp_path) as (_, proxy, out):
        chat_turns(proxy, "task A", 3)  # r1 r2 r3: inferred, one chain
        chat_turns(proxy, "task B", 1)  # r4: unrelated, a session of its own
        chat_turns(proxy, "task C", 2, **{"X-Session-Id": "agent-7"})  # r5 r6
        post(proxy.url, "/v1/chat/completions", chat([{"role": "user", "content": "x"}], user="bob"))  # r7
        post(proxy.url, "/v1/completions", completion("Once"))  # r8
        post(proxy.url, "/v1/completions", completion("Once t0 t1 t2 upon"))  # r9
        post(proxy.url, "/v1/completions", completion("Once t0 t1"))  # r10: no extension
    trace = read_trace(out)
    requests = by_id(trace)
    sessions = {session.id: [r.id for r in session.requests] for session in trace.sessions}
    assert sessions == {
        "inferred-1": ["r1", "r2", "r3"],
        "inferred-2": ["r4"],
        "agent-7": ["r5", "r6"],
        "bob": ["r7"],
        "inferred-3": ["r8", "r9"],
        "inferred-4": ["r10"],
    }
    assert [requests[i].needs for i in ("r1", "r2", "r3", "r5", "r6", "r8", "r9")] == [
        [], ["r1"], ["r2"], [], ["r5"], [], ["r8"],
    ]  # fmt: skip


def test_requests_in_flight_together_in_one_session_need_what_they_extend(tmp_path: Path) -> None:
    """Two sub-agents forked from turn 1 run at once: each needs turn 1, neither needs the other, and
    the turn that extends one of them needs that one; with a declared session and unrelated content,
    requests sent together need the request that ended last before them."""
    with recording(tmp_path, keep_text=True) as (_, proxy, out):
        (history,) = chat_turns(proxy, "plan", 1)  # r1
        reply = {"role": "assistant", "content": " t0 t1 t2 t3"}
        forks = [[*history, reply, {"role": "user", "content": f"sub-agent {k}"}] for k in range(2)]
        with httpx.Client() as client:

            async def both() -> None:
                async with httpx.AsyncClient(timeout=30) as concurrent:
                    await asyncio.gather(
                        *(concurrent.post(proxy.url + "/v1/chat/completions", json=chat(f)) for f in forks)
                    )

            asyncio.run(both())
            client.post(proxy.url + "/v1/chat/completions", json=chat([*forks[1], reply]))
            declared = {"X-Session-Id": "s"}
            client.post(proxy.url + "/v1/completions", json=completion("a"), headers=declared)

            async def together() -> None:
                async with httpx.AsyncClient(timeout=30) as concurrent:
                    await asyncio.gather(
                        *(
                            concurrent.post(
                                proxy.url + "/v1/completions", json=completion(p), headers=declared
                            )
                            for p in ("b", "c")
                        )
                    )

            asyncio.run(together())
    requests = by_id(read_trace(out))
    forked = sorted(["r2", "r3"], key=lambda i: requests[i].start_ms)
    assert {requests[i].session for i in ("r1", "r2", "r3", "r4")} == {"inferred-1"}
    assert requests["r2"].needs == requests["r3"].needs == ["r1"]
    assert requests[forked[0]].end_ms > requests[forked[1]].start_ms  # they were in flight together
    (extended,) = [i for i in ("r2", "r3") if requests[i].text.messages == forks[1]]
    assert requests["r4"].needs == [extended]  # the fork whose answer it extends
    assert requests["r6"].needs == requests["r7"].needs == ["r5"]


def test_think_time_is_the_agents_pause_between_turns(tmp_path: Path) -> None:
    """The client pauses 250 ms then 80 ms between turns; the recorded think time is that pause as the
    client measured it (end of reading the answer to sending the next request) within 5 ms."""
    pauses, gaps = [0.25, 0.08], []
    with recording(tmp_path) as (_, proxy, out), httpx.Client(timeout=30) as client:
        messages = [{"role": "user", "content": "start"}]
        for pause in [*pauses, None]:
            response = client.post(proxy.url + "/v1/chat/completions", json=chat(messages))
            ended = time.perf_counter()
            messages += [response.json()["choices"][0]["message"], {"role": "user", "content": "next"}]
            if pause is not None:
                time.sleep(pause)
                gaps.append((time.perf_counter() - ended) * 1000.0)
    requests = by_id(read_trace(out))
    for request_id, gap in zip(("r2", "r3"), gaps, strict=True):
        assert requests[request_id].think_ms == pytest.approx(gap, abs=5)
        assert requests[request_id].think_ms == pytest.approx(
            requests[request_id].start_ms - requests[requests[request_id].needs[0]].end_ms
        )


@contextlib.contextmanager
def bench_record(upstream: str, out: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`bench record` as a user runs it, with the URL from its ready line; killed (by pid) if left running."""
    process = subprocess.Popen(
        [*BENCH, "record", "--upstream", upstream, "--listen", "127.0.0.1:0", "--out", str(out), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert " at http://127.0.0.1:" in ready, ready + (process.stderr.read() if process.stderr else "")
        yield process, ready.split(" at ")[1].split()[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_killed_proxy_loses_nothing_it_answered(tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    with (
        serve_in_thread(MOCK) as server,
        bench_record(f"http://127.0.0.1:{server.port}", out) as (process, url),
    ):
        for index in range(5):
            post(url, "/v1/completions", completion(f"request {index}"))

        def in_flight() -> None:
            with contextlib.suppress(httpx.HTTPError):  # its proxy is killed under it
                post(url, "/v1/completions", completion("mock-fault=hang"))

        hanging = threading.Thread(target=in_flight, daemon=True)
        hanging.start()
        deadline = time.monotonic() + 10
        while len(server.logs) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    trace = read_trace(out)
    assert trace.request_count == 5 and trace.header.source == "recorded"


def test_ctrl_c_ends_with_a_summary_and_an_existing_trace_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    with serve_in_thread(MOCK) as server:
        upstream = f"http://127.0.0.1:{server.port}"
        with bench_record(upstream, out) as (process, url):
            chat_turns_at(url, 2)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1] == (
            f"recorded 2 requests in 1 sessions (prompt 16 tokens, output 8 tokens) to {out}"
        )
        before = out.read_bytes()
        again = subprocess.run(
            [*BENCH, "record", "--upstream", upstream, "--out", str(out), "--listen", "127.0.0.1:0"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
    assert f"--out {out}: already exists" in again.stderr and out.read_bytes() == before
    assert read_trace(out).request_count == 2


def chat_turns_at(url: str, turns: int) -> None:
    messages = [{"role": "user", "content": "hello"}]
    for _ in range(turns):
        response, _ = post(url, "/v1/chat/completions", chat(messages))
        messages += [response.json()["choices"][0]["message"], {"role": "user", "content": "more"}]


def test_the_openai_client_through_the_proxy_and_no_key_on_disk(tmp_path: Path) -> None:
    """The official client sees the same answers through the proxy as directly; its API key reaches the
    server and never the trace, even with --keep-text."""
    question = [{"role": "user", "content": "Say hi."}]
    with recording(tmp_path, keep_text=True) as (server, proxy, out):
        seen, clients = [], []
        for base in (f"http://127.0.0.1:{server.port}/v1", proxy.url + "/v1"):
            client = openai.OpenAI(base_url=base, api_key=SECRET, max_retries=0)
            clients.append(client)
            whole = client.chat.completions.create(model="mock", messages=question, max_tokens=5)
            stream = client.chat.completions.create(
                model="mock", messages=question, max_tokens=5, stream=True
            )
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            text = client.completions.create(model="mock", prompt="Hi", max_tokens=3, stream=False)
            seen.append(
                (
                    whole.choices[0].message.content,
                    whole.usage.completion_tokens,
                    streamed,
                    text.choices[0].text,
                )
            )
        for client in clients:
            client.close()
        assert all(log.headers["authorization"] == f"Bearer {SECRET}" for log in server.logs)
    assert seen[0] == seen[1] == (" t0 t1 t2 t3 t4", 5, " t0 t1 t2 t3 t4", " t0 t1 t2")
    recorded = out.read_text()
    assert SECRET not in recorded and "Bearer" not in recorded and "Say hi." in recorded
    assert read_trace(out).request_count == 3


def test_token_id_prompts_get_chained_block_hashes_and_no_tokenize_is_said_once(tmp_path: Path) -> None:
    """A prompt of token ids is hashed as it is (the mock counts 8 prompt tokens, so 8 ids); a text
    prompt, which the mock cannot tokenize (no /tokenize), is recorded without hash ids, said once."""
    shared = [11, 12, 13, 14]
    with recording(tmp_path, block_size=4) as (_, proxy, out):
        for tail in ([15, 16, 17, 18], [25, 26, 27, 28]):
            post(proxy.url, "/v1/completions", completion("") | {"prompt": shared + tail})
        for _ in range(2):
            post(proxy.url, "/v1/completions", completion("text"))
    one, two, text, again = read_trace(out).requests()
    assert one.hash_ids == chained_block_hashes([*shared, 15, 16, 17, 18], 4)
    assert one.hash_ids[0] == two.hash_ids[0] and one.hash_ids[1] != two.hash_ids[1]
    assert text.hash_ids == again.hash_ids == []
    assert [w for w in proxy.warnings if "/tokenize" in w] == [
        "the upstream has no /tokenize (HTTP 404): recording prompt token counts without hash ids "
        "(pass --tokenizer PATH for them)"
    ]


@given(
    prefix=st.lists(st.integers(0, 2**31), max_size=40),
    left=st.lists(st.integers(0, 2**31), max_size=20),
    right=st.lists(st.integers(0, 2**31), max_size=20),
    block_size=st.integers(1, 8),
)
def test_equal_prefixes_give_equal_hash_ids_and_only_they_do(
    prefix: list[int], left: list[int], right: list[int], block_size: int
) -> None:
    a, b = chained_block_hashes(prefix + left, block_size), chained_block_hashes(prefix + right, block_size)
    shared_blocks = len(prefix) // block_size
    assert a[:shared_blocks] == b[:shared_blocks]
    assert len(a) == -(-len(prefix + left) // block_size)
    tokens_a, tokens_b = prefix + left, prefix + right
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        same_prefix = tokens_a[: (k + 1) * block_size] == tokens_b[: (k + 1) * block_size]
        assert (x == y) == same_prefix
        assert 0 <= x < 2**63


def test_hash_ids_are_the_same_in_every_process() -> None:
    """blake2b over the packed ids, not Python's salted hash(): a fixed value, in a fresh process too."""
    code = "from flowperf.sessions.hashing import chained_block_hashes as h; print(h(list(range(130)), 64))"
    fresh = subprocess.run(
        [BENCH[0], "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "123"}
    )
    assert fresh.stdout.strip() == str(chained_block_hashes(list(range(130)), 64))
    assert chained_block_hashes([1, 2, 3], 2) == GOLDEN


GOLDEN = [8901564848246840783, 6429590178431291371]  # written once; a change breaks old recordings


@pytest.mark.engine
@pytest.mark.slow
def test_recording_a_flowperf_run_against_a_real_vllm_server(tmp_path: Path, tiny_model: Path) -> None:
    """`bench run --engine openai` through `bench record` in front of a real vLLM server: one session per
    workflow (the engine's X-Session-Id), each a chain of needs, every answered LLM step once with the
    prompt tokens the run measured, and hash ids from the server's /tokenize covering exactly those tokens
    (the shared system prompt gives both sessions the same first block). The tiny model's 10,240-token
    context ends the longer sessions with an HTTP 400, which reaches the run through the proxy as the
    server sent it and is not recorded."""
    from flowperf.config import EngineConfig
    from flowperf.engines.server import ServerRegistry

    registry = ServerRegistry()
    server, reused = registry.acquire(
        EngineConfig(), tiny_model, port=None, max_servers=3, start_timeout_s=600
    )
    out = tmp_path / "recorded.jsonl"
    try:
        with bench_record(server.base_url, out) as (process, url):
            run = subprocess.run(
                [*BENCH, "run", "--engine", "openai", "--base-url", url, "--flow", "coding_agent", "-n", "2",
                 "--warmup", "0", "--no-progress", "--out", str(tmp_path / "runs"), "--run-id", "rec"],
                cwd=ROOT, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)
    finally:
        if not reused:  # a server this test started (another test's is left to it)
            registry.stop(server.id)
    assert run.returncode in (0, 3), run.stderr[-2000:]
    assert process.returncode == 130
    steps = [
        json.loads(line) for line in (tmp_path / "runs" / "rec" / "steps.jsonl").read_text().splitlines()
    ]
    llm = [step for step in steps if step.get("kind", "llm") == "llm" and step["status"] == "ok"]
    failed = [step for step in steps if step["status"] == "failed"]
    assert all("maximum context length" in step["error_message"] for step in failed)
    trace = read_trace(out)
    assert trace.request_count == len(llm) >= 20 and len(trace.sessions) == 2
    for session in trace.sessions:
        flow_steps = sorted(
            (s for s in llm if session.id == f"rec-{s['flow_id']}"), key=lambda s: s["start_offset_ms"]
        )
        requests = session.requests
        assert [r.prompt_tokens for r in requests] == [s["prompt_tokens"] for s in flow_steps]
        assert [r.output_tokens for r in requests] == [s["output_tokens"] for s in flow_steps]
        assert [r.needs for r in requests] == [[], *([previous.id] for previous in requests[:-1])]
        assert all(len(r.hash_ids) == -(-r.prompt_tokens // 64) for r in requests)
        assert all(r.api == "chat" and r.streaming and r.ttft_ms is not None for r in requests)
    first, second = (session.requests[0].hash_ids for session in trace.sessions)
    assert first[0] == second[0]
