"""The engine's iteration log (iterations.jsonl): what a record says, where records go, and, on the real
engine, that the lines are the engine's iterations, checked against what its requests say they got."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flowperf.config import RunConfig
from flowperf.engines.base import GenerationParams, StepResult, TokenPrompt
from flowperf.engines.iteration_log import IterationLog
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.rundir.durable import DurableLog
from flowperf.rundir.records import StepRecord
from flowperf.rundir.store import ITERATIONS
from helpers import ROOT


def scheduler(running: int, prefill_tokens: int = 0, decodes: int = 0, index: int | None = 0):
    details = None
    if index is not None:
        details = SimpleNamespace(
            iteration_index=index,
            num_ctx_requests=int(prefill_tokens > 0),
            num_ctx_tokens=prefill_tokens,
            num_generation_requests=decodes,
            elapsed_ms=1.0,
        )
    return SimpleNamespace(
        num_running_reqs=running, num_waiting_reqs=0, kv_cache_usage=0.0, iteration_details=details
    )


def outputs(generated: int, prompts: tuple[int, ...] = (), finished: tuple[tuple[int, int], ...] = ()):
    """IterationStats of a step: tokens made, prompts whose prefill completed, (prompt, tokens) of each
    request that finished."""
    return SimpleNamespace(
        iteration_timestamp=0.0,
        num_generation_tokens=generated,
        prompt_token_stats=SimpleNamespace(total=sum(prompts), computed=sum(prompts)),
        time_to_first_tokens_iter=[0.01] * len(prompts),
        inter_token_latencies_iter=[0.004] * (generated - len(prompts)),
        finished_requests=[
            SimpleNamespace(num_prompt_tokens=p, num_generation_tokens=n) for p, n in finished
        ],
        num_preempted_reqs=0,
    )


def random_prompt(seed: int, length: int) -> tuple[int, ...]:
    """Token ids from the tiny model's 512-token vocabulary, away from its special tokens; random, so no
    two prompts share a cached block."""
    return tuple(int(i) for i in np.random.default_rng(seed).integers(128, 384, length))


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_decodes_context_is_what_each_running_request_has_in_the_kv_cache():
    log = IterationLog()
    steps = [
        (scheduler(1, prefill_tokens=100), outputs(1, prompts=(100,))),  # A: 100 prompt tokens, 1st token
        (scheduler(2, prefill_tokens=40, decodes=1), outputs(2, prompts=(40,))),  # A decodes, B prefilled
        (scheduler(1, decodes=2), outputs(2, finished=((40, 2),))),  # both decode, B finishes
        (scheduler(1, decodes=1), outputs(1)),
    ]
    contexts = [log.describe(*step)["context_tokens"] for step in steps]
    assert contexts == [0, 100, 141, 102]
    log.describe(scheduler(0), outputs(1, finished=((999, 1),)))  # numbers that do not add up...
    assert log.describe(scheduler(1, decodes=0), None)["context_tokens"] == 0  # ...reset once nothing runs


def test_records_go_to_the_file_of_the_moment_and_stats_alone_are_not_steps(tmp_path):
    log = IterationLog()
    log.record(scheduler(1, prefill_tokens=10), outputs(1, prompts=(10,)))  # no run listening
    log.open(tmp_path / "a.jsonl")
    log.record(scheduler(1, decodes=1, index=1), outputs(1))
    log.record(scheduler(1, index=None), None)  # scheduler stats alone: no step ran
    log.open(tmp_path / "b.jsonl")
    log.record(scheduler(1, decodes=1, index=2), outputs(1))
    log.open(None)
    log.record(scheduler(0, decodes=1, index=3), outputs(1, finished=((10, 3),)))
    assert [r["index"] for r in read_log(tmp_path / "a.jsonl")] == [1]
    (only,) = read_log(tmp_path / "b.jsonl")
    assert only["index"] == 2 and only["decodes"] == 1 and only["context_tokens"] == 11
    assert only["engine_gap_ms"] == pytest.approx(4.0)


def test_a_failing_sink_stops_recording_instead_of_failing_the_engine(tmp_path, monkeypatch):
    """vLLM's output handler fails every request in flight if a stat logger raises."""
    log = IterationLog()
    log.open(tmp_path / "full.jsonl")

    def disk_full(self, text):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(DurableLog, "append", disk_full)
        log.record(scheduler(1, prefill_tokens=10), outputs(1, prompts=(10,)))
    log.record(scheduler(1, decodes=1, index=1), outputs(1))
    assert read_log(tmp_path / "full.jsonl") == []


