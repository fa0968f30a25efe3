"""Agentic workflows run end to end: over HTTP against the deterministic mock server (what is sent, when,
and what the records say about it), and in process on the real engine (the chat template, the growing
transcript and its prefix-cache reuse).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import AutoTokenizer

from faults import FaultyEngine
from flowperf.config import RunConfig
from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.records import StepRecord
from flowperf.rundir.store import STEPS, RunStore
from helpers import ROOT

RECORDS = [{"id": f"r{k}", "topic": f"topic {k}"} for k in range(4)]
TOKENS = 3


def answer(tokens: int = TOKENS) -> str:
    """What the mock server streams for `tokens` tokens."""
    return "".join(f" t{index}" for index in range(tokens))


def write_flow(tmp_path: Path, document: dict[str, Any]) -> Path:
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"name": "agent", "fixture": {"path": "f.jsonl"}} | document))
    return path


def config_for(tmp_path: Path, flow: Path, **overrides: Any) -> RunConfig:
    settings = {
        "flow": str(flow),
        "fixtures_dir": str(ROOT / "fixtures"),
        "max_tokens": TOKENS,
        "warmup": 0,
        "monitor": {"sample_interval_s": 0},
        "output": {"out_dir": str(tmp_path / "runs"), "run_id": "r"},
    }
    return RunConfig.model_validate(settings | overrides)


def run_on_mock(tmp_path: Path, flow: Path, mock: MockConfig, **overrides: Any):
    with serve_in_thread(mock) as server:
        engine = {"kind": "openai", "base_url": f"http://127.0.0.1:{server.port}", "model": "mock"}
        config = config_for(tmp_path, flow, engine=engine, **overrides)
        result = asyncio.run(run_benchmark(config, RunHooks(echo=lambda _: None)))
        return result, list(server.logs)


def steps_of(result) -> list[StepRecord]:
    return RunStore(result.run_dir).read_steps()


CODING = {
    "conversation": {"system": "You fix {{ fixture.topic }}."},
    "steps": [
        {"id": "task", "prompt": "Task {{ fixture.id }}"},
        {
            "loop": "act",
            "repeat": 2,
            "steps": [
                {"id": "call"},
                {"id": "tool", "tool": {"duration_ms": 5, "result": "ran {{ fixture.id }} turn {{ turn }}"}},
            ],
        },
        {"id": "pause", "think": {"duration_ms": 1}},
        {"id": "final", "prompt": "Done?"},
    ],
}


def test_a_conversation_sends_the_whole_transcript_as_chat_messages(tmp_path: Path) -> None:
    result, logs = run_on_mock(tmp_path, write_flow(tmp_path, CODING), MockConfig(ttft_ms=2, itl_ms=1),
                               num_flows=2)  # fmt: skip
    sent = [log.body["messages"] for log in logs if "agent-000001" in log.request_id]
    system = {"role": "system", "content": "You fix topic 1."}
    said = {"role": "assistant", "content": answer()}
    first = [system, {"role": "user", "content": "Task r1"}]
    second = [*first, said]
    third = [*second, said, {"role": "tool", "content": "ran r1 turn 0", "tool_call_id": "call_2"}]
    final = [*third, said, {"role": "tool", "content": "ran r1 turn 1", "tool_call_id": "call_4"},
             {"role": "user", "content": "Done?"}]  # fmt: skip
    assert sent == [first, second, third, final]
    records = [s for s in steps_of(result) if s.flow_index == 1]
    assert [(s.node, s.kind, s.depth) for s in sorted(records, key=lambda s: s.step_index)] == [
        ("task", "llm", 1), ("call#0", "llm", 2), ("tool#0", "tool", None), ("call#1", "llm", 3),
        ("tool#1", "tool", None), ("pause", "think", None), ("final", "llm", 4),
    ]  # fmt: skip
    assert result.summary.counts.workflows_ok == 2


ROUTER = {
    "conversation": {"system": "Support for {{ fixture.id }}."},
    "steps": [
        {"id": "classify", "prompt": "Classify {{ fixture.topic }}"},
        {"id": "billing", "prompt": "Billing view", "needs": ["classify"]},
        {
            "id": "technical",
            "prompt": "Technical view {{ fixture.mark | default('') }}",
            "needs": ["classify"],
        },
        {
            "id": "merge",
            "prompt": "Merge: {{ steps.billing.output }} | {{ steps.technical.output }}",
            "needs": ["billing", "technical"],
        },
    ],
}


def test_branches_run_side_by_side_and_the_makespan_follows_the_critical_path(tmp_path: Path) -> None:
    """Each call takes ~150 ms on the mock: the two branches overlap, so a workflow takes three calls'
    time, not four, and its critical path (what held it up) accounts for all of it but the gaps."""
    result, logs = run_on_mock(tmp_path, write_flow(tmp_path, ROUTER), MockConfig(ttft_ms=150, itl_ms=1),
                               num_flows=2)  # fmt: skip
    for flow_index in (0, 1):
        steps = {s.step_id: s for s in steps_of(result) if s.flow_index == flow_index}
        billing, technical = steps["billing"], steps["technical"]
        # side by side on the harness's own clock: both start once classify has ended, and each starts
        # before the other ends (run one after the other, they would be ~150 ms apart, not overlapping)
        classify_end = steps["classify"].end_offset_ms
        assert classify_end is not None and billing.end_offset_ms and technical.end_offset_ms
        assert min(billing.start_offset_ms, technical.start_offset_ms) >= classify_end
        assert max(billing.start_offset_ms, technical.start_offset_ms) < min(
            billing.end_offset_ms, technical.end_offset_ms
        )
        assert billing.needs == technical.needs == [steps["classify"].step_index]
        assert sorted(steps["merge"].needs) == sorted([billing.step_index, technical.step_index])
    rows = {int(row["flow_index"]): row for row in RunStore(result.run_dir).read_workflows()}
    for row in rows.values():
        makespan, summed = float(row["workflow_ms"]), float(row["step_ms_sum"])
        assert 3 * 150 < makespan < summed - 100
        # what the critical path leaves out is scheduling gaps; a wrong path (a branch's call missing or
        # counted twice) is off by a whole call, 150 ms: the margin is two thirds of that
        assert 0 <= makespan - float(row["critical_path_ms"]) < 100
        assert float(row["llm_ms"]) == pytest.approx(float(row["critical_path_ms"]))
    messages = {log.request_id.rsplit("-", 1)[-1]: log.body["messages"] for log in logs
                if "agent-000000" in log.request_id}  # fmt: skip
    classify = messages["classify"] + [{"role": "assistant", "content": answer()}]
    assert messages["billing"] == [*classify, {"role": "user", "content": "Billing view"}]
    assert messages["technical"][: len(classify)] == classify  # each branch forks the transcript
    assert all(m["content"] != "Billing view" for m in messages["technical"])
    assert messages["merge"][-1]["content"] == f"Merge: {answer()} | {answer()}"


def test_a_failed_branch_fails_its_workflow_and_keeps_what_ran(tmp_path: Path) -> None:
    """The technical branch of record 0 fails (HTTP 503): its sibling still finishes and is recorded,
    the join never runs, and the row proves a finished (failed) workflow with exactly its step lines."""
    RECORDS[0]["mark"] = "mock-fault=http_error"
    try:
        result, _ = run_on_mock(tmp_path, write_flow(tmp_path, ROUTER), MockConfig(ttft_ms=20, itl_ms=1),
                                num_flows=2)  # fmt: skip
    finally:
        RECORDS[0].pop("mark")
    store = RunStore(result.run_dir)
    failed = [s for s in store.read_steps() if s.flow_index == 0]
    assert sorted((s.step_id, s.status) for s in failed) == [
        ("billing", "ok"), ("classify", "ok"), ("technical", "failed")
    ]  # fmt: skip
    row = next(row for row in store.read_workflows() if row["flow_index"] == "0")
    assert (row["status"], row["steps"], row["steps_ok"], row["steps_failed"]) == ("failed", "4", "2", "1")
    assert store.completed_flow_indices() == {0, 1}
    assert result.summary.counts.workflows_failed == 1


def test_tool_and_think_pauses_take_their_drawn_time(tmp_path: Path) -> None:
    flow = write_flow(tmp_path, {"steps": [
        {"id": "ask", "prompt": "x"},
        {"id": "tool", "tool": {"duration_ms": 60, "result": "r"}},
        {"id": "wait", "think": {"duration_ms": {"uniform": [30, 40]}}},
        {"id": "use", "prompt": "{{ steps.tool.output }}!"},
    ]})  # fmt: skip
    result, logs = run_on_mock(tmp_path, flow, MockConfig(ttft_ms=2, itl_ms=1), num_flows=2)
    for record in steps_of(result):
        if record.step_id == "tool":
            assert 60 <= record.step_ms < 90
        if record.step_id == "wait":
            assert 30 <= record.step_ms < 70
    assert [log.body["prompt"] for log in logs if log.body["prompt"] != "x"] == ["r!", "r!"]
    rows = RunStore(result.run_dir).read_workflows()
    assert all(float(row["tool_ms"]) >= 90 for row in rows)


@pytest.mark.engine
def test_in_process_turns_use_the_chat_template_and_reuse_the_cached_transcript(
    engine, engine_loop, tiny_model: Path, tmp_path: Path
) -> None:
    """The engine's own prompt-token count equals the tiny model's chat template applied to the
    transcript (an independent rendering by transformers), and every later turn finds the earlier
    transcript in the prefix cache."""
    flow = write_flow(tmp_path, {
        "conversation": {"system": "You are a careful assistant for {{ fixture.topic }}. " * 8},
        "steps": [{"id": "task", "prompt": "Begin {{ fixture.id }}"},
                  {"loop": "act", "repeat": 3, "steps": [
                      {"id": "call", "max_tokens": 4},
                      {"id": "tool", "tool": {"duration_ms": 1, "result": {"filler_tokens": 64}}}]}],
    })  # fmt: skip
    config = config_for(tmp_path, flow, num_flows=1, max_tokens=None, output={
        "out_dir": str(tmp_path / "runs"), "run_id": "r", "save_text": True})  # fmt: skip
    shared = FaultyEngine(engine)  # passes every call through, and never shuts the session's engine down
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda _: None), engine=shared))
    records = sorted((s for s in steps_of(result) if s.kind == "llm"), key=lambda s: s.step_index)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    system = {"role": "system", "content": "You are a careful assistant for topic 0. " * 8}
    first = [system, {"role": "user", "content": "Begin r0"}]
    rendered = tokenizer.apply_chat_template(first, tokenize=True, add_generation_prompt=True)
    assert records[0].prompt_tokens == len(_ids(rendered))
    for earlier, later in itertools.pairwise(records):
        grown_by = 40 if later.turn else 1  # a tool result (64 filler tokens) came between two calls
        assert later.prompt_tokens > earlier.prompt_tokens + grown_by
        assert later.cached_prompt_tokens >= earlier.prompt_tokens - 32  # all but a partial block
    lines = (result.run_dir / STEPS).read_text()
    assert "system: You are a careful assistant" in lines


def _ids(rendered: Any) -> list[int]:
    return list(
        rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered
    )
