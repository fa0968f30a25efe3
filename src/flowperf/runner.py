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
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowperf.engines.base import Engine, GenerationParams, StepResult
from flowperf.flows.expand import ExpandedFlow, ExpandedFlowSet, StepSpec
from flowperf.store import RunStore
from flowperf.timing import TimingLog


@dataclass(frozen=True)
class RunSettings:
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


@dataclass(frozen=True)
class WorkflowOutcome:
    """What a finished workflow reports to whoever shows progress."""

    flow: ExpandedFlow
    ok: bool
    workflow_ms: float
    output_tokens: int


class StepTimeout(Exception):
    """A step took longer than --step-timeout-s."""


def generation_params(
    step: StepSpec, settings: RunSettings, flow: ExpandedFlow, position: int
) -> GenerationParams:
    """Fixed-length generation per the template, with a per-request seed that is stable across runs."""
    return GenerationParams(
        max_tokens=settings.max_tokens or step.max_tokens,
        temperature=step.temperature,
        ignore_eos=step.ignore_eos,
        seed=(settings.seed * 1_000_003 + flow.index * 97 + position) % (2**31),
    )


class Runner:
    """Drives workflows through an engine and writes their results to a RunStore."""

    def __init__(
        self,
        flows: ExpandedFlowSet,
        engine: Engine,
        store: RunStore,
        timing: TimingLog,
        settings: RunSettings,
        on_workflow_done: Callable[[WorkflowOutcome], None] = lambda outcome: None,
        phase: Callable[..., AbstractContextManager[None]] = lambda name, **fields: nullcontext(),
    ) -> None:
        self.flows = flows
        self.engine = engine
        self.store = store
        self.timing = timing
        self.settings = settings
        self.on_workflow_done = on_workflow_done
        self.phase = phase
        self.steps_done = 0
        self._recording = True
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
        asyncio.get_running_loop().call_later(self.settings.grace_s, self._cancel_workers)

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    def _offset_ms(self, moment: float) -> float:
        return (moment - self._window_start) * 1000.0

    async def warm_up(self, workflows: Iterable[ExpandedFlow]) -> None:
        """Run `workflows` to warm the engine: timed on stdout and timing.log, never in the results."""
        self._recording = False
        try:
            await self._closed_loop(list(workflows), self.settings.concurrency or 1)
        finally:
            self._recording = True

    async def run(self, workflows: Iterable[ExpandedFlow]) -> bool:
        """Run `workflows` closed loop (up to `concurrency` in flight) or, with `rate`, open loop.

        Returns whether the run was stopped before every workflow had started.
        """
        if self.settings.rate is None:
            await self._closed_loop(list(workflows), self.settings.concurrency or 1)
        else:
            await self._open_loop(list(workflows), self.settings.rate, self.settings.concurrency)
        return self._stopping

    async def _closed_loop(self, workflows: list[ExpandedFlow], workers: int) -> None:
        pending = iter(workflows)

        async def worker() -> None:
            for flow in pending:
                if self._stopping:
                    return
                await self._run_and_count(flow, None)

        self._begin_window()
        self._workers = [asyncio.create_task(worker()) for _ in range(workers)]
        await self._gather_workers()

    async def _open_loop(self, workflows: list[ExpandedFlow], rate: float, cap: int | None) -> None:
        """Workflows arrive as a seeded Poisson process at `rate` per second, whatever is in flight;
        with a cap, an arrival beyond it waits for a free slot (its wait shows as arrival-to-start)."""
        arrivals = np.cumsum(
            np.random.default_rng(self.settings.seed).exponential(1.0 / rate, len(workflows))
        )
        slots = asyncio.Semaphore(cap) if cap else None

        async def admit(flow: ExpandedFlow, arrival_ms: float) -> None:
            if slots is None:
                await self._run_and_count(flow, arrival_ms)
                return
            async with slots:
                if not self._stopping:
                    await self._run_and_count(flow, arrival_ms)

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
        self.flows.prepare()
        self._workers = []
        self._window_start = time.perf_counter()

    async def _gather_workers(self) -> None:
        """Wait for every worker; `request_stop` cancels the same list after the grace period."""
        for outcome in await asyncio.gather(*self._workers, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome

    async def _run_and_count(self, flow: ExpandedFlow, arrival_ms: float | None) -> None:
        if self._recording:
            with self.phase("workflow", flow_index=flow.index):
                outcome = await self._run_workflow(flow, arrival_ms)
            self.on_workflow_done(outcome)
        else:
            outcome = await self._run_workflow(flow, arrival_ms)
        if not outcome.ok and self.settings.fail_fast:
            self.request_stop()

    async def _run_workflow(self, flow: ExpandedFlow, arrival_ms: float | None) -> WorkflowOutcome:
        outputs: dict[str, str] = {}
        totals = {"prompt_tokens": 0, "output_tokens": 0, "cached_prompt_tokens": 0, "step_ms_sum": 0.0}
        error: BaseException | None = None
        steps_ok = 0
        started = time.perf_counter()
        for position, step in enumerate(self.flows.steps):
            record, result, error = await self._run_step(flow, step, position, outputs)
            if self._recording:
                self.store.append_step(record)
                self.steps_done += 1
            totals["step_ms_sum"] += record["step_ms"]
            if result is None:
                break
            steps_ok += 1
            outputs[step.id] = result.text
            totals["prompt_tokens"] += result.prompt_tokens
            totals["output_tokens"] += result.output_tokens
            totals["cached_prompt_tokens"] += result.cached_prompt_tokens or 0
        ended = time.perf_counter()
        workflow_ms = (ended - started) * 1000.0
        status = "ok" if error is None else "failed"
        if not self._recording:
            self.timing.emit(
                f"warmup_{flow.index}_ms", workflow_ms, steps=len(self.flows.steps), status=status
            )
        else:
            self.store.append_workflow(
                {
                    "flow_index": flow.index,
                    "flow_id": flow.flow_id,
                    "session": self.settings.session,
                    "status": status,
                    "workflow_ms": round(workflow_ms, 3),
                    "step_ms_sum": round(totals["step_ms_sum"], 3),
                    "steps": len(self.flows.steps),
                    "steps_ok": steps_ok,
                    "prompt_tokens": totals["prompt_tokens"],
                    "output_tokens": totals["output_tokens"],
                    "cached_prompt_tokens": totals["cached_prompt_tokens"],
                    "arrival_offset_ms": "" if arrival_ms is None else round(arrival_ms, 3),
                    "start_offset_ms": round(self._offset_ms(started), 3),
                    "end_offset_ms": round(self._offset_ms(ended), 3),
                    "error_type": type(error).__name__ if error else "",
                    "error_message": str(error) if error else "",
                }
            )
            self.timing.emit(
                f"workflow_{flow.index}_ms", workflow_ms, steps=len(self.flows.steps), status=status
            )
        return WorkflowOutcome(
            flow=flow, ok=error is None, workflow_ms=workflow_ms, output_tokens=int(totals["output_tokens"])
        )

    async def _run_step(
        self, flow: ExpandedFlow, step: StepSpec, position: int, outputs: dict[str, str]
    ) -> tuple[dict[str, Any], StepResult | None, Exception | None]:
        """Run one step; never raises for a failure of the step itself, it records it."""
        params = generation_params(step, self.settings, flow, position)
        record: dict[str, Any] = {
            "flow_index": flow.index,
            "flow_id": flow.flow_id,
            "session": self.settings.session,
            "step_index": position,
            "step_id": step.id,
            "max_tokens": params.max_tokens,
        }
        started = time.perf_counter()
        self._inflight += 1
        record["inflight_at_start"] = self._inflight
        result: StepResult | None = None
        error: Exception | None = None
        prompt = ""
        try:
            prompt = self.flows.render(flow, step, outputs)
            request = self.engine.generate(prompt, params, f"{self.settings.run_id}-{flow.flow_id}-{step.id}")
            timeout = self.settings.step_timeout_s
            try:
                result = await asyncio.wait_for(request, timeout) if timeout else await request
            except TimeoutError:
                raise StepTimeout(f"step took longer than --step-timeout-s {timeout:g}") from None
        except Exception as failure:
            error = failure
        finally:
            self._inflight -= 1
        record["start_offset_ms"] = round(self._offset_ms(started), 3)
        if result is None:
            record |= {
                "status": "failed",
                "step_ms": round((time.perf_counter() - started) * 1000.0, 3),
                "error_type": type(error).__name__,
                "error_message": str(error),
            }
        else:
            record |= {
                "status": "ok",
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
            }
        if self.settings.save_text:
            record["prompt_text"] = prompt
            record["output_text"] = result.text if result else ""
        return record, result, error


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
