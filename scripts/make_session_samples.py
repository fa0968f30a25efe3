"""Write the SYNTHETIC session-trace samples shipped in src/flowperf/data/sessions/ (deterministic: the same
files on every run, byte for byte).

    PYTHONPATH=src python scripts/make_session_samples.py [--out DIR]

Nothing here was recorded from a real agent. The generator imitates the shape of a coding agent's
sessions: 20 sessions of 5-15 turns; each turn's prompt is the previous prompt plus the model's output
and a tool result (so it grows by appending 64-token blocks and keeps its prefix); think (tool) times
0.2-5 s; every session starts with the same 1,920-token system prompt (30 blocks with global hash ids),
so a session's first turn finds its prefix in the cache; a few sub-agents that the parent waits for
(`completed`), two that run beside it (`async_launched`), and one sub-agent with a nested sub-agent.

Files: coding_agent.weka.jsonl (Weka format, one conversation per line), coding_agent.otlp.json (OTLP
JSON GenAI spans of the sessions without async sub-agents), coding_agent.sessions.jsonl (the Weka sample
converted by flowperf's weka importer, header marked synthetic).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from flowperf.sessions.format import write_trace
from flowperf.sessions.importers.weka import read_weka

BLOCK = 64
MODEL = "synthetic-coder"
SYSTEM_BLOCKS = 30  # shared by every session: ids 0..29
SUBAGENT_SYSTEM_BLOCKS = 12  # shared by every sub-agent: ids 30..41
SESSIONS = 20
# session index -> (main turn after which the sub-agent starts, status, nested sub-agent inside it)
SUBAGENTS = {
    2: (1, "completed", False),
    5: (2, "completed", False),
    8: (1, "completed", True),
    11: (3, "async_launched", False),
    14: (2, "completed", False),
    17: (1, "async_launched", False),
}
OUT = Path(__file__).resolve().parent.parent / "src" / "flowperf" / "data" / "sessions"


class Context:
    """A prompt that grows by appending tokens: full blocks keep their ids, the rest get new ones."""

    def __init__(self, ids: list[int], tokens: int, fresh: list[int]) -> None:
        self.ids, self.tokens, self.fresh = list(ids), tokens, fresh

    def grow(self, tokens: int) -> None:
        keep = self.tokens // BLOCK
        self.tokens += tokens
        needed = -(-self.tokens // BLOCK)
        self.ids = self.ids[:keep] + list(range(self.fresh[0], self.fresh[0] + needed - keep))
        self.fresh[0] += needed - keep


def call(rng: random.Random, t: float, context: Context, think: float) -> dict:
    out = rng.randint(40, 600)
    streaming = rng.random() < 0.8
    request = {
        "t": round(t, 3),
        "type": "s" if streaming else "n",
        "model": MODEL,
        "in": context.tokens,
        "out": out,
        "hash_ids": list(context.ids),
        "api_time": round(0.15 + context.tokens * 2e-5 + out * 0.012, 3),
        "think_time": round(think, 3),
    }
    if streaming:
        request["ttft"] = round(0.05 + context.tokens * 1.5e-5, 3)
    return request


def end_of(request: dict) -> float:
    return request["t"] + request["api_time"]


def subagent(rng: random.Random, name: str, t: float, status: str, nested: bool, fresh: list[int]) -> dict:
    """A sub-agent's entry: its own prompt (shared sub-agent system prompt + task), 2-4 calls."""
    context = Context(
        list(range(SYSTEM_BLOCKS, SYSTEM_BLOCKS + SUBAGENT_SYSTEM_BLOCKS)),
        SUBAGENT_SYSTEM_BLOCKS * BLOCK,
        fresh,
    )
    context.grow(rng.randint(200, 600))
    entries: list[dict] = []
    now, think = t, 0.0
    for turn in range(rng.randint(2, 4)):
        request = call(rng, now, context, think)
        entries.append(request)
        now = end_of(request)
        if nested and turn == 0:
            inner = subagent(rng, f"{name}_{1:03d}", now + 0.05, "completed", False, fresh)
            entries.append(inner)
            now = inner["t"] + inner["duration_ms"] / 1000.0
        think = rng.uniform(0.2, 1.0)
        now += think
        context.grow(request["out"] + rng.randint(50, 800))
    last = max(end_of(r) for r in entries if r["type"] != "subagent")
    finish = max([last] + [e["t"] + e["duration_ms"] / 1000 for e in entries if e["type"] == "subagent"])
    calls = [r for r in entries if r["type"] != "subagent"]
    done = status == "completed"
    return {
        "t": round(t, 3),
        "type": "subagent",
        "agent_id": name,
        "subagent_type": "Explore",
        "status": status,
        "duration_ms": round((finish - t) * 1000) if done else None,
        "total_tokens": sum(r["in"] + r["out"] for r in calls) if done else None,
        "tool_use_count": len(calls) - 1 if done else None,
        "models": [MODEL],
        "requests": entries,
    }


