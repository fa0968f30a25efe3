"""`engine_last_token_ms`: the engine's share of a step's end-to-end time, from vLLM's own timestamps
(in process) or its per-request metrics (over HTTP), so the overhead outside the engine is measured."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flowperf.engines.openai_http import _StreamState
from flowperf.engines.vllm_local import engine_last_token_ms
from flowperf.rundir.records import StepRecord


def test_in_process_it_is_queued_to_last_token_on_the_engine_clock():
    metrics = SimpleNamespace(
        queued_ts=100.0, scheduled_ts=100.002, first_token_ts=100.010, last_token_ts=100.250
    )
    assert engine_last_token_ms(metrics) == pytest.approx(250.0)
    assert engine_last_token_ms(SimpleNamespace(queued_ts=100.0, last_token_ts=0.0)) is None
    assert engine_last_token_ms(None) is None


def test_over_http_it_is_queue_plus_first_token_plus_generation_time():
    state = _StreamState()
    state.metrics = {"queue_time_ms": 4.0, "time_to_first_token_ms": 6.0, "generation_time_ms": 240.0}
    assert state.engine_last_token() == 250.0
    state.metrics = {"queue_time_ms": 4.0, "time_to_first_token_ms": 6.0}
    assert state.engine_last_token() is None


def test_the_record_keeps_it_and_old_lines_still_read():
    base = {
        "flow_index": 0,
        "flow_id": "f",
        "session": 0,
        "step_index": 0,
        "step_id": "s",
        "max_tokens": 4,
        "inflight_at_start": 1,
        "start_offset_ms": 0.0,
        "status": "ok",
        "step_ms": 260.0,
    }
    assert StepRecord.model_validate(base).engine_last_token_ms is None
    record = StepRecord.model_validate(base | {"engine_last_token_ms": 250.0})
    assert StepRecord.model_validate_json(record.to_line()).engine_last_token_ms == 250.0


def test_the_calibration_measures_the_end_to_end_overhead_from_it():
    from flowperf.stress.calibrate import e2e_overhead_s

    base = {
        "flow_id": "f",
        "session": 0,
        "step_index": 0,
        "step_id": "s",
        "max_tokens": 4,
        "start_offset_ms": 0.0,
        "status": "ok",
    }
    steps = [
        StepRecord.model_validate(
            base
            | {
                "flow_index": i,
                "inflight_at_start": 1 + (i % 2),
                "step_ms": 100.0 + i,
                "engine_last_token_ms": 90.0 + i - (30.0 if i % 2 else 0.0),
            }
        )
        for i in range(6)
    ]
    assert e2e_overhead_s(steps) == pytest.approx(0.010)  # the requests alone; the others queued outside
    assert e2e_overhead_s([s.model_copy(update={"engine_last_token_ms": None}) for s in steps]) is None
