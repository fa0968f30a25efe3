"""Crash-safe file primitives."""

from __future__ import annotations

from pathlib import Path

from flowperf.rundir.durable import DurableLog, append_durably, atomic_write_text, read_complete_lines


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    with log.open("a") as handle:
        append_durably(handle, '{"a": 1}\n{"a": 2}\n')
        handle.write('{"a": 3')
    assert read_complete_lines(log) == ['{"a": 1}', '{"a": 2}']
    assert read_complete_lines(tmp_path / "absent") == []


def test_durable_log_appends_are_visible_at_once_and_survive_close(tmp_path: Path) -> None:
    log_path = tmp_path / "steps.jsonl"
    log = DurableLog(log_path)
    log.append("one\n")
    # visible to another reader before any fsync or close: a SIGKILL now would lose nothing
    assert read_complete_lines(log_path) == ["one"]
    log.append("two\n")
    log.close()
    assert read_complete_lines(log_path) == ["one", "two"]