def session(rng: random.Random, index: int, fresh: list[int]) -> dict:
    context = Context(list(range(SYSTEM_BLOCKS)), SYSTEM_BLOCKS * BLOCK, fresh)
    context.grow(rng.randint(150, 700))  # the user's task
    requests: list[dict] = []
    now, think = 0.0, 0.0
    plan = SUBAGENTS.get(index)
    for turn in range(rng.randint(5, 15)):
        request = call(rng, now, context, think)
        requests.append(request)
        context.grow(request["out"] + rng.randint(50, 1500))
        think = rng.uniform(0.2, 5.0)
        now = end_of(request) + think
        if plan and plan[0] == turn:
            entry = subagent(rng, f"agent_{index:03d}", end_of(request) + 0.05, plan[1], plan[2], fresh)
            requests.append(entry)
            if entry["status"] == "completed":
                now = entry["t"] + entry["duration_ms"] / 1000.0 + think
                context.grow(rng.randint(100, 400))  # the sub-agent's report
    return {
        "id": f"synthetic-coding-{index:02d}",
        "models": [MODEL],
        "block_size": BLOCK,
        "hash_id_scope": "global",
        "tool_tokens": 0,
        "system_tokens": SYSTEM_BLOCKS * BLOCK,
        "requests": requests,
        "totals": {"synthetic": True, "generator": "scripts/make_session_samples.py"},
    }


def weka_sessions() -> list[dict]:
    rng = random.Random(21)
    fresh = [1000]
    return [session(rng, index, fresh) for index in range(SESSIONS)]


def _attr(key: str, value: object) -> dict:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": str(value)}}


class SpanWriter:
    """OTLP spans of one trace: ids drawn from a seeded generator, times in ns from a fixed epoch."""

    def __init__(self, rng: random.Random, base_ns: int) -> None:
        self.rng, self.base_ns, self.trace_id, self.spans = rng, base_ns, f"{rng.getrandbits(128):032x}", []

    def add(self, name: str, parent: str, start: float, end: float, attributes: list[dict]) -> str:
        span_id = f"{self.rng.getrandbits(64):016x}"
        self.spans.append(
            {
                "traceId": self.trace_id,
                "spanId": span_id,
                "parentSpanId": parent,
                "name": name,
                "kind": 1,
                "startTimeUnixNano": str(self.base_ns + round(start * 1e9)),
                "endTimeUnixNano": str(self.base_ns + round(end * 1e9)),
                "attributes": attributes,
            }
        )
        return span_id

    def agent(self, name: str, parent: str, entries: list[dict], start: float, end: float) -> None:
        agent_id = self.add(
            f"invoke_agent {name}",
            parent,
            start,
            end,
            [_attr("gen_ai.operation.name", "invoke_agent"), _attr("gen_ai.agent.name", name)],
        )
        previous_end = None
        for entry in entries:
            if entry["type"] == "subagent":
                inner_end = entry["t"] + entry["duration_ms"] / 1000.0
                self.agent(entry["agent_id"], agent_id, entry["requests"], entry["t"], inner_end)
                continue
            if previous_end is not None and entry["t"] > previous_end:  # the tool ran between two calls
                self.add(
                    "execute_tool run_shell",
                    agent_id,
                    previous_end,
                    entry["t"],
                    [_attr("gen_ai.operation.name", "execute_tool"), _attr("gen_ai.tool.name", "run_shell")],
                )
            self.add(
                f"chat {MODEL}",
                agent_id,
                entry["t"],
                end_of(entry),
                [
                    _attr("gen_ai.operation.name", "chat"),
                    _attr("gen_ai.request.model", MODEL),
                    _attr("gen_ai.usage.input_tokens", entry["in"]),
                    _attr("gen_ai.usage.output_tokens", entry["out"]),
                ],
            )
            previous_end = end_of(entry)


def otlp_document(sessions: list[dict]) -> dict:
    """The sessions without async sub-agents as OTLP spans: one trace each, 60 s apart."""
    rng = random.Random(7)
    spans = []
    chosen = [s for s in sessions if all(e.get("status") != "async_launched" for e in s["requests"])][:6]
    for number, conversation in enumerate(chosen):
        writer = SpanWriter(rng, 1_767_225_600 * 10**9 + number * 60 * 10**9)
        ends = [
            end_of(e) if e["type"] != "subagent" else e["t"] + e["duration_ms"] / 1000
            for e in conversation["requests"]
        ]
        writer.agent("coding-agent", "", conversation["requests"], 0.0, max(ends))
        spans.extend(writer.spans)
    resource = {
        "attributes": [_attr("service.name", "synthetic-coding-agent"), _attr("flowperf.synthetic", True)]
    }
    scope = {"name": "flowperf.scripts.make_session_samples", "version": "1"}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": scope, "spans": spans}]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    sessions = weka_sessions()
    weka = out / "coding_agent.weka.jsonl"
    weka.write_text("".join(json.dumps(s, separators=(",", ":")) + "\n" for s in sessions))
    (out / "coding_agent.otlp.json").write_text(json.dumps(otlp_document(sessions), indent=1) + "\n")
    header, requests = read_weka(weka)
    header = header.model_copy(
        update={
            "source": "synthetic",
            "synthetic": True,
            "notes": "SYNTHETIC coding-agent sessions made by scripts/make_session_samples.py "
            "(coding_agent.weka.jsonl converted by the weka importer); not recorded from a real agent",
        }
    )
    native = out / "coding_agent.sessions.jsonl"
    native.unlink(missing_ok=True)  # the writer appends
    write_trace(native, header, requests)


if __name__ == "__main__":
    main()
