"""`bench trace stats`: the pure functions on hand-made arrays, and the shipped sample's figures against
counts taken straight from the raw Weka JSON (not through the importer)."""

from __future__ import annotations

import json

import numpy as np
from tests.helpers import run_bench

from flowperf.sessions.importers import import_trace
from flowperf.sessions.shipped import shipped_session_trace
from flowperf.sessions.stats import block_reuse, prompt_growth, subagents, trace_stats, turns_per_session


def test_turns_and_prompt_growth() -> None:
    session = np.array([0, 0, 0, 1, 1])
    agent = ["", "x", "", "", ""]
    assert turns_per_session(session, agent, 3).tolist() == [2, 2, 0]
    prompts = np.array([100, 50, 300, 10, 5])
    assert prompt_growth(session, agent, prompts).tolist() == [200, -5]  # per (session, agent) chain


def test_block_reuse_within_and_across() -> None:
    # session 0: [1, 2] then [1, 2, 3]; session 1: [1, 9]. Block 1 is in both sessions, 2 and 3 only in 0.
    session = np.array([0, 0, 1])
    offsets = np.array([0, 2, 5, 7])
    ids = np.array([1, 2, 1, 2, 3, 1, 9])
    within, across = block_reuse(session, offsets, ids, shared_across=True)
    assert within.tolist() == [0, 2, 0] and across.tolist() == [1, 0, 1]
    within, across = block_reuse(session, offsets, ids, shared_across=False)
    assert within.tolist() == [0, 2, 0] and across.tolist() == [0, 0, 0]


def test_subagents_beside_parent_or_concurrent() -> None:
    # r0 launches a (completed: r3 waits for a's a0) and b (async: nobody waits); b's b0 is unordered with r3
    ids = ["r0", "a0", "b0", "r3"]
    needs = [[], ["r0"], ["r0"], ["a0"]]
    assert subagents(ids, needs, ["", "a", "b", ""]) == (2, 1, 2)  # a runs beside b, not beside its parent
    # a fan-out the parent waits for: both beside each other, neither beside the parent
    ids, needs = ["r0", "a0", "b0", "r3"], [[], ["r0"], ["r0"], ["a0", "b0"]]
    assert subagents(ids, needs, ["", "a", "b", ""]) == (2, 0, 2)
    # a nested sub-agent is part of its parent sub-agent
    ids, needs = ["r0", "a0", "n0", "r3"], [[], ["r0"], ["a0"], ["n0"]]
    assert subagents(ids, needs, ["", "a", "a/n", ""]) == (2, 0, 0)


def _raw_calls(entries: list[dict]) -> list[dict]:
    calls = []
    for entry in entries:
        calls += _raw_calls(entry["requests"]) if entry["type"] == "subagent" else [entry]
    return calls


def _raw_subagents(entries: list[dict]) -> list[dict]:
    found = []
    for entry in entries:
        if entry["type"] == "subagent":
            found += [entry, *_raw_subagents(entry["requests"])]
    return found


def test_shipped_sample_figures_match_the_raw_weka_file() -> None:
    raw = [json.loads(line) for line in shipped_session_trace("coding-agent-weka").read_text().splitlines()]
    figures = trace_stats(import_trace(shipped_session_trace("coding-agent")))
    assert figures["sessions"] == len(raw) == 20
    assert figures["requests"] == sum(len(_raw_calls(c["requests"])) for c in raw)
    turns = [sum(e["type"] != "subagent" for e in c["requests"]) for c in raw]
    assert figures["turns_per_session"]["max"] == max(turns) and min(turns) >= 5 and max(turns) <= 15
    assert figures["turns_per_session"]["p50"] == float(np.percentile(turns, 50))
    agents = [a for c in raw for a in _raw_subagents(c["requests"])]
    assert figures["subagents"]["count"] == len(agents) == 7
    assert figures["subagents"]["beside_parent"] == sum(a["status"] == "async_launched" for a in agents) == 2
    top_level = [e for c in raw for e in c["requests"] if e["type"] == "subagent"]  # nested calls inside
    assert figures["subagents"]["requests"] == sum(len(_raw_calls(a["requests"])) for a in top_level)
    # every session's first call shares exactly the 30 system-prompt blocks with the other sessions
    first = [c["requests"][0]["hash_ids"] for c in raw]
    assert figures["block_reuse"]["first_request_across_share"] == 30 * 20 / sum(len(ids) for ids in first)
    thinks = [e["think_time"] for c in raw for e in c["requests"][1:] if e["type"] != "subagent"]
    assert min(thinks) >= 0.2 and max(thinks) <= 5.0
    assert figures["think_ms"]["max"] <= 5000.0 and figures["think_ms"]["count"] == figures["requests"] - 20


def test_cli_plain_text_when_piped_and_json() -> None:
    done = run_bench("trace", "stats", "coding-agent", timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "coding-agent" and any(line.split() == ["sessions", "20"] for line in lines)
    assert not any("…" in line for line in lines)  # nothing cut to a terminal width
    done = run_bench("trace", "stats", "coding-agent", "--json", timeout=120)
    assert json.loads(done.stdout) == json.loads(
        json.dumps(trace_stats(import_trace(shipped_session_trace("coding-agent"))))
    )
