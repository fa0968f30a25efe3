"""[TIMING] lines: the format DESIGN.md fixes, and the log that keeps every line of a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowperf.run.timing import TimingLog, parse_timing_line, timing_line


def test_format_matches_design() -> None:
    assert timing_line("flow_expansion_ms", 2.06, source="cache", flows=25) == (
        "[TIMING] flow_expansion_ms=2.1 source=cache flows=25"
    )
    assert timing_line("engine_init_ms", 22614.0, engine="vllm", reused=False) == (
        "[TIMING] engine_init_ms=22614.0 engine=vllm reused=false"
    )
    assert timing_line("x_ms", 1.0, note="two words") == "[TIMING] x_ms=1.0 note=two_words"


def test_parse_round_trip_and_rejects_other_lines() -> None:
    line = timing_line("benchmark_total_ms", 10321.54, avg_workflow_ms=412.9, workflows=25, failed=0)
    assert parse_timing_line(line) == {
        "benchmark_total_ms": "10321.5",
        "avg_workflow_ms": "412.9",
        "workflows": "25",
        "failed": "0",
    }
    for bad in ("INFO something", "[TIMING]", "[TIMING] no pairs here"):
        with pytest.raises(ValueError):
            parse_timing_line(bad)


def test_lines_before_the_run_directory_are_kept(tmp_path: Path) -> None:
    echoed: list[str] = []
    log = TimingLog(echoed.append)
    log.emit("flow_expansion_ms", 1.0, source="cache", flows=1)
    log.attach(tmp_path / "timing.log")
    log.emit("engine_init_ms", 2.0, engine="vllm", reused=False)
    log.close()
    assert (tmp_path / "timing.log").read_text().splitlines() == echoed
