"""Several endpoints for `--engine openai`: `--base-url` repeated names replicas of one deployment, and
`--routing` shares requests among them (session: a workflow's every request to replica `index mod N`;
round-robin: each request to the next). Checked against two deterministic mock servers: where each request
went, what the run directory records, and the errors a wrong or dead URL gives."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowperf.cli.options import base_urls
from flowperf.config import RunConfig
from flowperf.diagnostics.mockserver import MockConfig, MockOpenAIServer, serve_in_thread
from flowperf.engines.base import GenerationParams
from flowperf.engines.openai_http import HttpClientConfig, OpenAIHttpEngine, session_key
from flowperf.errors import UserError
from flowperf.run.benchmark import RunResult
from flowperf.rundir.store import RunStore
from helpers import run_bench, run_in_process

FAST = MockConfig(ttft_ms=2, itl_ms=1, lifetime_s=120)
DEAD = "http://127.0.0.1:9"


def url(server: MockOpenAIServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@contextlib.contextmanager
def two_servers(second: MockConfig = FAST) -> Iterator[tuple[MockOpenAIServer, MockOpenAIServer]]:
    with serve_in_thread(FAST) as first, serve_in_thread(second) as other:
        yield first, other


def run_on(tmp_path: Path, urls: list[str], **engine: Any) -> RunResult:
    """A short router_specialists run (a classifier turn, two parallel specialists, a merge) on `urls`."""
    engine = {"kind": "openai", "base_url": urls, "model": "mock"} | engine
    return run_in_process(
        tmp_path / "runs", "r", engine, flow="router_specialists", num_flows=6, max_tokens=3
    )


def served_by(result: RunResult, servers: tuple[MockOpenAIServer, ...]) -> dict[int, list[int]]:
    """For each workflow index, the server (0, 1) that answered each of its steps, in step order; the
    request ids come from the runner's own records, not from the engine's routing."""
    where = {log.request_id: position for position, server in enumerate(servers) for log in server.logs}
    steps = [step for step in RunStore(result.run_dir).read_steps() if step.kind == "llm"]
    assert steps and len(where) == len(steps) == sum(len(server.logs) for server in servers)
    flows: dict[int, list[int]] = {}
    for step in sorted(steps, key=lambda step: (step.flow_index, step.step_index)):
        flows.setdefault(step.flow_index, []).append(where[f"r-{step.flow_id}-{step.node}"])
    return flows


def test_session_routing_keeps_each_workflow_on_one_replica_split_by_index(tmp_path: Path) -> None:
    with two_servers() as servers:
        result = run_on(tmp_path, [url(server) for server in servers])
        flows = served_by(result, servers)
    assert result.exit_code == 0
    assert len(flows) == 6 and all(len(steps) == 4 for steps in flows.values())  # classify, 2 branches, merge
    assert {index: set(steps) for index, steps in flows.items()} == {index: {index % 2} for index in range(6)}
    recorded = RunStore(result.run_dir).read_steps()
    assert len(recorded) == 24 and all(step.endpoint == step.flow_index % 2 for step in recorded)


def test_round_robin_spreads_requests_one_by_one(tmp_path: Path) -> None:
    with two_servers() as servers:
        result = run_on(tmp_path, [url(server) for server in servers], routing="round-robin")
        flows = served_by(result, servers)
        counts = [len(server.logs) for server in servers]
    assert result.exit_code == 0 and counts == [12, 12]
    assert all(set(steps) == {0, 1} for steps in flows.values())  # every workflow used both replicas


def test_the_engine_says_which_replica_served_each_request() -> None:
    async def go(settings: HttpClientConfig, request_ids: list[str]) -> list[int | None]:
        engine = OpenAIHttpEngine(settings)
        await engine.start()
        try:
            return [(await engine.generate("hi", GenerationParams(2), rid)).endpoint for rid in request_ids]
        finally:
            await engine.shutdown()

    ids = [f"run-7-flow-{index:06d}-step" for index in (0, 1, 2, 3, 3, 3)]
    with two_servers() as (first, second):
        replicas = HttpClientConfig(url(first), other_urls=(url(second),), model="mock")
        assert asyncio.run(go(replicas, ids)) == [0, 1, 0, 1, 1, 1]
        spread = HttpClientConfig(url(first), other_urls=(url(second),), model="mock", routing="round-robin")
        assert asyncio.run(go(spread, ids)) == [0, 1, 0, 1, 0, 1]
        assert asyncio.run(go(HttpClientConfig(url(first), model="mock"), ids[:2])) == [None, None]
        assert [log.request_id for log in second.logs] == [
            ids[1],
            ids[3],
            ids[4],
            ids[5],
            ids[1],
            ids[3],
            ids[5],
        ]


def test_a_workflow_is_read_from_its_request_id() -> None:
    """The runner names requests `{run_id}-{flow_id}-{node}`; flow ids end in the workflow's index."""
    assert session_key("20250101-120000-chat-ab12-chat-000042-merge") == 42
    assert session_key("r-chat-warmup-000003-specialist[1]") == 3
    assert session_key("r-chat-000005-turn#2") == 5
    assert session_key("odd-name-x") == session_key("odd-name-y") != session_key("other-name-x")


