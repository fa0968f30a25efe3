"""Agentic flow templates: what the graph rules refuse (before anything runs), and what a plan holds.

Plans are pure and seeded, so the properties here are exact: loop counts within their bounds and the
same on every call, one branch per list item, joins waiting for every branch, transcripts forked where
branches start, and critical paths with analytic answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from flowperf.errors import UserError
from flowperf.flows.cache import expand_with_cache
from flowperf.flows.distributions import LogNormal, Uniform, draw, draw_count
from flowperf.flows.graph import load_template
from flowperf.run.critical_path import critical_path
from flowperf.rundir.records import StepRecord
from helpers import ROOT, run_bench

RECORDS = [
    {"id": "a", "chunks": ["one", "two", "three"], "latency": 10},
    {"id": "b", "chunks": ["four", "five"], "latency": 30},
]


def write_flow(tmp_path: Path, steps: list[dict[str, Any]], **extra: Any) -> Path:
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    document = {"name": "g", "fixture": {"path": "f.jsonl", "fields": ["id", "chunks", "latency"]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(document | extra | {"steps": steps}))
    return path


LLM = {"prompt": "Item {{ fixture.id }}", "max_tokens": 2}


@pytest.mark.parametrize(
    ("steps", "extra", "message"),
    [
        (
            [{"id": "a", **LLM, "needs": ["b"]}, {"id": "b", **LLM, "needs": ["a"]}],
            {},
            "steps form a cycle: a -> b -> a",
        ),
        ([{"id": "a", **LLM, "needs": ["zz"]}], {}, "step 'a' needs unknown step 'zz'"),
        ([{"id": "a", **LLM, "needs": ["a"]}], {}, "step 'a' needs itself"),
        (
            [{"loop": "l", "repeat": 2, "steps": [{"id": "x", **LLM}]}, {"id": "b", **LLM, "needs": ["x"]}],
            {},
            "needs 'x', a step inside loop 'l'",
        ),
        (
            [
                {"id": "a", **LLM},
                {"id": "b", **LLM, "needs": []},
                {"id": "c", "prompt": "{{ steps.a.output }}"},
            ],
            {},
            "step 'c' uses the output of step 'a', which it does not need",
        ),
        ([{"id": "a", "prompt": "{{ steps.b.output }}"}, {"id": "b", **LLM}], {}, "which runs later"),
        ([{"id": "a", "prompt": "turn {{ turn }}"}], {}, "step 'a' uses 'turn' outside a loop"),
        ([{"id": "a", "prompt": "{{ item }}"}], {}, "step 'a' uses 'item' but has no for_each"),
        ([{"id": "a", "max_tokens": 2}], {}, "only a conversation flow may call the LLM without one"),
        ([{"loop": "l", "repeat": {"uniform": [0, 3]}, "steps": [{"id": "x", **LLM}]}], {}, "from 1 to 1000"),
        (
            [{"loop": "l", "repeat": {"uniform": [1.5, 3]}, "steps": [{"id": "x", **LLM}]}],
            {},
            "whole numbers",
        ),
        ([{"loop": "l", "repeat": 0, "steps": [{"id": "x", **LLM}]}], {}, "greater than or equal to 1"),
        (
            [
                {
                    "loop": "l",
                    "repeat": {"lognormal": {"median": 3, "sigma": 1}},
                    "steps": [{"id": "x", **LLM}],
                }
            ],
            {},
            "steps.0.repeat",
        ),
        (
            [{"loop": "l", "repeat": 2, "steps": [{"id": "x", **LLM, "needs": []}]}],
            {},
            "steps in a loop run as a chain",
        ),
        (
            [{"id": "t", "tool": {"duration_ms": {"uniform": [5, 1]}}}],
            {},
            "lower bound 5 is above upper bound 1",
        ),
        ([{"id": "t", "tool": {"duration_ms": {"lognormal": {"median": 0, "sigma": 1}}}}], {}, "median"),
        ([{"id": "t", "think": {"duration_ms": -1}}], {}, "think.duration_ms"),
        ([{"id": "t", "tool": {"duration_ms": 5}, "prompt": "x"}], {}, "a tool step takes no prompt"),
        ([{"id": "a", **LLM, "for_each": "pages"}], {}, "fixture field 'pages' not declared"),
        (
            [{"id": "t", "tool": {"duration_ms": {"field": "speed"}}}],
            {},
            "fixture field 'speed' not declared",
        ),
        ([{"id": "a", **LLM}], {"conversation": {"system": "{{ steps.a.output }}"}}, "may use only fixture"),
    ],
)
def test_bad_graphs_are_refused_naming_the_step(
    tmp_path: Path, steps: list[dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    path = write_flow(tmp_path, steps, **extra)
    with pytest.raises(UserError, match=message) as raised:
        load_template(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_bad_graph_stops_bench_run_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    path = write_flow(tmp_path, [{"id": "a", **LLM, "needs": ["b"]}, {"id": "b", **LLM, "needs": ["a"]}])
    done = run_bench("run", "--flow", str(path), "--fixtures-dir", str(ROOT / "fixtures"),
                     "--out", str(tmp_path / "runs"), "--no-progress", timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {path}: steps form a cycle: a -> b -> a (each needs the next)"
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


def test_a_field_distribution_needs_numbers_in_every_record(tmp_path: Path) -> None:
    path = write_flow(tmp_path, [{"id": "t", "tool": {"duration_ms": {"field": "id"}}}])
    with pytest.raises(UserError, match="fixture field 'id' must be a number in every record"):
        expand_with_cache(path, 2, force=True, warn=print)


AGENT = [
    {"id": "task", "prompt": "Task {{ fixture.id }}", "max_tokens": 2},
    {
        "loop": "act",
        "repeat": {"uniform": [2, 5]},
        "steps": [
            {"id": "call", "max_tokens": 2},
            {"id": "run", "tool": {"duration_ms": {"field": "latency"}, "result": {"filler_tokens": 20}}},
        ],
    },
    {"id": "fan", "prompt": "Summarise {{ item }} ({{ item_index }})", "for_each": "chunks",
     "needs": ["task"]},
    {"id": "join", "prompt": "{{ steps.fan.outputs | join(' / ') }} {{ steps.call.output }}",
     "needs": ["act", "fan"]},
]  # fmt: skip


def agent_flows(tmp_path: Path, n: int = 8):
    path = write_flow(tmp_path, AGENT, conversation={"system": "You help with {{ fixture.id }}."})
    return expand_with_cache(path, n, force=True, warn=print).flows


def test_plans_are_seeded_per_workflow_and_within_bounds(tmp_path: Path) -> None:
    flows = agent_flows(tmp_path)
    turns = []
    for flow in flows:
        plan = flows.plan(flow, seed=7)
        assert plan == flows.plan(flow, seed=7)
        calls = [node for node in plan if node.step.id == "call"]
        assert 2 <= len(calls) <= 5 and [node.turn for node in calls] == list(range(len(calls)))
        turns.append(len(calls))
        pauses = {node.duration_ms for node in plan if node.step.id == "run"}
        assert pauses <= {10.0, 30.0}  # the empirical values of the field, nothing else
    assert len(set(turns)) > 1, "loop counts never varied across 8 workflows"
    assert [len(flows.plan(flow, seed=7)) for flow in flows] != [
        len(flows.plan(flow, seed=8)) for flow in flows
    ]


def test_a_plan_chains_loops_fans_out_and_joins(tmp_path: Path) -> None:
    flows = agent_flows(tmp_path)
    plan = flows.plan(flows[0], seed=0)
    by_name = {node.name: node for node in plan}
    task, fans = by_name["task"], [by_name[f"fan[{k}]"] for k in range(3)]
    calls = sorted((n for n in plan if n.step.id == "call"), key=lambda n: n.turn)
    runs = sorted((n for n in plan if n.step.id == "run"), key=lambda n: n.turn)
    assert calls[0].needs == (task.index,) and calls[0].transcript_from == task.index
    for call, run in zip(calls, runs, strict=True):
        assert run.needs == (call.index,) and run.transcript_from == call.index
    for previous, call in zip(runs, calls[1:], strict=False):
        assert call.needs == (previous.index,)
    assert [fan.needs for fan in fans] == [(task.index,)] * 3
    assert all(fan.transcript_from == task.index for fan in fans)  # each branch forks at the task
    join = by_name["join"]
    assert set(join.needs) == {runs[-1].index} | {fan.index for fan in fans}
    assert join.transcript_from == runs[-1].index  # the first need's transcript
    assert [call.depth for call in calls] == list(range(2, 2 + len(calls)))
    assert [fan.depth for fan in fans] == [2, 2, 2] and join.depth == len(calls) + 2
    assert all(index < node.index for node in plan for index in node.needs)


def test_templates_see_branch_outputs_in_item_order(tmp_path: Path) -> None:
    flows = agent_flows(tmp_path)
    join = next(node for node in flows.plan(flows[0], seed=0) if node.step.id == "join")
    prompt = flows.render(flows[0], join, {"fan": ["x0", "x1", "x2"], "call": ["last call"]})
    assert prompt == "x0 / x1 / x2 last call"
    fan = next(node for node in flows.plan(flows[0], seed=0) if node.name == "fan[1]")
    assert flows.render(flows[0], fan, {}) == "Summarise two (1)"
    assert flows.system_message(flows[1]) == "You help with b."


def test_draws_follow_their_distributions() -> None:
    rng = np.random.default_rng(1)
    counts = [draw_count(Uniform(uniform=(8, 16)), rng) for _ in range(4000)]
    assert min(counts) == 8 and max(counts) == 16
    values = np.array([draw(LogNormal(lognormal={"median": 150, "sigma": 0.6}), rng) for _ in range(20000)])
    assert np.median(values) == pytest.approx(150, rel=0.03)
    assert np.std(np.log(values)) == pytest.approx(0.6, rel=0.03)


def step(index: int, start: float, end: float, needs: list[int], kind: str = "llm", queue: float = 1.0):
    return StepRecord(
        flow_index=0, flow_id="f", session=0, step_index=index, step_id=f"s{index}", max_tokens=1,
        inflight_at_start=1, start_offset_ms=start, end_offset_ms=end, step_ms=end - start, status="ok",
        kind=kind, needs=needs, engine_queue_ms=queue if kind == "llm" else None,
    )  # fmt: skip


def test_the_critical_path_follows_what_held_each_step_up() -> None:
    """a (0-100) fans out to b (tool, 102-400) and c (101-200); d (401-500) joins them: the path is
    a, b, d (100 + 298 + 99 ms), and the 3 ms between them are the scheduling gap."""
    records = [step(0, 0, 100, []), step(1, 102, 400, [0], kind="tool"), step(2, 101, 200, [0]),
               step(3, 401, 500, [1, 2])]  # fmt: skip
    path = critical_path(records)
    assert path.steps == (0, 1, 3)
    assert path.critical_path_ms == 497.0 and path.llm_ms == 199.0 and path.tool_ms == 298.0
    assert path.engine_queue_ms == 2.0
    records[2] = step(2, 101, 450, [0])  # now c holds d up
    assert critical_path(records).steps == (0, 2, 3)
