"""What one definition per record costs the measuring process: building and serialising a step record
through `records.StepRecord` (pydantic validation + JSON) against the plain dict + json.dumps that
flowperf 0.1 used, side by side in one process (alternating rounds, so machine drift hits both alike).

    .venv/bin/python benchmarks/record_cost.py [--steps 20000] [--rounds 5]

Prints the median microseconds per step for each and their ratio; compare that with a step's duration
(tens of milliseconds on the tiny model, more on real models) to judge the cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from flowperf.rundir.records import StepRecord

FIELDS = {
    "flow_index": 12,
    "flow_id": "summarize_critique_refine-000012",
    "session": 0,
    "step_index": 1,
    "step_id": "critique",
    "max_tokens": 64,
    "inflight_at_start": 4,
    "start_offset_ms": 1234.567,
    "status": "ok",
    "step_ms": 210.5,
    "ttft_ms": 14.2,
    "tpot_ms": 3.1,
    "itl_ms": [3.1] * 63,
    "prompt_tokens": 640,
    "output_tokens": 64,
    "cached_prompt_tokens": 512,
    "finish_reason": "length",
    "engine_queue_ms": 0.01,
    "engine_ttft_ms": 13.9,
}


def as_dict(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        record = dict(FIELDS)
        json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return (time.perf_counter() - started) / count * 1e6


def as_record(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        StepRecord(**FIELDS).to_line()
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    plain, typed = [], []
    for _ in range(arguments.rounds):
        plain.append(as_dict(arguments.steps))
        typed.append(as_record(arguments.steps))
    plain_us, typed_us = statistics.median(plain), statistics.median(typed)
    print(f"dict + json.dumps : {plain_us:7.2f} us per step")
    print(f"StepRecord        : {typed_us:7.2f} us per step")
    print(f"ratio             : {typed_us / plain_us:7.2f}x ({typed_us - plain_us:+.2f} us per step)")


if __name__ == "__main__":
    main()
