"""The executor: runs expanded workflows through one engine and records every step as it finishes.

Steps of a workflow run strictly in order, each prompt rendered with the real outputs of the steps
before it. Closed loop: up to `concurrency` workflows in flight (1 = sequential). Open loop (`rate`):
workflows arrive as a seeded Poisson process whatever is in flight, for latency under load.

A failing step (engine error, HTTP error, timeout) fails its workflow, with the error recorded, and the
run goes on: one bad request never costs the others, unless `fail_fast` asks otherwise.

A stop request (Ctrl-C) starts no new workflow and gives in-flight steps `grace_s` to finish before they
are cancelled; a cancelled workflow writes no row, so a resumed run runs it again from its first step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from flowperf.engines.base import Engine, GenerationParams, StepResult
from flowperf.flows.expand import ExpandedFlow, ExpandedFlowSet, StepSpec
from flowperf.records import StepRecord, WorkflowRecord
from flowperf.sinks import RecordSink


@dataclass(frozen=True)
class ExecutionConfig:
    """How to execute: identical for every workflow of a run."""

    run_id: str
    concurrency: int | None = 1
    rate: float | None = None
    max_tokens: int | None = None
    seed: int = 0
    save_text: bool = False
    step_timeout_s: float | None = None
    fail_fast: bool = False
    grace_s: float = 30.0
    session: int = 0


class StepTimeout(Exception):
    """A step took longer than --step-timeout-s."""


def generation_params(
    step: StepSpec, config: ExecutionConfig, flow: ExpandedFlow, position: int
) -> GenerationParams:
    """Fixed-length generation per the template, with a per-request seed that is stable across runs."""
    return GenerationParams(
        max_tokens=config.max_tokens or step.max_tokens,
        temperature=step.temperature,
        ignore_eos=step.ignore_eos,
        seed=(config.seed * 1_000_003 + flow.index * 97 + position) % (2**31),
    )


def poisson_arrivals(rate: float, count: int, seed: int) -> np.ndarray:
    """`count` arrival times (s from the window start) of a Poisson process at `rate` per second: gaps
    are exponential with mean 1/rate, drawn from `seed` alone so a run's schedule can be replayed."""
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, count))


