"""Expansion: (template, fixture records, N) → N concrete flows, checked and pre-rendered.

Flow i uses record i mod len(records) and has the stable id `<name>-<i:06d>`. Everything that does not
depend on run-time outputs is rendered here once per distinct record (steps that use no earlier output,
typically the first); steps that do are dry-rendered with placeholder outputs so that an undefined fixture
field or a sandbox violation fails now, before an engine starts, rather than in the middle of a run.
The serialized form is deterministic so that a cached expansion is byte-identical to a fresh one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Template
from pydantic import BaseModel, ConfigDict, JsonValue

from flowperf.errors import UserError
from flowperf.flows.fixtures import FixtureFile
from flowperf.flows.plan import (
    PlannedNode,
    Program,
    StepSpec,
    compile_program,
    empirical_values,
    plan_workflow,
)
from flowperf.flows.schema import FlowTemplate
from flowperf.flows.templating import ENVIRONMENT

FORMAT_VERSION = 3


SYSTEM_KEY = ":system"
"""The static-prompt key of a conversation's system message (cannot clash: step ids start with a letter)."""


def template_context(
    record: Mapping[str, Any], outputs: Mapping[str, Sequence[str]], node: PlannedNode | None
) -> dict[str, Any]:
    """The names a template sees: the record, the outputs so far (`output` joins a fan-out's branches,
    `outputs` lists them), and where the step is: `turn` in a loop, `item`/`item_index` in a fan-out."""
    context: dict[str, Any] = {
        "fixture": record,
        "steps": {
            step_id: {"output": "\n\n".join(texts), "outputs": list(texts)}
            for step_id, texts in outputs.items()
        },
    }
    if node is not None:
        context |= {"turn": node.turn, "item": node.item, "item_index": node.item_index}
    return context


class PromptRenderer:
    """Renders step templates, compiling each once, on first use."""

    def __init__(self) -> None:
        self._compiled: dict[str, Template] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Compiled templates do not pickle: a copy sent to a worker process compiles its own."""
        return {"_compiled": {}}

    def compile(self, sources: Mapping[str, str]) -> None:
        """Compile templates now, so that no measured request pays for it."""
        for key, source in sources.items():
            self.template(key, source)

    def template(self, key: str, source: str) -> Template:
        template = self._compiled.get(key)
        if template is None:
            template = self._compiled[key] = ENVIRONMENT.from_string(source)
        return template


def step_sources(step: StepSpec) -> dict[str, str]:
    """A step's templates by cache key: its prompt and its tool result, where it has them."""
    sources = {f"{step.id}:prompt": step.prompt} if step.prompt else {}
    return sources | ({f"{step.id}:result": step.result} if step.result else {})


def template_sources(program: Program) -> dict[str, str]:
    """Every template of a program by cache key: prompts, tool results and the system message."""
    sources = {key: source for step in program.steps() for key, source in step_sources(step).items()}
    if program.system:
        sources[SYSTEM_KEY] = program.system
    return sources


@dataclass(frozen=True)
class ExpandedFlow:
    """One concrete workflow: its position in the run, stable id and fixture record."""

    index: int
    flow_id: str
    record_index: int


class _StoredExpansion(BaseModel):
    """Schema of the serialized expansion, so a damaged cache file is rejected rather than trusted."""

    model_config = ConfigDict(extra="forbid")
    format_version: int
    name: str
    template_sha256: str
    fixture_sha256: str
    num_flows: int
    program: Program
    records: list[dict[str, JsonValue]]
    static_prompts: list[dict[str, str]]
    flow_ids: list[str]
    record_indices: list[int]


