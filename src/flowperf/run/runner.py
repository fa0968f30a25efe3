"""The executor: runs expanded workflows through one engine and records every step as it finishes.

A workflow runs its plan (`flows.plan`): each step starts as soon as the steps it needs have finished, so
a chain runs in order and branches run concurrently; each prompt is rendered with the real outputs of the
steps it needs. Tool and think steps pause for their drawn duration while the workflow keeps its
concurrency slot, as a live agent session does. Closed loop: up to `concurrency` workflows in flight (1 =
sequential). Open loop (`rate`): workflows arrive as a seeded Poisson process whatever is in flight, for
latency under load.

A failing step (engine error, HTTP error, timeout) fails its workflow, with the error recorded: no
further step of it starts (running branches finish and are recorded), and the run goes on: one bad
request never costs the others, unless `fail_fast` asks otherwise.

A stop request (Ctrl-C) starts no new workflow and gives in-flight steps `grace_s` to finish before they
are cancelled; a cancelled workflow writes no row, so a resumed run runs it again from its first step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from flowperf.engines.base import Engine, GenerationParams, Prompt, StepResult, TokenPrompt
from flowperf.flows.expand import ExpandedFlow
from flowperf.flows.filler import FillerText
from flowperf.flows.plan import PlannedNode, StepSpec
from flowperf.flows.source import WorkflowSource
from flowperf.run.critical_path import critical_path
from flowperf.run.sinks import RecordSink
from flowperf.run.workflow_state import WorkflowState
from flowperf.rundir.records import StepRecord, WorkflowRecord
from flowperf.stats import poisson_arrivals


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
    filler_tokens_per_word: float = 1.0
    time_scale: float | None = None


@dataclass(frozen=True)
class MeasuredWindow:
    """One worker's share of a measured window: when it starts (perf_counter, this host's monotonic
    clock) and, open loop, the arrival (s from the start) of each of its workflows."""

    start: float
    arrivals_s: np.ndarray


WindowListener = Callable[[float, np.ndarray | None], None]
"""Told as a measured window opens: its start (perf_counter) and, open loop, the arrivals (s from it)."""


class WindowRunner(Protocol):
    """What runs a measured window: a Runner in this process, or a pool of client workers. Its
    `window_opened`, when set, is called once the window's clock starts (after templates compiled, when
    workers are told to go), so whoever watches the window counts from the same moment the offsets do."""

    window_opened: WindowListener | None

    async def run(self, workflows: Iterable[ExpandedFlow], sink: Any) -> bool: ...

    def request_stop(self) -> None: ...


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


class Runner:
    """Drives workflows through an engine; every finished step and workflow goes to the sink of the call
    (the run directory for measured workflows, only the timing log for warm-up)."""

    def __init__(self, flows: WorkflowSource, engine: Engine, config: ExecutionConfig) -> None:
        self.flows = flows
        self.engine = engine
        self.config = config
        self._window_start = 0.0
        self._inflight = 0
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.filler = FillerText(config.filler_tokens_per_word)
        self.window_opened: WindowListener | None = None

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

    @property
    def window_start(self) -> float | None:
        """The current measured window's start (perf_counter), None before a window opened; what the
        engine-metrics scraper stamps its samples from."""
        return self._window_start or None

    def _offset_ms(self, moment: float) -> float:
        return (moment - self._window_start) * 1000.0

    async def warm_up(self, workflows: Iterable[ExpandedFlow], sink: RecordSink) -> None:
        """Run `workflows` closed loop to warm the engine; `sink` decides what of them is kept."""
        await self._closed_loop(list(workflows), self.config.concurrency or 1, sink)

    async def run(
        self,
        workflows: Iterable[ExpandedFlow],
        sink: RecordSink,
        window: MeasuredWindow | None = None,
    ) -> bool:
        """Run `workflows` closed loop (up to `concurrency` in flight) or, with `rate`, open loop.

        `window` is given when this runner is one of several client workers: the window start and the
        arrivals of these workflows come from the one schedule the coordinator drew for all of them.
        Returns whether the run was stopped before every workflow had started.
        """
        todo = list(workflows)
        start = None if window is None else window.start
        if start is not None:
            await self._wait_until(start)
        if not self.open_loop:
            await self._closed_loop(todo, self.config.concurrency or 1, sink, start)
            return self._stopping
        arrivals = self.arrivals(todo) if window is None else window.arrivals_s
        await self._open_loop(todo, arrivals, self.config.concurrency, sink, start)
        return self._stopping

    @property
    def open_loop(self) -> bool:
        return self.config.rate is not None or self.config.time_scale is not None

    def arrivals(self, workflows: list[ExpandedFlow]) -> np.ndarray:
        """Seconds from the window start: Poisson at `rate`, else the workflows' own timeline (a trace's)
        from the first of them, `time_scale` times faster."""
        if self.config.rate is not None:
            return poisson_arrivals(self.config.rate, len(workflows), self.config.seed)
        own = np.array([self.flows.arrival_s(flow) for flow in workflows], dtype=float)
        assert self.config.time_scale is not None
        return (own - own[0]) / self.config.time_scale if own.size else own

    async def _closed_loop(
        self, workflows: list[ExpandedFlow], workers: int, sink: RecordSink, start: float | None = None
    ) -> None:
        pending = iter(workflows)

        async def worker() -> None:
            for flow in pending:
                if self._stopping:
                    return
                await self._run_and_count(flow, None, sink)

        self._begin_window(start)
        self._workers = [asyncio.create_task(worker()) for _ in range(workers)]
        await self._gather_workers()

    async def _open_loop(
        self,
        workflows: list[ExpandedFlow],
        arrivals: np.ndarray,
        cap: int | None,
        sink: RecordSink,
        start: float | None = None,
    ) -> None:
        """Workflows arrive on schedule (`arrivals`, s), whatever is in flight; with a cap, an arrival
        beyond it waits for a free slot (its wait shows as arrival-to-start)."""
        slots = asyncio.Semaphore(cap) if cap else None

        async def admit(flow: ExpandedFlow, arrival_ms: float) -> None:
            if slots is None:
                await self._run_and_count(flow, arrival_ms, sink)
                return
            async with slots:
                if not self._stopping:
                    await self._run_and_count(flow, arrival_ms, sink)

        self._begin_window(start, arrivals)
        for flow, arrival_s in zip(workflows, arrivals, strict=True):
            await self._wait_until(self._window_start + float(arrival_s))
            if self._stopping:
                break
            self._workers.append(asyncio.create_task(admit(flow, float(arrival_s) * 1000.0)))
        await self._gather_workers()

    async def _wait_until(self, moment: float) -> None:
        """Sleep until `moment` (perf_counter; an arrival, or the window start a worker was told early, so
        that no offset is negative); a stop request ends the wait."""
        delay = moment - time.perf_counter()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)

    def _begin_window(self, start: float | None, arrivals: np.ndarray | None = None) -> None:
        """Offsets count from `start` (perf_counter) when the coordinator of several workers set it."""
        self.flows.compile_templates()
        self._workers = []
        self._window_start = time.perf_counter() if start is None else start
        if self.window_opened is not None:
            self.window_opened(self._window_start, arrivals)

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
        plan = self.flows.plan(flow, self.config.seed)
        state = WorkflowState(flow, plan, self.flows.system_message(flow))
        started = time.perf_counter()
        await self._execute(state, sink)
        ended = time.perf_counter()
        steps = state.records
        path = critical_path(steps)
        ok = [record for record in steps if record.status == "ok"]
        failed = next((record for record in steps if record.status == "failed"), None)
        return WorkflowRecord(
            flow_index=flow.index,
            flow_id=flow.flow_id,
            session=self.config.session,
            status="ok" if failed is None else "failed",
            workflow_ms=round((ended - started) * 1000.0, 3),
            step_ms_sum=round(sum(record.step_ms for record in steps), 3),
            steps=len(plan),
            steps_ok=len(ok),
            steps_failed=len(steps) - len(ok),
            prompt_tokens=sum(record.prompt_tokens or 0 for record in ok),
            output_tokens=sum(record.output_tokens or 0 for record in ok),
            cached_prompt_tokens=sum(record.cached_prompt_tokens or 0 for record in ok),
            arrival_offset_ms=None if arrival_ms is None else round(arrival_ms, 3),
            start_offset_ms=round(self._offset_ms(started), 3),
            end_offset_ms=round(self._offset_ms(ended), 3),
            error_type=failed.error_type or "" if failed else "",
            error_message=failed.error_message or "" if failed else "",
            **path.as_fields(),
        )

    async def _execute(self, state: WorkflowState, sink: RecordSink) -> None:
        """Run the plan's steps as their needs are met, concurrently where the graph allows; after a
        failure start nothing new, let running siblings finish (their records count), and stop."""
        finished: asyncio.Queue[StepRecord] = asyncio.Queue()
        waiting = {node.index: len(node.needs) for node in state.plan}
        dependents: dict[int, list[int]] = {}
        for node in state.plan:
            for need in node.needs:
                dependents.setdefault(need, []).append(node.index)
        async with asyncio.TaskGroup() as group:
            running = 0
            for node in state.plan:
                if not node.needs:
                    group.create_task(self._run_node(state, node, finished))
                    running += 1
            while running:
                record = await finished.get()
                running -= 1
                sink.step(record)
                state.records.append(record)
                if record.status != "ok":
                    state.failed = True
                if state.failed:
                    continue
                for index in dependents.get(record.step_index, ()):
                    waiting[index] -= 1
                    if waiting[index] == 0:
                        group.create_task(self._run_node(state, state.plan[index], finished))
                        running += 1

    async def _run_node(
        self, state: WorkflowState, node: PlannedNode, finished: asyncio.Queue[StepRecord]
    ) -> None:
        started = time.perf_counter()
        if node.step.kind == "llm":
            record = await self._run_llm(state, node, started)
        else:
            record = await self._run_pause(state, node, started)
        finished.put_nowait(record)

    def _identity(
        self, state: WorkflowState, node: PlannedNode, started: float, max_tokens: int
    ) -> dict[str, object]:
        return {
            "flow_index": state.flow.index,
            "flow_id": state.flow.flow_id,
            "session": self.config.session,
            "step_index": node.index,
            "step_id": node.step.id,
            "kind": node.step.kind,
            "node": node.name,
            "needs": list(node.needs),
            "depth": node.depth if node.step.kind == "llm" else None,
            "turn": node.turn,
            "item_index": node.item_index,
            "max_tokens": max_tokens,
            "start_offset_ms": round(self._offset_ms(started), 3),
            "request_id": node.request_id,
            "think_before_ms": node.think_before_ms,
        }

    async def _run_pause(self, state: WorkflowState, node: PlannedNode, started: float) -> StepRecord:
        """A tool or think step: wait its drawn duration (holding the workflow's slot, as a live agent
        does), then a tool appends its result to the transcript."""
        identity = self._identity(state, node, started, 0) | {"inflight_at_start": max(self._inflight, 1)}
        result = ""
        try:
            await asyncio.sleep((node.duration_ms or 0.0) / 1000.0)
            if node.step.kind == "tool":
                result = self._tool_result(state, node)
        except Exception as failure:
            return self._failed(identity, started, failure)
        ended = time.perf_counter()
        state.finish_pause(node, result)
        texts = {"output_text": result} if self.config.save_text and node.step.kind == "tool" else {}
        return StepRecord(
            **identity,
            **texts,
            status="ok",
            step_ms=round((ended - started) * 1000.0, 3),
            end_offset_ms=round(self._offset_ms(ended), 3),
        )

    def _tool_result(self, state: WorkflowState, node: PlannedNode) -> str:
        if node.filler_tokens is not None:
            return self.filler.text(node.filler_tokens, seed=state.flow.index * 1_000_003 + node.index)
        if node.step.result is not None:
            return self.flows.render_result(state.flow, node, state.outputs)
        return ""

    async def _run_llm(self, state: WorkflowState, node: PlannedNode, started: float) -> StepRecord:
        """One LLM call: its record. Never raises for a failure of the call itself; it records it."""
        params = generation_params(node.step, self.config, state.flow, node.index)
        self._inflight += 1
        identity = self._identity(state, node, started, params.max_tokens) | {
            "inflight_at_start": self._inflight
        }
        result: StepResult | None = None
        prompt: Prompt = ""
        try:
            rendered = node.step.prompt or not state.conversation  # in a conversation, none continues
            prompt = state.prompt(
                node, self.flows.render(state.flow, node, state.outputs) if rendered else None
            )
            result = await self._generate(
                prompt, params, f"{self.config.run_id}-{state.flow.flow_id}-{node.name}"
            )
        except Exception as failure:
            return self._failed(identity, started, failure)
        finally:
            self._inflight -= 1
        ended = time.perf_counter()
        state.finish_llm(node, prompt, result.text)
        texts = (
            {"prompt_text": prompt_text(prompt), "output_text": result.text} if self.config.save_text else {}
        )
        fields = measured_fields(result)
        return StepRecord(
            **identity, **texts, status="ok", end_offset_ms=round(self._offset_ms(ended), 3), **fields
        )

    def _failed(self, identity: dict[str, object], started: float, error: Exception) -> StepRecord:
        ended = time.perf_counter()
        return StepRecord(
            **identity,
            status="failed",
            step_ms=round((ended - started) * 1000.0, 3),
            end_offset_ms=round(self._offset_ms(ended), 3),
            error_type=type(error).__name__,
            error_message=str(error),
        )

    async def _generate(self, prompt: Prompt, params: GenerationParams, request_id: str) -> StepResult:
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
        "endpoint": result.endpoint,
        "engine_last_token_ms": _rounded(result.engine_last_token_ms),
        "token_reads": result.token_reads,
        "max_read_share": result.max_read_share,
        "burst_delivered": result.burst_delivered,
    }


def prompt_text(prompt: Prompt) -> str:
    """A prompt as saved with --save-text: a transcript as one `role: content` line block per message,
    token ids as their count (a replayed trace's prompts are ids, not text)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, TokenPrompt):
        return f"({len(prompt.ids)} token ids)"
    return "\n".join(f"{message['role']}: {message['content']}" for message in prompt)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
