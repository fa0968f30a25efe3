"""Persistent local servers and the HTTP engine on a real vLLM server on 127.0.0.1.

One server (the tiny model, default settings) is shared by the module; a second, private one is started
by the CLI tests, reused across two runs, and finally killed mid-run. Every server these tests start is
stopped at the end, by pid, through the registry that started it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from flowperf.config import EngineConfig
from flowperf.engines.base import GenerationParams, TokenPrompt
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine
from flowperf.engines.server import ServerRecord, ServerRegistry, healthy, server_arguments
from flowperf.errors import UserError
from flowperf.run.timing import parse_timing_line
from flowperf.rundir.summary_schema import RunSummary
from helpers import BENCH, ROOT, run_bench

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PRIVATE = ["--max-model-len", "1024"]  # a configuration no other test uses, so its server is ours alone


@pytest.fixture(scope="module")
def registry(flowperf_home: Path) -> ServerRegistry:
    return ServerRegistry()


@pytest.fixture(scope="module")
def server(registry: ServerRegistry, tiny_model: Path):
    record, _ = registry.acquire(EngineConfig(), tiny_model, port=None, max_servers=3, start_timeout_s=600)
    yield record
    registry.stop(None, everything=True)


def http_engine(record: ServerRecord, **options) -> OpenAIHttpEngine:
    return OpenAIHttpEngine(HttpClientConfig(base_url=record.base_url, **options))


def generate(engine: OpenAIHttpEngine, prompts: list[str], max_tokens: int = 16) -> list:
    async def go():
        await engine.start()
        try:
            params = GenerationParams(max_tokens=max_tokens)
            return await asyncio.gather(*(engine.generate(p, params, f"t{i}") for i, p in enumerate(prompts)))
        finally:
            await engine.shutdown()

    return asyncio.run(go())


def test_server_command_line_follows_the_engine_settings(tmp_path: Path) -> None:
    argv = server_arguments(EngineConfig(kv_cache_gib=0.5), tmp_path, 8123, on_gpu=False)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert "--host 127.0.0.1 --port 8123" in joined
    assert "--enforce-eager" in argv and "--block-size 32" in joined
    assert f"--kv-cache-memory-bytes {512 * 1024**2}" in joined
    assert "--enable-prompt-tokens-details" in argv and "--enable-per-request-metrics" in argv
    gpu = server_arguments(EngineConfig(cudagraph_capture_sizes=[4, 1]), tmp_path, 1, on_gpu=True)
    assert "--enforce-eager" not in gpu
    assert gpu[gpu.index("--compilation-config") + 1] == json.dumps(
        {"cudagraph_capture_sizes": [1, 4], "cudagraph_mode": "FULL_AND_PIECEWISE"}, sort_keys=True
    )


def test_http_engine_measures_like_the_in_process_engine(server: ServerRecord, tiny_model: Path) -> None:
    prompt = "You are reviewing a design note titled flowperf. " * 6
    first, again = generate(http_engine(server), [prompt, prompt + " again"], max_tokens=16)
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert first.prompt_tokens == len(tokenizer.encode(prompt).ids)
    assert first.output_tokens == again.output_tokens == 16 and first.finish_reason == "length"
    assert 1 <= len(first.itl_ms) <= 15 and 0 < first.ttft_ms < first.e2e_ms
    assert first.engine_ttft_ms is not None and first.engine_queue_ms is not None
    (third,) = generate(http_engine(server), [prompt], max_tokens=4)
    assert third.cached_prompt_tokens >= 32  # prompt_tokens_details from the managed server


def test_a_transcript_and_token_ids_reach_the_server_as_the_in_process_engine_sends_them(
    server: ServerRecord, tiny_model: Path
) -> None:
    """A conversation turn goes to /v1/chat/completions and costs exactly the tokens of the model's chat
    template (what the in-process engine sends, tests/test_agentic_runs.py); a token-id prompt goes as
    it is, and a second one sharing its first 96 ids finds them in the prefix cache."""
    transcript = (
        {"role": "system", "content": "You are a careful assistant. " * 10},
        {"role": "user", "content": "Fix the failing test."},
        {"role": "assistant", "content": "read_file tests/test_x.py"},
        {"role": "tool", "content": "def test_x(): assert 1 == 2", "tool_call_id": "call_2"},
    )
    (turn,) = generate(http_engine(server), [transcript], max_tokens=4)
    rendered = AutoTokenizer.from_pretrained(tiny_model).apply_chat_template(
        list(transcript), tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert turn.prompt_tokens == len(rendered) and turn.output_tokens == 4
    shared = tuple(range(200, 296))
    first, second = (
        TokenPrompt((*shared, *tail)) for tail in (tuple(range(300, 340)), tuple(range(340, 360)))
    )
    (one,) = generate(http_engine(server), [first], max_tokens=3)
    (two,) = generate(http_engine(server), [second], max_tokens=3)
    assert (one.prompt_tokens, two.prompt_tokens) == (136, 116)
    assert two.cached_prompt_tokens == 96 and one.output_tokens == two.output_tokens == 3


def histogram_sums(record: ServerRecord) -> dict[str, float]:
    """The server's own Prometheus histogram sums (seconds) for queueing and prefill."""
    import httpx

    text = httpx.get(f"{record.base_url}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        for metric in ("vllm:request_queue_time_seconds_sum", "vllm:request_prefill_time_seconds_sum"):
            if name.startswith(metric):
                sums[metric] = sums.get(metric, 0.0) + float(value)
    return sums


def test_engine_times_over_http_agree_with_the_servers_histograms(server: ServerRecord) -> None:
    """engine_queue_ms and engine_ttft_ms - engine_queue_ms (from the per-request metrics the server sends)
    add up to what the server's own Prometheus histograms recorded for the same requests, and the
    client's TTFT always holds the engine's (its front end and the transport come on top)."""
    before = histogram_sums(server)
    prompts = [f"Request {i}: review the harness and its numbers. " * 4 for i in range(8)]
    results = generate(http_engine(server, concurrency=8), prompts, max_tokens=8)
    after = histogram_sums(server)
    queue_s = sum(r.engine_queue_ms for r in results) / 1000.0
    prefill_s = sum(r.engine_ttft_ms - r.engine_queue_ms for r in results) / 1000.0
    assert queue_s == pytest.approx(
        after["vllm:request_queue_time_seconds_sum"] - before["vllm:request_queue_time_seconds_sum"], abs=1e-3
    )
    assert prefill_s == pytest.approx(
        after["vllm:request_prefill_time_seconds_sum"] - before["vllm:request_prefill_time_seconds_sum"],
        abs=1e-3,
    )
    assert all(0 <= r.engine_queue_ms < r.engine_ttft_ms <= r.ttft_ms for r in results)


def test_chat_api_and_model_checks(server: ServerRecord) -> None:
    (chat,) = generate(http_engine(server, api="chat"), ["Summarize: the harness works."], max_tokens=8)
    assert chat.output_tokens == 8
    with pytest.raises(UserError, match="--model nope: not served at"):
        generate(http_engine(server, model="nope"), ["x"])


def test_stale_state_is_detected_and_nothing_foreign_is_signalled(registry: ServerRegistry, server) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = json.loads(registry.state_path.read_text())
        template = state["servers"][0]
        state["servers"] += [
            template | {"id": "deadpid0", "pid": gone.pid},
            template | {"id": "notours0", "pid": bystander.pid},
        ]
        registry.state_path.write_text(json.dumps(state))
        assert [record.id for record in registry.servers()] == [server.id]
        assert bystander.poll() is None  # alive: a pid that is not our server is never signalled
        registry.state_path.write_text("{ this is not json")
        assert registry.servers() == []  # a damaged state file costs reuse, never a crash
    finally:
        bystander.kill()
        bystander.wait()
        registry.state_path.write_text(json.dumps({"servers": [server.model_dump()]}))


def test_client_settings_reuse_the_server_and_two_interrupts_leave_it_running(
    server: ServerRecord, tmp_path: Path
) -> None:
    """Only what defines the engine picks the server (the API, timeouts and the cap do not); and a run's
    second Ctrl-C, which kills the run's own processes, never reaches the persistent server it uses."""
    process = subprocess.Popen(
        [
            *BENCH, "run", "--engine", "server", "--api", "chat",
            "--max-servers", "5", "-n", "40", "--max-tokens", "8", "--no-progress",
            "--out", str(tmp_path / "runs"), "--run-id", "interrupted",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        rows = tmp_path / "runs" / "interrupted" / "workflows.csv"
        deadline = time.monotonic() + 120
        while not (rows.exists() and len(rows.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        time.sleep(0.02)  # the second while the first's graceful stop is still going on
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr[-2000:]
    init = next(parse_timing_line(line) for line in stdout.splitlines() if "engine_init_ms" in line)
    assert init["reused"] == "true"
    assert [record.id for record in ServerRegistry().servers()] == [server.id]
    assert psutil.Process(server.pid).status() != psutil.STATUS_ZOMBIE and healthy(server)


def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_bench("serve", "start", "--server-port", str(port), *PRIVATE, timeout=120)
    assert done.returncode == 2
    assert f"--server-port {port}: 127.0.0.1:{port} is already in use" in done.stderr


def test_second_run_reuses_the_server_and_a_killed_server_ends_the_run(
    registry: ServerRegistry, tmp_path: Path
):
    common = [
        "--engine",
        "server",
        *PRIVATE,
        "--out",
        str(tmp_path / "runs"),
        "--no-progress",
        "--max-tokens",
        "8",
    ]
    first = run_bench("run", "-n", "2", *common, "--run-id", "first", timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_bench("run", "-n", "2", *common, "--run-id", "second", timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    cold = next(t for t in first.timing() if "engine_init_ms" in t)
    warm = next(t for t in second.timing() if "engine_init_ms" in t)
    assert (cold["engine"], cold["reused"], warm["reused"]) == ("server", "false", "true")
    assert float(warm["engine_init_ms"]) <= 0.05 * float(cold["engine_init_ms"])
    summary = RunSummary.model_validate_json((tmp_path / "runs" / "second" / "summary.json").read_text())
    engine = summary.engine
    assert engine is not None and engine["engine"] == "server" and engine["reused"] is True
    (private,) = [r for r in registry.servers() if r.pid == engine["details"]["server_pid"]]

    out = tmp_path / "runs"
    process = subprocess.Popen(
        [*BENCH, "run", "-n", "40", *common, "--run-id", "killed"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        rows = out / "killed" / "workflows.csv"
        deadline = time.monotonic() + 120
        while not (rows.exists() and len(rows.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        os.killpg(private.pid, signal.SIGKILL)  # the server and its engine processes, which we started
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 3, stderr[-2000:]
    killed = RunSummary.model_validate_json((out / "killed" / "summary.json").read_text())
    assert killed.counts.workflows_done == 40 and killed.counts.workflows_failed >= 1
    assert not psutil.pid_exists(private.pid) or psutil.Process(private.pid).status() == psutil.STATUS_ZOMBIE
    assert private.id not in [r.id for r in registry.servers()]  # found stale and dropped
