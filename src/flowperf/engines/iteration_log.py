"""Every iteration of the in-process vLLM engine, one JSON line each, in the run's `iterations.jsonl`.

The run's steps say when each token reached the harness, not what the engine batched: the iteration-time
fit (`flowperf.stress.calibrate`) needs each iteration's length and composition, and only the engine
knows them. vLLM V1's AsyncLLM calls every stat logger given as `stat_loggers=` once per engine-core
output batch, i.e. once per engine step, in the front end (this process, on its event loop), with:

- `SchedulerStats` from the engine core (a child process), made at the end of the step: running and
  waiting requests, KV cache usage, and, with `enable_logging_iteration_details` (which flowperf sets),
  the step's composition from its scheduler output: prefill ("context") requests and the prompt tokens
  scheduled for them (a chunk of a chunked prefill counts in its own step; cached tokens are not
  scheduled), decode ("generation") requests, and `elapsed_ms`, the model execution time on the core's
  monotonic clock (not counting scheduling and output processing);
- `IterationStats`, made by the front end when it pulled the batch: `iteration_timestamp` (`time.time()`,
  the front end's wall clock, not the engine's), the tokens generated (first tokens included), the prompt
  tokens of prefills that completed in it (whole prompts, computed and cached), preemptions, the
  requests that finished; None for a step that emitted no token (a chunk of a prefill, alone).

A line's `t` is `iteration_timestamp` moved onto the harness's `perf_counter` clock (the clock of every
step time), since wall time can jump; it is when the front end received the step's outputs, so
consecutive `t` are the engine's step period as long as the front end keeps up (it shares the process
with the harness). `engine_gap_ms` is the same period on the engine core's monotonic clock where vLLM
measured one: the smallest inter-token latency of the step's decodes (their previous token came from the
step before, unless that step emitted nothing).

`context_tokens` (the tokens already in the KV cache that the step's decodes read: each one's prompt and
the tokens it made before the one it feeds in, vLLM's `num_computed_tokens`, the simulator's context) is
not reported by vLLM; it is kept here as a running sum: a completed prefill adds its prompt, every token
after a request's first adds one, a finished request takes its prompt and tokens but the last out, and
the sum is reset whenever nothing is running. A preempted request's tokens stay in it until it finishes
(it recomputes them in the meantime), an approximation that only matters when the KV cache is too small.

The engine object outlives a run (sweeps, A/B sessions share it), so the stat logger is created once with
the engine and forwards to whichever file the current run set (`IterationLog.open`), or nowhere.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flowperf.rundir.durable import DurableLog


class IterationLog:
    """Where the engine's iteration records go now (a run's iterations.jsonl, or nowhere), and the
    running sums a record needs from the records before it."""

    def __init__(self) -> None:
        self._sink: DurableLog | None = None
        self._context = 0

    def open(self, path: Path | None) -> None:
        """Append records to `path` from now on; None stops (and closes the previous file)."""
        previous, self._sink = self._sink, None
        if previous is not None:
            previous.close()
        if path is not None:
            self._sink = DurableLog(path)

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """One engine output: written if a run listens and it is a step (the core also sends scheduler
        stats alone, e.g. after a step that scheduled nothing), counted into the running sums either way."""
        line = self.describe(scheduler_stats, iteration_stats)
        sink = self._sink
        if sink is None or ("index" not in line and iteration_stats is None):
            return
        try:
            sink.append(json.dumps(line, separators=(",", ":")) + "\n")
        except (OSError, ValueError):  # a full disk, or a sink closed under it: vLLM would fail every request
            self._sink = None

    def describe(self, scheduler_stats: Any, iteration_stats: Any) -> dict[str, Any]:
        """The record of one step (see the module docstring for each field's source and clock)."""
        line: dict[str, Any] = {"t": _perf_time(iteration_stats), "context_tokens": self._context}
        if scheduler_stats is not None:
            line |= _scheduler_fields(scheduler_stats)
        if iteration_stats is not None:
            line |= _output_fields(iteration_stats)
        self._advance(scheduler_stats, iteration_stats)
        return line

    def _advance(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """The decodes' context after this step: what the next step's decodes find in the KV cache."""
        if iteration_stats is not None:
            finished = iteration_stats.finished_requests
            done = sum(request.num_prompt_tokens + request.num_generation_tokens - 1 for request in finished)
            decoded = iteration_stats.num_generation_tokens - len(iteration_stats.time_to_first_tokens_iter)
            self._context += iteration_stats.prompt_token_stats.total + decoded - done
        if scheduler_stats is not None and scheduler_stats.num_running_reqs == 0:
            self._context = 0


def _perf_time(iteration_stats: Any) -> float:
    """When the front end received the step (s, perf_counter): the wall-clock iteration_timestamp moved
    onto perf_counter by the two clocks' offset now; now itself for a step that emitted nothing."""
    now = time.perf_counter()
    if iteration_stats is None:
        return round(now, 6)
    return round(now - (time.time() - iteration_stats.iteration_timestamp), 6)


def _scheduler_fields(stats: Any) -> dict[str, Any]:
    fields = {
        "running": stats.num_running_reqs,
        "waiting": stats.num_waiting_reqs,
        "kv_usage": round(stats.kv_cache_usage, 6),
    }
    details = stats.iteration_details
    if details is not None:
        fields |= {
            "index": details.iteration_index,
            "prefills": details.num_ctx_requests,
            "prefill_tokens": details.num_ctx_tokens,
            "decodes": details.num_generation_requests,
            "elapsed_ms": round(details.elapsed_ms, 4),
        }
    return fields


def _output_fields(stats: Any) -> dict[str, Any]:
    gaps = stats.inter_token_latencies_iter
    return {
        "generated": stats.num_generation_tokens,
        "prompts_done": len(stats.time_to_first_tokens_iter),
        "prompt_tokens_done": stats.prompt_token_stats.total,
        "prompt_tokens_computed": stats.prompt_token_stats.computed,
        "finished": len(stats.finished_requests),
        "preempted": stats.num_preempted_reqs,
        "engine_gap_ms": round(min(gaps) * 1000.0, 4) if gaps else None,
    }


def stat_logger_factory(log: IterationLog) -> Any:
    """A vLLM stat logger class (a per-engine factory for `AsyncLLM(stat_loggers=[...])`) that hands every
    record to `log`. vLLM is imported here, when an engine starts, not when flowperf is imported."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class IterationStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            log.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            """Nothing to say at start-up: records begin with the first step."""

    return IterationStatLogger


def record_iterations(engine: object, path: Path | None) -> None:
    """Point `engine`'s iteration records at `path` (None: stop). An engine that sees no iterations (one
    over HTTP, a test double wrapping another) may lack the method; there is then nothing to record."""
    method = getattr(engine, "record_iterations", None)
    if method is not None:
        method(path)
