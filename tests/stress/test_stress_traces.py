"""Trace loaders: the shipped traces, BurstGPT's two layouts, and clear errors on bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowperf.errors import UserError
from flowperf.stress.traces import BURSTGPT, load_trace, shipped_path

BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
BURST3_HEADER = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type"


@pytest.mark.parametrize(
    ("name", "rows", "span_s"),
    [("azure-code", 8_819, 3_436), ("azure-conv", 19_366, 3_502), ("mooncake", 3_993, 1_022)],
)
def test_shipped_traces_load_sorted_from_zero(name, rows, span_s):
    trace = load_trace(shipped_path(name))
    assert trace.arrival_s.size == rows
    assert trace.arrival_s[0] == 0.0
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.arrival_s[-1] == pytest.approx(span_s, abs=1)
    assert trace.prompt_tokens.dtype == np.int64 and trace.output_tokens.min() >= 1


def test_azure_timestamps_keep_sub_second_gaps(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:18:04.0319600,10,1\n"
    )
    trace = load_trace(path)
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.052, 60.052], atol=1e-6)
    np.testing.assert_array_equal(trace.prompt_tokens, [4808, 3180, 10])


@pytest.mark.parametrize("header", [BURST_HEADER, BURST3_HEADER])
def test_burstgpt_layouts_read_by_column_name_and_drop_failures(tmp_path, header):
    columns = header.split(",")
    rows = [
        {"Timestamp": "5", "Request tokens": "100", "Response tokens": "20"},
        {"Timestamp": "0", "Request tokens": "300", "Response tokens": "0"},  # failed
        {"Timestamp": "2.5", "Request tokens": "50", "Response tokens": "7"},
    ]
    filler = {"Model": "ChatGPT", "Total tokens": "0", "Log Type": "Conversation log", "Session ID": "s1"}
    lines = [header] + [
        ",".join({**filler, "Elapsed time": "1.0", **row}[c] for c in columns) for row in rows
    ]
    path = tmp_path / "burst.csv"
    path.write_text("\n".join(lines) + "\n")
    for trace in (load_trace(path), load_trace(path, BURSTGPT)):
        np.testing.assert_array_equal(trace.arrival_s, [0.0, 2.5])
        np.testing.assert_array_equal(trace.prompt_tokens, [50, 100])
        np.testing.assert_array_equal(trace.output_tokens, [7, 20])


def test_mooncake_jsonl_uses_milliseconds(tmp_path):
    path = tmp_path / "trace.jsonl"
    records = [
        {"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]},
        {"timestamp": 1500, "input_length": 20, "output_length": 3},
    ]
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n\n")
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 1.5])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.csv", "", "empty"),
        ("header.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", "no successful requests"),
        (
            "bad.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5,1\n2023-11-16 18:17:04,five,1\n",
            "line 3: column 'ContextTokens'",
        ),
        (
            "zero.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5,0\n",
            "line 2: column 'GeneratedTokens': Input should be greater than or equal to 1",
        ),
        ("ragged.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5,1,9\n", "line 2"),
        (
            "ragged_later.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5,1\n2023-11-16 18:17:04,5,1,9\n",
            "line 3",
        ),
        ("short.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5\n", "line 2"),
        (
            "when.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,5,1\n",
            "line 2: column 'TIMESTAMP'",
        ),
        ("other.csv", "a,b,c\n1,2,3\n", "unknown trace layout"),
        ("failed.csv", f"{BURST_HEADER}\n1,ChatGPT,10,0,10,API log\n", "no successful requests"),
        ("negative.csv", f"{BURST_HEADER}\n-1,ChatGPT,10,3,13,API log\n", "line 2: column 'Timestamp'"),
        ("bad.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": \n', "line 2"),
        ("list.jsonl", "[1, 2]\n", "line 1: expected a JSON object"),
        (
            "missing.jsonl",
            '{"timestamp": 0, "input_length": 1}\n',
            r"line 1: missing field\(s\) output_length",
        ),
    ],
)
def test_bad_trace_files_fail_with_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=message) as raised:
        load_trace(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text("Timestamp,Request tokens\n1,2\n")
    with pytest.raises(UserError, match=r"missing column.*Response tokens"):
        load_trace(path)


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such trace file"):
        load_trace(tmp_path / "nope.csv")


def test_mooncake_hash_ids_are_kept_as_ragged_blocks_of_512_tokens():
    trace = load_trace("mooncake")
    assert trace.block_tokens == 512 and trace.hash_offsets.size == trace.size + 1
    counts = np.diff(trace.hash_offsets)
    np.testing.assert_array_equal(counts, -(-trace.prompt_tokens // 512))
    np.testing.assert_array_equal(trace.hashes(0), np.arange(79))
    assert load_trace("azure-conv").block_tokens == 0


def test_token_scale_shrinks_lengths_and_blocks_together():
    full = load_trace("mooncake")
    tenth = load_trace("mooncake", token_scale=0.1)
    assert tenth.block_tokens == 51
    np.testing.assert_array_equal(tenth.prompt_tokens, np.maximum(np.rint(full.prompt_tokens * 0.1), 1))
    assert tenth.output_tokens.min() >= 1
    counts = np.diff(tenth.hash_offsets)
    assert np.all(counts <= -(-tenth.prompt_tokens // 51))
    np.testing.assert_array_equal(tenth.hashes(0), full.hashes(0)[: counts[0]])


def test_a_window_is_retimed_from_its_first_request_and_capped():
    full = load_trace("mooncake")
    window = load_trace("mooncake", start_s=100.0, duration_s=50.0, max_requests=30)
    rows = np.flatnonzero((full.arrival_s >= 100) & (full.arrival_s < 150))[:30]
    assert window.size == 30 and window.arrival_s[0] == 0.0
    np.testing.assert_allclose(window.arrival_s, full.arrival_s[rows] - full.arrival_s[rows[0]])
    np.testing.assert_array_equal(window.hashes(5), full.hashes(int(rows[5])))


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"token_scale": 0.0}, "--token-scale"),
        ({"token_scale": float("nan")}, "--token-scale"),
        ({"max_requests": 0}, "--max-requests"),
        ({"start_s": -1.0}, "--start"),
        ({"duration_s": 0.0}, "--duration"),
        ({"start_s": 1e9}, "--start/--duration"),
    ],
)
def test_bad_selections_name_their_flag_in_one_line(options, flag):
    with pytest.raises(UserError) as raised:
        load_trace("azure-code", **options)
    assert str(raised.value).startswith(flag + ":") and "\n" not in str(raised.value)


def test_bad_hash_ids_are_refused_with_the_line(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1, "x"]}\n')
    with pytest.raises(UserError, match="line 1: hash_ids"):
        load_trace(path)
