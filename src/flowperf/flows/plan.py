"""From a checked template to a program (what every workflow of a run shares), and from the program to
one workflow's plan: the concrete steps it runs, what each waits for and which transcript it continues.

A plan is drawn per workflow from the run's seed and the workflow's index alone (loop counts, fan-out
width from its record, tool and think durations, tool-result sizes), so a resumed run replays exactly
the workflow it would have run. Planning is pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from flowperf.flows.distributions import Distribution, FieldValues, draw, draw_count, field_values
from flowperf.flows.graph import effective_needs, entry_order
from flowperf.flows.schema import FillerResult, FlowTemplate, LoopCount, LoopTemplate, StepKind, StepTemplate
from flowperf.flows.templating import analyse


class StepSpec(BaseModel):
    """A step as the runner needs it: kind, templates, generation settings, what its templates read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: StepKind = "llm"
    prompt: str = ""
    max_tokens: int = 0
    temperature: float = 0.0
    ignore_eos: bool = True
    uses_steps: tuple[str, ...] = ()
    uses_loop_or_item: bool = False
    needs: tuple[str, ...] = ()
    for_each: str | None = None
    duration_ms: Distribution | None = None
    result: str | None = None
    filler_tokens: Distribution | None = None

    @property
    def is_static(self) -> bool:
        """Renders the same for every workflow of a record: rendered once at expansion."""
        return self.kind == "llm" and bool(self.prompt) and not self.uses_steps and not self.uses_loop_or_item


class LoopSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    repeat: LoopCount
    needs: tuple[str, ...]
    steps: tuple[StepSpec, ...]


