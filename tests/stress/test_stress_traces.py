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
    assert trace.timestamp_s.size == rows
    assert trace.timestamp_s[0] == 0.0
    assert np.all(np.diff(trace.timestamp_s) >= 0)
    assert trace.timestamp_s[-1] == pytest.approx(span_s, abs=1)
    assert trace.input_tokens.dtype == np.int64 and trace.output_tokens.min() >= 1


def test_azure_timestamps_keep_sub_second_gaps(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:18:04.0319600,10,1\n"
    )
    trace = load_trace(path)
    np.testing.assert_allclose(trace.timestamp_s, [0.0, 0.052, 60.052], atol=1e-6)
    np.testing.assert_array_equal(trace.input_tokens, [4808, 3180, 10])


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
        np.testing.assert_array_equal(trace.timestamp_s, [0.0, 2.5])
        np.testing.assert_array_equal(trace.input_tokens, [50, 100])
        np.testing.assert_array_equal(trace.output_tokens, [7, 20])


def test_mooncake_jsonl_uses_milliseconds(tmp_path):
    path = tmp_path / "trace.jsonl"
    records = [
        {"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]},
        {"timestamp": 1500, "input_length": 20, "output_length": 3},
    ]
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n\n")
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.timestamp_s, [0.0, 1.5])


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