class Runner:
    """Drives workflows through an engine; every finished step and workflow goes to the sink of the call
    (the run directory for measured workflows, only the timing log for warm-up)."""

    def __init__(self, flows: ExpandedFlowSet, engine: Engine, config: ExecutionConfig) -> None:
        self.flows = flows
        self.engine = engine
        self.config = config
        self._window_start = 0.0
        self._inflight = 0
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    def request_stop(self) -> None:
        """Start no new workflow; cancel what is still running after the grace period."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_requested.set()
        asyncio.get_running_loop().call_later(self.config.grace_s, self._cancel_workers)

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    def _offset_ms(self, moment: float) -> float:
        return (moment - self._window_start) * 1000.0

    async def warm_up(self, workflows: Iterable[ExpandedFlow], sink: RecordSink) -> None:
        """Run `workflows` closed loop to warm the engine; `sink` decides what of them is kept."""
        await self._closed_loop(list(workflows), self.config.concurrency or 1, sink)

    async def run(self, workflows: Iterable[ExpandedFlow], sink: RecordSink) -> bool:
        """Run `workflows` closed loop (up to `concurrency` in flight) or, with `rate`, open loop.

        Returns whether the run was stopped before every workflow had started.
        """
        if self.config.rate is None:
            await self._closed_loop(list(workflows), self.config.concurrency or 1, sink)
        else:
            await self._open_loop(list(workflows), self.config.rate, self.config.concurrency, sink)
        return self._stopping

    async def _closed_loop(self, workflows: list[ExpandedFlow], workers: int, sink: RecordSink) -> None:
        pending = iter(workflows)

        async def worker() -> None:
            for flow in pending:
                if self._stopping:
                    return
                await self._run_and_count(flow, None, sink)

        self._begin_window()
        self._workers = [asyncio.create_task(worker()) for _ in range(workers)]
        await self._gather_workers()

    async def _open_loop(
        self, workflows: list[ExpandedFlow], rate: float, cap: int | None, sink: RecordSink
    ) -> None:
        """Workflows arrive as a seeded Poisson process at `rate` per second, whatever is in flight;
        with a cap, an arrival beyond it waits for a free slot (its wait shows as arrival-to-start)."""
        arrivals = poisson_arrivals(rate, len(workflows), self.config.seed)
        slots = asyncio.Semaphore(cap) if cap else None

        async def admit(flow: ExpandedFlow, arrival_ms: float) -> None:
            if slots is None:
                await self._run_and_count(flow, arrival_ms, sink)
                return
            async with slots:
                if not self._stopping:
                    await self._run_and_count(flow, arrival_ms, sink)

        self._begin_window()
        for flow, arrival_s in zip(workflows, arrivals, strict=True):
            delay = self._window_start + float(arrival_s) - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), delay)
            if self._stopping:
                break
            self._workers.append(asyncio.create_task(admit(flow, float(arrival_s) * 1000.0)))
        await self._gather_workers()

    def _begin_window(self) -> None:
        self.flows.compile_templates()
        self._workers = []
        self._window_start = time.perf_counter()

    async def _gather_workers(self) -> None:
        """Wait for every worker; `request_stop` cancels the same list after the grace period."""
        for outcome in await asyncio.gather(*self._workers, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome

    async def _run_and_count(self, flow: ExpandedFlow, arrival_ms: float | None, sink: RecordSink) -> None:
        with sink.workflow_scope(flow):
            record = await self._run_workflow(flow, arrival_ms, sink)
        sink.workflow(record)
        if record.status != "ok" and self.config.fail_fast:
            self.request_stop()

    async def _run_workflow(
        self, flow: ExpandedFlow, arrival_ms: float | None, sink: RecordSink
    ) -> WorkflowRecord:
        outputs: dict[str, str] = {}
        steps: list[StepRecord] = []
        started = time.perf_counter()
        for position, step in enumerate(self.flows.steps):
            record, text = await self._run_step(flow, step, position, outputs)
            sink.step(record)
            steps.append(record)
            if text is None:
                break
            outputs[step.id] = text
        ended = time.perf_counter()
        ok = [record for record in steps if record.status == "ok"]
        failed = steps[-1] if len(ok) < len(steps) else None
        return WorkflowRecord(
            flow_index=flow.index,
            flow_id=flow.flow_id,
            session=self.config.session,
            status="ok" if failed is None else "failed",
            workflow_ms=round((ended - started) * 1000.0, 3),
            step_ms_sum=round(sum(record.step_ms for record in steps), 3),
            steps=len(self.flows.steps),
            steps_ok=len(ok),
            prompt_tokens=sum(record.prompt_tokens or 0 for record in ok),
            output_tokens=sum(record.output_tokens or 0 for record in ok),
            cached_prompt_tokens=sum(record.cached_prompt_tokens or 0 for record in ok),
            arrival_offset_ms=None if arrival_ms is None else round(arrival_ms, 3),
            start_offset_ms=round(self._offset_ms(started), 3),
            end_offset_ms=round(self._offset_ms(ended), 3),
            error_type=failed.error_type or "" if failed else "",
            error_message=failed.error_message or "" if failed else "",
        )

    async def _run_step(
        self, flow: ExpandedFlow, step: StepSpec, position: int, outputs: dict[str, str]
    ) -> tuple[StepRecord, str | None]:
        """Run one step: its record, and its output text (None if it failed). Never raises for a failure
        of the step itself; it records it."""
        params = generation_params(step, self.config, flow, position)
        started = time.perf_counter()
        self._inflight += 1
        inflight_at_start = self._inflight
        result: StepResult | None = None
        error: Exception | None = None
        prompt = ""
        try:
            prompt = self.flows.render(flow, step, outputs)
            result = await self._generate(prompt, params, f"{self.config.run_id}-{flow.flow_id}-{step.id}")
        except Exception as failure:
            error = failure
        finally:
            self._inflight -= 1
        identity = {
            "flow_index": flow.index,
            "flow_id": flow.flow_id,
            "session": self.config.session,
            "step_index": position,
            "step_id": step.id,
            "max_tokens": params.max_tokens,
            "inflight_at_start": inflight_at_start,
            "start_offset_ms": round(self._offset_ms(started), 3),
        }
        texts = (
            {"prompt_text": prompt, "output_text": result.text if result else ""}
            if self.config.save_text
            else {}
        )
        if result is None:
            assert error is not None
            failure_ms = round((time.perf_counter() - started) * 1000.0, 3)
            return StepRecord(
                **identity,
                **texts,
                status="failed",
                step_ms=failure_ms,
                error_type=type(error).__name__,
                error_message=str(error),
            ), None
        return StepRecord(**identity, **texts, status="ok", **measured_fields(result)), result.text

    async def _generate(self, prompt: str, params: GenerationParams, request_id: str) -> StepResult:
        request = self.engine.generate(prompt, params, request_id)
        timeout = self.config.step_timeout_s
        if not timeout:
            return await request
        try:
            return await asyncio.wait_for(request, timeout)
        except TimeoutError:
            raise StepTimeout(f"step took longer than --step-timeout-s {timeout:g}") from None


def measured_fields(result: StepResult) -> dict[str, object]:
    """What a successful step's record says about the engine's answer (rounded to the microsecond)."""
    return {
        "step_ms": round(result.e2e_ms, 3),
        "ttft_ms": _rounded(result.ttft_ms),
        "tpot_ms": _rounded(result.tpot_ms),
        "itl_ms": [round(gap, 3) for gap in result.itl_ms],
        "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens,
        "cached_prompt_tokens": result.cached_prompt_tokens,
        "finish_reason": result.finish_reason,
        "engine_queue_ms": _rounded(result.engine_queue_ms),
        "engine_ttft_ms": _rounded(result.engine_ttft_ms),
        "connect_wait_ms": _rounded(result.connect_wait_ms),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