class Program(BaseModel):
    """Everything the workflows of one flow share, entries in dependency order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str | None
    entries: tuple[StepSpec | LoopSpec, ...]

    @property
    def conversation(self) -> bool:
        return self.system is not None

    def steps(self) -> list[StepSpec]:
        """Every step template, loop bodies included (one row per template in per-step tables)."""
        return [s for e in self.entries for s in (e.steps if isinstance(e, LoopSpec) else (e,))]

    def parallel_width(self, records: Sequence[Mapping[str, Any]]) -> int:
        """At most how many steps of one workflow run at once (every entry at the same time, a fan-out
        as wide as its longest list, a loop one step): what a connection pool must hold per workflow."""

        def width(entry: StepSpec | LoopSpec, record: Mapping[str, Any]) -> int:
            if isinstance(entry, StepSpec) and entry.for_each is not None:
                return len(record.get(entry.for_each) or ())
            return 1

        return max(sum(width(entry, record) for entry in self.entries) for record in records)

    def field_distributions(self) -> set[str]:
        """Fixture fields whose values some duration, size or loop count is drawn from."""
        specs: list[Any] = [e.repeat for e in self.entries if isinstance(e, LoopSpec)]
        specs += [s for step in self.steps() for s in (step.duration_ms, step.filler_tokens)]
        return {spec.field for spec in specs if isinstance(spec, FieldValues)}


def compile_program(template: FlowTemplate) -> Program:
    """The program of a checked template."""
    needs = effective_needs(template)
    entries = template.entries()

    def step_spec(step: StepTemplate, step_needs: tuple[str, ...]) -> StepSpec:
        sources = [step.prompt or ""] + (
            [step.tool.result] if step.tool and isinstance(step.tool.result, str) else []
        )
        references = [analyse(source) for source in sources if source]
        uses = tuple(dict.fromkeys(used for ref in references for used in ref.step_ids))
        dynamic = any(ref.names & {"turn", "item", "item_index"} for ref in references)
        filler = step.tool.result if step.tool and isinstance(step.tool.result, FillerResult) else None
        return StepSpec(
            id=step.id,
            kind=step.kind,
            prompt=step.prompt or "",
            max_tokens=step.max_tokens if step.kind == "llm" else 0,
            temperature=step.temperature,
            ignore_eos=step.ignore_eos,
            uses_steps=uses,
            uses_loop_or_item=dynamic,
            needs=step_needs,
            for_each=step.for_each,
            duration_ms=(step.tool or step.think).duration_ms if step.kind != "llm" else None,  # type: ignore[union-attr]
            result=step.tool.result if step.tool and isinstance(step.tool.result, str) else None,
            filler_tokens=filler.filler_tokens if filler else None,
        )

    compiled: list[StepSpec | LoopSpec] = []
    for entry_id in entry_order(template):
        entry = entries[entry_id]
        if isinstance(entry, LoopTemplate):
            body = tuple(step_spec(step, ()) for step in entry.steps)
            compiled.append(LoopSpec(id=entry.id, repeat=entry.repeat, needs=needs[entry_id], steps=body))
        else:
            compiled.append(step_spec(entry, needs[entry_id]))
    system = template.conversation.system if template.conversation else None
    return Program(system=system, entries=tuple(compiled))


@dataclass(frozen=True)
class PlannedNode:
    """One step instance of one workflow. `transcript_from` is the node whose transcript it continues
    (None: the conversation's start); `depth` counts the LLM calls on that transcript, this one included."""

    index: int
    step: StepSpec
    name: str
    needs: tuple[int, ...]
    transcript_from: int | None
    depth: int
    turn: int | None = None
    item_index: int | None = None
    item: Any = None
    duration_ms: float | None = None
    filler_tokens: int | None = None
    request_id: str | None = None
    think_before_ms: float | None = None


@dataclass(frozen=True)
class _Exit:
    """Where an entry ends: the nodes a successor waits for and the transcript it continues."""

    nodes: tuple[int, ...]
    transcript: int | None


class _Planner:
    def __init__(
        self, record: Mapping[str, Any], empirical: Mapping[str, np.ndarray], rng: np.random.Generator
    ):
        self.record = record
        self.empirical = empirical
        self.rng = rng
        self.nodes: list[PlannedNode] = []
        self.exits: dict[str, _Exit] = {}

    def after(self, needs: Sequence[str]) -> _Exit:
        """What an entry with `needs` waits for, and the transcript of its first need."""
        waits = tuple(node for need in needs for node in self.exits[need].nodes)
        return _Exit(waits, self.exits[needs[0]].transcript if needs else None)

    def add(self, step: StepSpec, start: _Exit, name: str, **where: Any) -> int:
        source = start.transcript
        depth = (self.nodes[source].depth if source is not None else 0) + (step.kind == "llm")
        node = PlannedNode(
            index=len(self.nodes),
            step=step,
            name=name,
            needs=start.nodes,
            transcript_from=source,
            depth=depth,
            duration_ms=self._draw(step.duration_ms, draw),
            filler_tokens=self._draw(step.filler_tokens, draw_count),
            **where,
        )
        self.nodes.append(node)
        return node.index

    def _draw(self, spec: Distribution | None, how: Any) -> Any:
        if spec is None:
            return None
        return how(spec, self.rng, self.empirical.get(spec.field) if isinstance(spec, FieldValues) else None)

    def step(self, step: StepSpec) -> None:
        start = self.after(step.needs)
        if step.for_each is None:
            index = self.add(step, start, step.id)
            self.exits[step.id] = _Exit((index,), index)
            return
        items = self.record[step.for_each]
        branches = tuple(
            self.add(step, start, f"{step.id}[{k}]", item_index=k, item=item) for k, item in enumerate(items)
        )
        self.exits[step.id] = _Exit(branches, start.transcript)

    def loop(self, loop: LoopSpec) -> None:
        start = self.after(loop.needs)
        for turn in range(self._draw(loop.repeat, draw_count)):
            for step in loop.steps:
                index = self.add(step, start, f"{step.id}#{turn}", turn=turn)
                start = self.exits[step.id] = _Exit((index,), index)
        self.exits[loop.id] = start


def plan_workflow(
    program: Program,
    record: Mapping[str, Any],
    empirical: Mapping[str, np.ndarray],
    seed: int,
    flow_index: int,
) -> tuple[PlannedNode, ...]:
    """The steps workflow `flow_index` runs over `record`, in an order where each follows its needs."""
    planner = _Planner(record, empirical, np.random.default_rng([seed, flow_index]))
    for entry in program.entries:
        if isinstance(entry, LoopSpec):
            planner.loop(entry)
        else:
            planner.step(entry)
    return tuple(planner.nodes)


def empirical_values(
    program: Program, records: Sequence[dict[str, Any]], where: str
) -> dict[str, np.ndarray]:
    """The values of each fixture field a distribution draws from (checked numeric)."""
    return {name: field_values(records, name, where) for name in sorted(program.field_distributions())}