class ExpandedFlowSet:
    """The N flows of one run, sharing a program and records; plans each workflow and renders its
    templates on demand.

    Flows are kept as two parallel lists (ids, record indices) and materialized on access, so loading
    100,000 cached flows costs one JSON parse rather than 100,000 object constructions.
    """

    def __init__(
        self,
        *,
        name: str,
        template_sha256: str,
        fixture_sha256: str,
        program: Program,
        records: tuple[dict[str, Any], ...],
        static_prompts: tuple[dict[str, str], ...],
        flow_ids: list[str],
        record_indices: list[int],
    ) -> None:
        self.name = name
        self.template_sha256 = template_sha256
        self.fixture_sha256 = fixture_sha256
        self.program = program
        self.records = records
        self.static_prompts = static_prompts
        self._flow_ids = flow_ids
        self._record_indices = record_indices
        self._render = PromptRenderer()
        self._empirical = empirical_values(program, records, f"flow '{name}'")

    @property
    def steps(self) -> list[StepSpec]:
        """Every step template (loop bodies included), in dependency order."""
        return self.program.steps()

    @property
    def conversation(self) -> bool:
        return self.program.conversation

    def parallel_width(self) -> int:
        """At most how many steps of one workflow run at once (see `Program.parallel_width`)."""
        return self.program.parallel_width(self.records)

    def arrival_s(self, flow: ExpandedFlow) -> float | None:
        """Flows have no timeline of their own: the run's schedule decides when they arrive."""
        return None

    def __len__(self) -> int:
        return len(self._flow_ids)

    def __getitem__(self, index: int) -> ExpandedFlow:
        return ExpandedFlow(
            index=index, flow_id=self._flow_ids[index], record_index=self._record_indices[index]
        )

    def __iter__(self) -> Iterator[ExpandedFlow]:
        for index in range(len(self._flow_ids)):
            yield self[index]

    def warmup_flows(self, count: int) -> list[ExpandedFlow]:
        """`count` extra flows over the same records, with ids of their own, for warming the engine up."""
        return [
            ExpandedFlow(index=k, flow_id=f"{self.name}-warmup-{k:06d}", record_index=k % len(self.records))
            for k in range(count)
        ]

    def compile_templates(self) -> None:
        """Compile the templates rendered at run time (a few ms, kept out of measurements)."""
        self._render.compile(template_sources(self.program))

    def plan(self, flow: ExpandedFlow, seed: int) -> tuple[PlannedNode, ...]:
        """The steps `flow` runs, drawn from `seed` and its index (the same on every resume)."""
        return plan_workflow(self.program, self.records[flow.record_index], self._empirical, seed, flow.index)

    def render(self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]) -> str:
        """The prompt of `node` in `flow` (for a conversation: its user message), given the outputs so far."""
        step = node.step
        static = self.static_prompts[flow.record_index].get(step.id)
        if static is not None:
            return static
        context = template_context(self.records[flow.record_index], outputs, node)
        return self._render.template(f"{step.id}:prompt", step.prompt).render(context)

    def render_result(
        self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]
    ) -> str:
        """A tool step's templated result."""
        context = template_context(self.records[flow.record_index], outputs, node)
        return self._render.template(f"{node.step.id}:result", node.step.result or "").render(context)

    def system_message(self, flow: ExpandedFlow) -> str | None:
        """A conversation's system message for `flow` (None outside conversations)."""
        if self.program.system is None:
            return None
        return self.static_prompts[flow.record_index].get(SYSTEM_KEY, "")

    def to_json(self) -> str:
        """Deterministic serialization: equal sets give equal bytes."""
        document = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "template_sha256": self.template_sha256,
            "fixture_sha256": self.fixture_sha256,
            "num_flows": len(self),
            "program": self.program.model_dump(mode="json"),
            "records": list(self.records),
            "static_prompts": list(self.static_prompts),
            "flow_ids": self._flow_ids,
            "record_indices": self._record_indices,
        }
        return json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ExpandedFlowSet:
        """Rebuild a set from `to_json` output; raises ValueError on anything malformed."""
        stored = _StoredExpansion.model_validate_json(text)
        if stored.format_version != FORMAT_VERSION:
            raise ValueError(f"format version {stored.format_version}, expected {FORMAT_VERSION}")
        counts = {len(stored.flow_ids), len(stored.record_indices), stored.num_flows}
        if len(counts) != 1 or len(stored.static_prompts) != len(stored.records):
            raise ValueError("inconsistent expansion: counts do not match")
        if stored.record_indices and not 0 <= min(stored.record_indices) <= max(stored.record_indices) < len(
            stored.records
        ):
            raise ValueError("inconsistent expansion: a flow points outside the records")
        return cls(
            name=stored.name,
            template_sha256=stored.template_sha256,
            fixture_sha256=stored.fixture_sha256,
            program=stored.program,
            records=tuple(stored.records),
            static_prompts=tuple(stored.static_prompts),
            flow_ids=stored.flow_ids,
            record_indices=stored.record_indices,
        )


def expand(
    template: FlowTemplate, template_sha256: str, fixture: FixtureFile, num_flows: int
) -> ExpandedFlowSet:
    """Expand `template` over `fixture` into `num_flows` flows, checking every template renders."""
    if num_flows < 1:
        raise UserError(f"--num-flows must be at least 1, got {num_flows}")
    program = compile_program(template)
    records = fixture.records[: min(num_flows, len(fixture.records))]
    static_prompts = [
        _render_record(program, record, f"{fixture.path}:{fixture.line_numbers[k]}", template.name)
        for k, record in enumerate(records)
    ]
    return ExpandedFlowSet(
        name=template.name,
        template_sha256=template_sha256,
        fixture_sha256=fixture.sha256,
        program=program,
        records=records,
        static_prompts=tuple(static_prompts),
        flow_ids=[f"{template.name}-{i:06d}" for i in range(num_flows)],
        record_indices=[i % len(records) for i in range(num_flows)],
    )


def _render_record(program: Program, record: dict[str, Any], where: str, name: str) -> dict[str, str]:
    """Dry-render every template of `program` with `record` (placeholder outputs, first turn and item),
    so an undefined field or a sandbox violation fails now; returns the static prompts."""
    render = PromptRenderer()
    placeholders = {step.id: [f"(output of step {step.id})"] for step in program.steps()}
    rendered: dict[str, str] = {}
    for step in program.steps():
        items = _fan_out_items(step, record, where)
        node = PlannedNode(
            0, step, step.id, (), None, 0, turn=0, item_index=0, item=items[0] if items else None
        )
        context = template_context(record, placeholders, node)
        for key, source in step_sources(step).items():
            text = _render_one(render, key, source, context, f"step '{step.id}' of flow '{name}'", where)
            if key.endswith(":prompt") and step.is_static:
                rendered[step.id] = text
    if program.system is not None:
        context = template_context(record, {}, None)
        rendered[SYSTEM_KEY] = _render_one(
            render, SYSTEM_KEY, program.system, context, f"the system message of flow '{name}'", where
        )
    return rendered


def _fan_out_items(step: StepSpec, record: dict[str, Any], where: str) -> list[Any] | None:
    if step.for_each is None:
        return None
    items = record.get(step.for_each)
    if not isinstance(items, list) or not items:
        raise UserError(
            f"{where}: step '{step.id}' fans out over '{step.for_each}', which must be a non-empty list"
        )
    return items


def _render_one(
    render: PromptRenderer, key: str, source: str, context: dict[str, Any], what: str, where: str
) -> str:
    try:
        return render.template(key, source).render(context)
    except Exception as error:  # a user template can fail in any way Jinja or Python can
        raise UserError(
            f"{what} cannot be rendered with the record at {where}: {type(error).__name__}: {error}"
        ) from None