async def generate_all(engine, prompts: list[tuple[int, ...]], lengths: list[int]) -> list[StepResult]:
    calls = [
        engine.generate(TokenPrompt(ids), GenerationParams(max_tokens=length), f"iterations-{i}")
        for i, (ids, length) in enumerate(zip(prompts, lengths, strict=True))
    ]
    return await asyncio.gather(*calls)


def check_against_requests(records: list[dict], results: list[StepResult]) -> None:
    """What the requests got, from their own results, equals what the iterations say the engine did."""
    first = records[0]["index"]
    assert [r["index"] for r in records] == list(range(first, first + len(records)))
    assert sum(r["generated"] for r in records) == sum(result.output_tokens for result in results)
    assert sum(r["decodes"] for r in records) == sum(result.output_tokens - 1 for result in results)
    computed = sum(result.prompt_tokens - (result.cached_prompt_tokens or 0) for result in results)
    assert sum(r["prefill_tokens"] for r in records) == computed
    assert sum(r["prompt_tokens_computed"] for r in records) == computed
    assert sum(r["prompts_done"] for r in records) == sum(r["finished"] for r in records) == len(results)
    assert records[-1]["running"] == 0


@pytest.mark.engine
def test_the_log_holds_every_iteration_of_the_real_engine(engine, engine_loop, tmp_path):
    """Ten concurrent requests of different lengths (chunked prefills among them: the CPU budget is 2048
    tokens), then one request alone, whose decodes' context grows by one token a step."""
    path = tmp_path / ITERATIONS
    prompts = [random_prompt(i, 300 * (i + 1)) for i in range(10)]
    lengths = [2 + 3 * i for i in range(10)]
    engine.record_iterations(path)
    try:
        together = engine_loop.run(generate_all(engine, prompts, lengths))
        settled = len(read_log(path))
        alone = engine_loop.run(generate_all(engine, [random_prompt(10, 150)], [6]))
    finally:
        engine.record_iterations(None)
    engine_loop.run(generate_all(engine, prompts[:1], [3]))  # after the sink is unset: not recorded
    records = read_log(path)
    check_against_requests(records[:settled], together)
    assert any(r["prefills"] and r["decodes"] for r in records[:settled])  # mixed steps were seen
    assert max(r["prefill_tokens"] for r in records[:settled]) <= 2048
    check_against_requests(records[settled:], alone)
    prompt = alone[0].prompt_tokens - (alone[0].cached_prompt_tokens or 0)
    assert [r["prefill_tokens"] for r in records[settled:]] == [prompt, 0, 0, 0, 0, 0]
    assert [r["context_tokens"] for r in records[settled:]] == [0, 150, 151, 152, 153, 154]
    assert all(r["engine_gap_ms"] > 0 for r in records[settled + 1 :])


@pytest.mark.engine
def test_a_run_records_its_engines_iterations_in_its_own_directory(engine, engine_loop, tmp_path):
    """`start_engine` points the shared engine's log at the run directory and `release` unsets it."""
    config = RunConfig.model_validate(
        {
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "output": {"out_dir": str(tmp_path / "runs"), "run_id": "r"},
            "num_flows": 3,
            "max_tokens": 8,
            "warmup": 0,
        }
    )
    result = engine_loop.run(run_benchmark(config, RunHooks(echo=lambda line: None), shutdown_engine=False))
    assert result.exit_code == 0
    records = read_log(result.run_dir / ITERATIONS)
    lines = (result.run_dir / "steps.jsonl").read_text().splitlines()
    steps = [StepRecord.model_validate_json(line) for line in lines]
    assert sum(r["generated"] for r in records) == sum(step.output_tokens for step in steps) == 3 * 3 * 8
    engine_loop.run(generate_all(engine, [random_prompt(11, 40)], [2]))
    assert len(read_log(result.run_dir / ITERATIONS)) == len(records)