def test_every_replica_must_serve_the_model() -> None:
    async def start(settings: HttpClientConfig) -> None:
        engine = OpenAIHttpEngine(settings)
        try:
            await engine.start()
        finally:
            await engine.shutdown()

    with two_servers(MockConfig(ttft_ms=2, itl_ms=1, lifetime_s=60, model="other")) as (first, second):
        settings = HttpClientConfig(url(first), other_urls=(url(second),))
        with pytest.raises(UserError, match=rf"not served at {url(second)} \(replica 2\)"):
            asyncio.run(start(settings))


def test_config_json_and_engine_info_record_every_replica(tmp_path: Path) -> None:
    with two_servers() as servers:
        urls = [url(server) for server in servers]
        result = run_on(tmp_path, urls)
    recorded = json.loads((result.run_dir / "config.json").read_text())
    engine = recorded["config"]["engine"]
    assert (engine["base_url"], engine["routing"]) == (urls, "session")
    resumed = RunConfig.model_validate(recorded["config"])
    assert resumed.fingerprint() == recorded["config_sha256"]
    assert resumed.shaping_config()["engine"]["routing"] == "session"
    spread = resumed.model_copy(
        update={"engine": resumed.engine.model_copy(update={"routing": "round-robin"})}
    )
    assert spread.fingerprint() != resumed.fingerprint()
    details = json.dumps(recorded)
    assert f'"endpoints": {json.dumps(urls)}' in details and '"routing": "session"' in details


def test_one_base_url_keeps_its_config_and_fingerprint() -> None:
    """A single --base-url (or a list of one) is recorded as it always was, and --routing changes nothing."""
    single = RunConfig.model_validate({"engine": {"kind": "openai", "base_url": "http://h:1"}})
    listed = RunConfig.model_validate({"engine": {"kind": "openai", "base_url": ["http://h:1"]}})
    routed = RunConfig.model_validate(
        {"engine": {"kind": "openai", "base_url": "http://h:1", "routing": "round-robin"}}
    )
    assert single.engine.base_url == listed.engine.base_url == "http://h:1"
    assert "routing" not in single.shaping_config()["engine"]
    assert single.fingerprint() == listed.fingerprint() == routed.fingerprint()
    two = RunConfig.model_validate({"engine": {"kind": "openai", "base_url": ["http://h:1", "http://h:2"]}})
    assert two.fingerprint() != single.fingerprint()
    assert base_urls(["http://h:1"]) == "http://h:1"
    assert base_urls(["http://h:1", "https://h:2"]) == ["http://h:1", "https://h:2"]


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["http://h:1", "ftp://h:2"], "--base-url ftp://h:2: not an http:// or https:// URL"),
        (["http://h:1", "http://h:1/"], "--base-url: http://h:1 is listed twice"),
    ],
)
def test_a_wrong_base_url_is_a_usage_error_naming_it(urls: list[str], message: str) -> None:
    args = [part for item in urls for part in ("--base-url", item)]
    done = run_bench("run", "--engine", "openai", *args, "-n", "1", "--no-progress", timeout=120)
    assert done.returncode == 2 and message in " ".join(done.stderr.split()), done.stderr[-2000:]


def test_a_dead_replica_stops_the_run_at_start_naming_it(tmp_path: Path) -> None:
    with serve_in_thread(FAST) as live:
        done = run_bench(
            "run", "--engine", "openai", "--base-url", url(live), "--base-url", DEAD, "-n", "1",
            "--warmup", "0", "--out", str(tmp_path), "--no-progress", timeout=120,
        )  # fmt: skip
        sent = len(live.logs)
    stderr = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stderr[-2000:]  # the engine could not start, as for one dead URL
    assert f"{DEAD} (replica 2): cannot reach the server" in stderr and sent == 0
