"""Importers into the session-trace format: each on small hand-written inputs whose needs and think times
are worked out by hand here, format detection, bad input (one line, exit 2, nothing written), the
shipped samples, the JSON Schema in docs/, and a write/read round trip."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import ROOT, run_bench

from flowperf.errors import UserError
from flowperf.sessions.format import (
    SessionTrace,
    TraceHeader,
    TraceRequest,
    read_trace,
    schema_document,
    write_trace,
)
from flowperf.sessions.importers import FORMATS, convert_trace, detect_format, import_trace
from flowperf.sessions.importers._common import chained_block_hashes
from flowperf.sessions.shipped import SHIPPED_SESSIONS, shipped_session_trace


def by_id(trace: SessionTrace) -> dict[str, TraceRequest]:
    return {request.id: request for request in trace.requests()}


def call(t: float, tokens: int = 8, api: float | None = 1.0, kind: str = "n", **extra) -> dict:
    request = {"t": t, "type": kind, "model": "m", "in": tokens, "out": 2, **extra}
    if api is not None:
        request["api_time"] = api
    return request


def conversation(name: str, requests: list, scope: str = "local", block_size: int = 4) -> dict:
    return {
        "id": name,
        "models": ["m"],
        "block_size": block_size,
        "hash_id_scope": scope,
        "requests": requests,
    }


def write_jsonl(path: Path, documents: list[dict]) -> Path:
    path.write_text("".join(json.dumps(document) + "\n" for document in documents))
    return path


# Root calls r0 [0, 1] and r4 [4, 5]; between them a completed sub-agent a1 (call at 1.5-2.0, then a
# nested completed a2 with a call at 2.5-3.0) and an async sub-agent b1 whose call is written relative to
# its spawn (t 0.1 after 1.6). Numbering follows the order met: r0=0, a1=1, a2=2, b1=3, r4=4.
NESTED = conversation(
    "c",
    [
        call(0.0, kind="s", ttft=0.2, hash_ids=[1, 2]),
        {
            "t": 1.5,
            "type": "subagent",
            "agent_id": "a1",
            "status": "completed",
            "requests": [
                call(1.5, tokens=4, api=0.5, hash_ids=[7]),
                {
                    "t": 2.5,
                    "type": "subagent",
                    "agent_id": "a2",
                    "status": "completed",
                    "requests": [call(2.5, tokens=4, api=0.5, hash_ids=[9])],
                },
            ],
        },
        {
            "t": 1.6,
            "type": "subagent",
            "agent_id": "b1",
            "status": "async_launched",
            "requests": [call(0.1, tokens=4, api=10.0)],
        },
        call(4.0, tokens=12, hash_ids=[1, 2, 3]),
    ],
)


def test_weka_completed_nested_and_async_subagents(tmp_path: Path) -> None:
    trace = import_trace(write_jsonl(tmp_path / "w.jsonl", [NESTED]))
    requests = by_id(trace)
    assert trace.header.hash_scope == "local" and trace.header.block_size == 4
    expected = {  # id: (agent, needs, start_ms, think_ms)
        "c:0": ("", [], 0.0, 0.0),
        "c:1": ("a1", ["c:0"], 1500.0, 500.0),  # launched by r0, which ended at 1000
        "c:2": ("a1/a2", ["c:1"], 2500.0, 500.0),  # launched by a1's call, ended at 2000
        "c:3": ("b1", ["c:0"], 1700.0, 700.0),  # relative t: 1.6 + 0.1
        "c:4": ("", ["c:2"], 4000.0, 1000.0),  # waits for a1, whose last call is a2's: ended at 3000
    }
    got = {rid: (r.agent, r.needs, r.start_ms, r.think_ms) for rid, r in requests.items()}
    assert got == expected
    assert requests["c:0"].streaming is True and requests["c:0"].ttft_ms == 200.0
    assert requests["c:4"].streaming is False and requests["c:4"].latency_ms == 1000.0
    assert requests["c:4"].end_ms == 5000.0


def test_weka_async_subagent_does_not_block_the_parent(tmp_path: Path) -> None:
    requests = [
        call(0.0),
        {
            "t": 1.1,
            "type": "subagent",
            "agent_id": "x",
            "status": "async_launched",
            "requests": [call(1.1, api=9.0), call(10.5)],
        },
        call(2.0),
        call(3.5),
    ]
    got = by_id(import_trace(write_jsonl(tmp_path / "w.jsonl", [conversation("a", requests)])))
    assert got["a:1"].needs == ["a:0"] and got["a:2"].needs == ["a:1"]  # the sub-agent's own chain
    assert got["a:3"].needs == ["a:0"] and got["a:3"].think_ms == 1000.0  # the parent goes on at once
    assert got["a:4"].needs == ["a:3"] and got["a:4"].think_ms == 500.0
    completed = [
        call(0.0),
        {
            "t": 1.1,
            "type": "subagent",
            "agent_id": "x",
            "status": "completed",
            "requests": [call(1.1, api=9.0)],
        },
        call(10.5),
    ]
    got = by_id(import_trace(write_jsonl(tmp_path / "c.jsonl", [conversation("a", completed)])))
    assert got["a:2"].needs == ["a:1"] and got["a:2"].think_ms == 400.0


def test_weka_scopes_local_global_and_mixed(tmp_path: Path) -> None:
    one = conversation("g", [call(0.0, hash_ids=[1, 2])], scope="global")
    two = conversation("h", [call(0.0, hash_ids=[1, 5])], scope="global")
    trace = import_trace(write_jsonl(tmp_path / "g.jsonl", [one, two]))
    assert trace.header.hash_scope == "global"
    assert [r.hash_ids for r in trace.requests()] == [[1, 2], [1, 5]]  # shared block 1 kept shared
    local = conversation("l", [call(0.0, hash_ids=[1, 2])], scope="local")
    trace = import_trace(write_jsonl(tmp_path / "m.jsonl", [one, local]))
    assert trace.header.hash_scope == "global"
    ids = {r.session: r.hash_ids for r in trace.requests()}
    assert ids["g"] == [1, 2] and ids["l"] == [
        4,
        5,
    ]  # shifted by 1 + the file's largest id (2): shares nothing
    both_local = [
        conversation("p", [call(0.0, hash_ids=[1, 2])]),
        conversation("q", [call(0.0, hash_ids=[1, 2])]),
    ]
    trace = import_trace(write_jsonl(tmp_path / "l.jsonl", both_local))
    assert trace.header.hash_scope == "local" and [r.hash_ids for r in trace.requests()] == [[1, 2], [1, 2]]


def test_weka_hash_ids_short_of_the_prompt_get_unique_blocks(tmp_path: Path) -> None:
    requests = [call(0.0, tokens=10, hash_ids=[5]), call(2.0, tokens=10, hash_ids=[5])]
    trace = import_trace(write_jsonl(tmp_path / "w.jsonl", [conversation("a", requests)]))
    first, second = (r.hash_ids for r in trace.requests())
    assert first[0] == second[0] == 5 and len(first) == len(second) == 3  # ceil(10 / 4)
    assert len(set(first[1:]) | set(second[1:])) == 4 and 5 not in first[1:] + second[1:]


def test_weka_whole_json_array_and_directory(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps(conversation("a", [call(0.0)]), indent=2))
    (tmp_path / "two.json").write_text(json.dumps(conversation("b", [call(0.0)]), indent=2))
    assert detect_format(tmp_path) == "weka"
    assert [s.id for s in import_trace(tmp_path).sessions] == ["a", "b"]
    array = tmp_path / "array.txt"
    array.write_text(json.dumps([conversation("a", [call(0.0)]), conversation("b", [call(0.5)])], indent=1))
    assert detect_format(array) == "weka" and import_trace(array).request_count == 2


def span(trace: str, span_id: str, parent: str, start: float, end: float, **attributes) -> dict:
    def value(v: object) -> dict:
        if isinstance(v, list):
            return {"arrayValue": {"values": [value(item) for item in v]}}
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}

    return {
        "traceId": trace,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": span_id,
        "startTimeUnixNano": str(int(1e18 + start * 1e9)),
        "endTimeUnixNano": str(int(1e18 + end * 1e9)),
        "attributes": [{"key": k.replace("__", "."), "value": value(v)} for k, v in attributes.items()],
    }


def chat(trace: str, span_id: str, parent: str, start: float, end: float, **more) -> dict:
    return span(
        trace,
        span_id,
        parent,
        start,
        end,
        gen_ai__operation__name="chat",
        gen_ai__request__model="m",
        gen_ai__usage__input_tokens=100,
        gen_ai__usage__output_tokens=10,
        **more,
    )


def agent(trace: str, span_id: str, parent: str, start: float, end: float, name: str) -> dict:
    return span(
        trace, span_id, parent, start, end, gen_ai__operation__name="invoke_agent", gen_ai__agent__name=name
    )


def otlp(spans: list[dict]) -> dict:
    return {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": spans}]}]}


# Main agent M [0, 8]: chat A [0, 1], a tool [1, 2], chat B [2, 3]; sub-agent S [3.1, 6] (chats C [3.2, 4]
# and D [4.5, 6]); sub-agent W [3.2, 9] (chat E [3.3, 9], still running when F starts); chat F [6.5, 7].
# A framework span wraps B with the client library's own chat span inside: one call, counted once.
OTEL_SPANS = [
    agent("t1", "M", "", 0, 8, "main"),
    chat("t1", "A", "M", 0, 1),
    span("t1", "tool", "M", 1, 2, gen_ai__operation__name="execute_tool"),
    chat("t1", "B", "M", 2, 3),
    chat("t1", "B-inner", "B", 2.01, 2.99),
    agent("t1", "S", "M", 3.1, 6, "researcher"),
    chat("t1", "C", "S", 3.2, 4),
    chat("t1", "D", "S", 4.5, 6),
    agent("t1", "W", "M", 3.2, 9, "watcher"),
    chat("t1", "E", "W", 3.3, 9),
    chat("t1", "F", "M", 6.5, 7),
]


def test_otel_needs_from_parent_child_and_time_order(tmp_path: Path) -> None:
    path = tmp_path / "spans.json"
    path.write_text(json.dumps(otlp(OTEL_SPANS), indent=2))
    assert detect_format(path) == "otel"
    trace = import_trace(path)
    got = {r.id: (r.agent, r.needs, r.start_ms, r.think_ms) for r in trace.requests()}
    assert got == {
        "A": ("", [], 0.0, 0.0),
        "B": ("", ["A"], 2000.0, 1000.0),  # the tool's second is think time
        "C": ("researcher", ["B"], 3200.0, 200.0),  # the sub-agent's first call needs what S needs
        "E": ("watcher", ["B"], 3300.0, 300.0),
        "D": ("researcher", ["C"], 4500.0, 500.0),
        "F": ("", ["D"], 6500.0, 500.0),  # S ended before F: awaited; W had not: runs beside
    }
    assert {r.session for r in trace.requests()} == {"t1"} and trace.header.hash_scope == "global"
    assert all(r.hash_ids == [] and r.prompt_tokens == 100 and r.api == "chat" for r in trace.requests())


def test_otel_overlapping_calls_run_in_parallel_and_token_ids_give_hash_ids(tmp_path: Path) -> None:
    tokens = list(range(130))
    spans = [
        chat("t2", "P", "", 0, 2, flowperf__prompt_token_ids=tokens),
        chat("t2", "Q", "", 1, 3),
        chat("t2", "R", "", 4, 5),
    ]
    spans[0]["attributes"][2]["value"] = {"intValue": "130"}
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(otlp(spans)) + "\n")
    got = by_id(import_trace(path))
    assert got["P"].needs == [] and got["Q"].needs == [] and got["R"].needs == ["P", "Q"]
    assert got["R"].think_ms == 1000.0  # from the later of the two ends
    assert got["P"].hash_ids == chained_block_hashes(tokens, 64) and len(got["P"].hash_ids) == 3
    assert chained_block_hashes(tokens[:64], 64) == got["P"].hash_ids[:1]  # equal prefix, equal id


def test_mooncake_and_azure_are_one_request_sessions(tmp_path: Path) -> None:
    mooncake = tmp_path / "m.jsonl"
    write_jsonl(
        mooncake,
        [
            {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
            {"timestamp": 250, "input_length": 100, "output_length": 3, "hash_ids": [0]},
        ],
    )
    assert detect_format(mooncake) == "mooncake"
    trace = import_trace(mooncake)
    assert trace.header.block_size == 512 and trace.header.hash_scope == "global"
    assert [(r.session, r.start_ms, r.hash_ids, r.needs) for r in trace.requests()] == [
        ("mooncake-0", 0.0, [0, 1], []),
        ("mooncake-1", 250.0, [0], []),
    ]
    azure = tmp_path / "a.csv"
    azure.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,374,44\n"
        "2023-11-16 18:15:47.0,396,109\n"
    )
    assert detect_format(azure) == "azure"
    trace = import_trace(azure)
    assert [(r.start_ms, r.prompt_tokens, r.hash_ids) for r in trace.requests()] == [
        (0.0, 374, []),
        (500.0, 396, []),
    ]


def test_native_file_passes_through_and_detection_reads_content_not_names(tmp_path: Path) -> None:
    native = shipped_session_trace("coding-agent")
    assert detect_format(native) == "flowperf-sessions"
    assert by_id(import_trace(native)) == by_id(read_trace(native))
    disguised = tmp_path / "spans.csv"  # an OTLP file under a misleading name
    disguised.write_text(json.dumps(otlp(OTEL_SPANS)))
    assert detect_format(disguised) == "otel"
    unknown = tmp_path / "x.jsonl"
    unknown.write_text('{"hello": 1}\n')
    with pytest.raises(UserError, match=r"cannot tell the trace format.*--format"):
        detect_format(unknown)
    with pytest.raises(UserError, match=r"x.jsonl: line 1: \$.id: Field required"):  # --format overrides
        import_trace(unknown, "weka")
    with pytest.raises(UserError, match="--format: 'nope'"):
        import_trace(unknown, "nope")


def test_shipped_samples_read_back_and_validate_against_the_schema() -> None:
    schema = json.loads((ROOT / "docs" / "session-trace.schema.json").read_text())
    assert schema == schema_document()
    native = shipped_session_trace("coding-agent")
    lines = native.read_text().splitlines()
    for line in lines:
        jsonschema.validate(json.loads(line), schema)
    trace = read_trace(native)
    assert trace.header.synthetic and "SYNTHETIC" in (trace.header.notes or "")
    weka = import_trace(shipped_session_trace("coding-agent-weka"))
    assert by_id(weka) == by_id(trace)  # the native sample is the Weka sample, converted
    assert len(lines) - 1 == trace.request_count
    assert set(SHIPPED_SESSIONS) <= {"coding-agent", "coding-agent-weka", "coding-agent-otel"}
    assert import_trace(shipped_session_trace("coding-agent-otel")).header.source == "otel"
    with pytest.raises(UserError, match="no shipped session trace"):
        shipped_session_trace("nope")


BAD = {  # case: (file name, content, what the one line must say)
    "weka field": (
        "w.jsonl",
        json.dumps(conversation("a", [call(0.0)]))
        + "\n"
        + json.dumps(conversation("b", [call(0.0), call(1.0, tokens=0)]))
        + "\n",
        "w.jsonl: line 2: $.requests[1].in: Input should be greater than or equal to 1",
    ),
    "weka bad JSON line": (
        "w.jsonl",
        json.dumps(conversation("a", [call(0.0)])) + "\n{oops\n",
        "w.jsonl: line 2: not JSON",
    ),
    "weka nested": (
        "w.json",
        json.dumps(
            conversation(
                "a",
                [
                    call(0.0),
                    {
                        "t": 1,
                        "type": "subagent",
                        "agent_id": "x",
                        "status": "completed",
                        "requests": [{"t": 1, "type": "n", "in": 4}],
                    },
                ],
            ),
            indent=1,
        ),
        "w.json: $.requests[1].requests[0].out: Field required",
    ),
    "weka too many hash ids": (
        "w.jsonl",
        json.dumps(conversation("a", [call(0.0, tokens=4, hash_ids=[1, 2])])) + "\n",
        "w.jsonl: line 1: request a:0: hash_ids: 2 hash ids for 4 tokens",
    ),
    "weka repeated id": (
        "w.jsonl",
        json.dumps(conversation("a", [call(0.0)])) + "\n" + json.dumps(conversation("a", [call(0.0)])) + "\n",
        "w.jsonl: line 2: $.id: 'a' is repeated",
    ),
    "otel tokens": (
        "o.json",
        json.dumps(otlp([span("t", "s", "", 0, 1, gen_ai__operation__name="chat")]), indent=1),
        "o.json: $.resourceSpans[0].scopeSpans[0].spans[0].attributes: gen_ai.usage.input_tokens is missing",
    ),
    "otel span field": (
        "o.jsonl",
        json.dumps(otlp([{"traceId": "t", "spanId": "s"}])) + "\n",
        "o.jsonl: line 1: $.resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano: Field required",
    ),
    "mooncake": (
        "m.jsonl",
        '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1, "input_length": 5}\n',
        "m.jsonl: line 2: missing field(s) output_length",
    ),
    "unknown": ("u.txt", "hello\n", "u.txt: cannot tell the trace format"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, case: str) -> None:
    name, content, message = BAD[case]
    (tmp_path / name).write_text(content)
    out = tmp_path / "out" / "converted.jsonl"
    out.parent.mkdir()
    with pytest.raises(UserError) as error:
        convert_trace(tmp_path / name, out)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not any(out.parent.iterdir())


def test_bad_input_through_the_cli(tmp_path: Path) -> None:
    name, content, message = BAD["weka field"]
    (tmp_path / name).write_text(content)
    out = tmp_path / "converted.jsonl"
    done = run_bench("trace", "import", str(tmp_path / name), "--out", str(out), timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    done = run_bench("trace", "stats", str(tmp_path / name), "--format", "otel", timeout=120)
    assert done.returncode == 2 and "resourceSpans: Field required" in done.stderr


def test_cli_import_writes_a_readable_trace(tmp_path: Path) -> None:
    out = tmp_path / "converted.jsonl"
    done = run_bench("trace", "import", "coding-agent-otel", "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stderr
    trace = read_trace(out)
    assert trace.header.source == "otel" and f"{len(trace.sessions)} sessions" in done.stdout
    assert not list(tmp_path.glob("*.partial"))


def test_every_format_is_detected() -> None:
    assert set(FORMATS) == {"flowperf-sessions", "weka", "otel", "mooncake", "azure", "burstgpt"}
    data = ROOT / "src" / "flowperf" / "data"
    assert detect_format(data / "traces" / "mooncake_synthetic_trace.jsonl") == "mooncake"
    assert detect_format(data / "traces" / "AzureLLMInferenceTrace_code.csv") == "azure"
    assert detect_format(shipped_session_trace("coding-agent-weka")) == "weka"
    assert detect_format(shipped_session_trace("coding-agent-otel")) == "otel"


@st.composite
def traces(draw) -> tuple[TraceHeader, list[TraceRequest]]:
    block = draw(st.integers(1, 64))
    requests = []
    for s in range(draw(st.integers(1, 4))):
        start = 0.0
        for k in range(draw(st.integers(1, 5))):
            prompt = draw(st.integers(1, 500))
            ids = draw(
                st.lists(st.integers(0, 2**62), min_size=-(-prompt // block), max_size=-(-prompt // block))
            )
            needs = draw(st.sets(st.integers(0, k - 1), max_size=2)) if k else set()
            start += draw(st.floats(0, 1e6, allow_nan=False))
            requests.append(
                TraceRequest(
                    session=f"s{s}",
                    id=f"s{s}-{k}",
                    needs=[f"s{s}-{n}" for n in sorted(needs)],
                    start_ms=start,
                    end_ms=start + draw(st.floats(0, 1e4, allow_nan=False)),
                    think_ms=draw(st.floats(0, 1e4)),
                    prompt_tokens=prompt,
                    output_tokens=draw(st.integers(1, 100)),
                    hash_ids=draw(st.sampled_from([[], ids])),
                    agent=draw(st.sampled_from(["", "a", "a/b"])),
                    streaming=draw(st.sampled_from([None, True, False])),
                )
            )
    header = TraceHeader(
        block_size=block, hash_scope=draw(st.sampled_from(["local", "global"])), source="test"
    )
    return header, requests


@settings(max_examples=40, deadline=None)
@given(traces())
def test_write_then_read_gives_the_same_trace(tmp_path_factory: pytest.TempPathFactory, drawn) -> None:
    header, requests = drawn
    path = tmp_path_factory.mktemp("rt") / "t.jsonl"
    write_trace(path, header, requests)
    back = read_trace(path)
    assert back.header == header
    assert by_id(back) == {r.id: r for r in requests}
