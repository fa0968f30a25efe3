"""Benchmark: `bench replay SESSIONS` at 1,000 sessions on the mock server (issue 21).

    .venv/bin/python benchmarks/session_replay.py [--sessions 1000] [--gap-ms 20] [--workers 1,2]

A synthetic session trace (each session: a turn, two parallel sub-agent calls after 5 ms pauses, a
closing turn after 8 ms; 40-70 prompt tokens, 3 output tokens; sessions starting `--gap-ms` apart) is
replayed at its recorded pace against the deterministic mock server (its own process; TTFT 5 ms, 1 ms per
token), with each worker count in `--workers` one after the other in the same run. Reports per setup:
schedule lateness (a session's first submission minus its scheduled arrival, harness clock) p50/p99;
think lateness (an LLM request's submission minus the end of what it waited for minus its planned pause)
p50/p99; every request once; and the harness's CPU per request (user + system of this process and of its
finished worker processes, over the run, divided by requests; the mock server is not counted).
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from flowperf.cli.options import positive_whole_numbers
from flowperf.config import RunConfig
from flowperf.diagnostics.mockserver import MockConfig, spawn
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.store import RunStore
from flowperf.sessions.format import TraceHeader, TraceRequest, write_trace

SHAPE = (  # (request, prompt tokens, extra hash id, needs, think ms): a turn, two sub-agents, a close
    ("1", 40, 1, [], 0.0),
    ("2", 40, 2, ["1"], 5.0),
    ("3", 40, 3, ["1"], 5.0),
    ("4", 70, 4, ["2", "3"], 8.0),
)


def session_requests(k: int, start_ms: float) -> list[TraceRequest]:
    s = f"s{k:05d}"
    return [
        TraceRequest(
            session=s,
            id=f"{s}-{rid}",
            start_ms=start_ms,
            prompt_tokens=prompt,
            output_tokens=3,
            hash_ids=[k, extra] if prompt <= 64 else [k, 1, extra],  # blocks of 32 tokens
            needs=[f"{s}-{n}" for n in needs],
            think_ms=think,
        )
        for rid, prompt, extra, needs, think in SHAPE
    ]


def make_trace(path: Path, count: int, gap_ms: float) -> None:
    requests = [request for k in range(count) for request in session_requests(k, gap_ms * k)]
    write_trace(path, TraceHeader(block_size=32, source="synthetic", synthetic=True), requests)


def cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def think_lateness(run_dir: Path) -> np.ndarray:
    steps = RunStore(run_dir).read_steps()
    by_key = {(s.flow_index, s.step_index): s for s in steps}
    late = []
    for step in steps:
        if step.kind == "llm" and step.think_before_ms:
            think = by_key[(step.flow_index, step.needs[0])]
            needs_end = max(by_key[(step.flow_index, n)].end_offset_ms for n in think.needs)
            late.append(step.start_offset_ms - needs_end - step.think_before_ms)
    return np.array(late)


def measure(trace: Path, base_url: str, out: Path, workers: int) -> str:
    config = RunConfig.model_validate(
        {
            "trace": {"source": str(trace)},
            "warmup": 0,
            "monitor": {"sample_interval_s": 0},
            "output": {"out_dir": str(out), "run_id": f"workers-{workers}"},
            "engine": {"kind": "openai", "base_url": base_url, "model": "mock"},
            "client": {"workers": workers},
        }
    )
    before = cpu_s()
    result = asyncio.run(run_benchmark(config, RunHooks(echo=lambda _: None, warn=lambda _: None)))
    used = cpu_s() - before
    llm = [s for s in RunStore(result.run_dir).read_steps() if s.kind == "llm"]
    once = len({s.request_id for s in llm}) == len(llm)
    rows = RunStore(result.run_dir).read_workflows()
    lateness = np.array([float(r["start_offset_ms"]) - float(r["arrival_offset_ms"]) for r in rows])
    think = think_lateness(result.run_dir)
    return (
        f"| {workers} | {len(rows)} | {len(llm)} | {'yes' if once else 'NO'} | "
        f"{np.percentile(lateness, 50):.2f} / {np.percentile(lateness, 99):.2f} | "
        f"{np.percentile(think, 50):.2f} / {np.percentile(think, 99):.2f} | {used / len(llm) * 1000:.2f} |"
    )


def main(
    sessions: Annotated[int, typer.Option(help="Sessions to replay (4 requests each).")] = 1000,
    gap_ms: Annotated[float, typer.Option(help="Recorded gap between session starts, ms.")] = 20.0,
    workers: Annotated[str, typer.Option(help="Worker counts to compare, comma-separated.")] = "1,2",
) -> None:
    with (
        tempfile.TemporaryDirectory() as scratch,
        spawn(MockConfig(ttft_ms=5, itl_ms=1, lifetime_s=3600)) as server,
    ):
        trace = Path(scratch) / "sessions.jsonl"
        make_trace(trace, sessions, gap_ms)
        print(
            "| workers | sessions | requests | each once | schedule lateness p50 / p99 ms "
            "| think lateness p50 / p99 ms | harness CPU ms / request |"
        )
        print("| ---: | ---: | ---: | :---: | ---: | ---: | ---: |")
        for count in positive_whole_numbers(workers):
            print(measure(trace, server.base_url, Path(scratch) / "runs", count), flush=True)


if __name__ == "__main__":
    typer.run(main)
