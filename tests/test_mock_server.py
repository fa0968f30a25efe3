"""The mock OpenAI server that the client's timing is checked against: its schedule is deterministic,
it records what it did on its own clock, it binds the loopback only and it stops by itself."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from tests.helpers import run_bench

from flowperf.diagnostics.mockserver import MockConfig, MockOpenAIServer, serve_in_thread, spawn

KEY_VARIABLE = "FLOWPERF_SECRET_TEST_KEY"
KEY = "sk-flowperf-canary-7f3a9c1e5b"


def stream(base_url: str, prompt: str, max_tokens: int) -> str:
    body = {"model": "mock", "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    return httpx.post(
        f"{base_url}/v1/completions", json=body, headers={"X-Request-Id": "r1"}, timeout=10
    ).text


def test_tokens_follow_an_absolute_schedule_recorded_on_the_servers_clock() -> None:
    with serve_in_thread(MockConfig(ttft_ms=30, itl_ms=7, lifetime_s=30)) as server:
        text = stream(f"http://127.0.0.1:{server.port}", "hi", 5)
        records = httpx.get(f"http://127.0.0.1:{server.port}/mock/requests").json()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert [event["choices"][0]["finish_reason"] for event in events[:5]] == [None] * 4 + ["length"]
    assert events[5]["usage"]["completion_tokens"] == 5 and text.rstrip().endswith("data: [DONE]")
    (record,) = records
    assert record["request_id"] == "r1" and record["max_tokens"] == 5
    due = [moment - record["arrived"] for moment in record["token_due"]]
    assert due == pytest.approx([0.030 + index * 0.007 for index in range(5)])
    assert all(sent >= due for sent, due in zip(record["token_sent"], record["token_due"], strict=True))


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("error", '"error"'), ("truncated", "t2"), ("short", '"length"')],
)
def test_faults_by_config_or_prompt(fault: str, expected: str) -> None:
    with serve_in_thread(MockConfig(ttft_ms=1, itl_ms=1, fault=fault, lifetime_s=30)) as server:
        by_config = stream(f"http://127.0.0.1:{server.port}", "hi", 16)
    with serve_in_thread(MockConfig(ttft_ms=1, itl_ms=1, lifetime_s=30)) as server:
        by_prompt = stream(f"http://127.0.0.1:{server.port}", f"mock-fault={fault}", 16)
    for text in (by_config, by_prompt):
        assert text.count('"token_ids"') == 3 and expected in text
        assert ('"finish_reason": "length"' in text) == (fault == "short")


def test_http_error_status_and_loopback_only() -> None:
    with serve_in_thread(MockConfig(http_status=429, fault="http_error", lifetime_s=30)) as server:
        body = {"model": "mock", "prompt": "x", "max_tokens": 2}
        reply = httpx.post(f"http://127.0.0.1:{server.port}/v1/completions", json=body, timeout=10)
        assert reply.status_code == 429
        assert server._server is not None
        assert {sock.getsockname()[0] for sock in server._server.sockets} == {"127.0.0.1"}


def test_it_stops_by_itself_and_with_its_parent() -> None:
    async def bounded() -> None:
        server = MockOpenAIServer(MockConfig(lifetime_s=0.2, fault="hang"))
        await server.start()
        await asyncio.wait_for(server.serve_until_stopped(), 5)

    asyncio.run(bounded())
    with spawn(MockConfig(lifetime_s=60)) as spawned:
        assert httpx.get(f"{spawned.base_url}/v1/models").json() == {"data": [{"id": "mock"}]}
    assert spawned.process.returncode == 0  # exited when its stdin (this process) let go


def occurrences(secret: str, roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_the_api_key_is_written_nowhere_by_an_openai_run(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "runs"
    with serve_in_thread(MockConfig(ttft_ms=2, itl_ms=1, lifetime_s=120)) as server:
        done = run_bench(
            "run", "--engine", "openai", "--base-url", f"http://127.0.0.1:{server.port}",
            "--api-key-env", KEY_VARIABLE, "-n", "2", "--max-tokens", "4", "--out", str(out),
            env={KEY_VARIABLE: KEY, "FLOWPERF_HOME": str(home)},
            timeout=240,
        )  # fmt: skip
        sent = {log.headers.get("authorization") for log in server.logs}
    assert done.returncode == 0, done.stderr[-2000:]
    assert sent == {f"Bearer {KEY}"}  # the key was used ...
    (run_dir,) = out.iterdir()
    assert (run_dir / "config.json").is_file() and (run_dir / "steps.jsonl").stat().st_size > 0
    roots = [run_dir, *([home] if home.exists() else [])]
    assert occurrences(KEY, roots) == [] and KEY not in done.stdout + done.stderr  # ... and never written
    # the scan itself can fail: a key in config.json (or anywhere under the roots) is found
    leaked = tmp_path / "leaked"
    shutil.copytree(run_dir, leaked)
    config = leaked / "config.json"
    config.write_text(config.read_text().replace("{", f'{{"api_key": "{KEY}", ', 1))
    assert occurrences(KEY, [leaked]) == [str(config)]
    assert os.environ.get(KEY_VARIABLE) is None
