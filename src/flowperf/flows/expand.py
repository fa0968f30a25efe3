"""Expansion: (template, fixture records, N) → N concrete flows, checked and pre-rendered.

Flow i uses record i mod len(records) and has the stable id `<name>-<i:06d>`. Everything that does not
depend on run-time outputs is rendered here once per distinct record (steps that use no earlier output,
typically the first); steps that do are dry-rendered with placeholder outputs so that an undefined fixture
field or a sandbox violation fails now, before an engine starts, rather than in the middle of a run.
The serialized form is deterministic so that a cached expansion is byte-identical to a fresh one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template
from pydantic import BaseModel, ConfigDict, JsonValue

from flowperf.errors import UserError
from flowperf.flows.fixtures import FixtureFile
from flowperf.flows.schema import FlowTemplate
from flowperf.flows.templating import ENVIRONMENT

FORMAT_VERSION = 2


@dataclass(frozen=True)
class StepSpec:
    """A step as the runner needs it: prompt template, generation settings and what it depends on."""

    id: str
    prompt: str
    max_tokens: int
    temperature: float
    ignore_eos: bool
    uses_steps: tuple[str, ...]


class PromptRenderer:
    """Renders step prompts, compiling each step's template once, on first use."""

    def __init__(self) -> None:
        self._compiled: dict[str, Template] = {}

    def compile(self, steps: tuple[StepSpec, ...]) -> None:
        """Compile every template now, so that no measured request pays for it."""
        for step in steps:
            self._template(step)

    def _template(self, step: StepSpec) -> Template:
        template = self._compiled.get(step.id)
        if template is None:
            template = self._compiled[step.id] = ENVIRONMENT.from_string(step.prompt)
        return template

    def __call__(self, step: StepSpec, record: Mapping[str, Any], outputs: Mapping[str, str]) -> str:
        return self._template(step).render(
            fixture=record, steps={step_id: {"output": text} for step_id, text in outputs.items()}
        )


@dataclass(frozen=True)
class ExpandedFlow:
    """One concrete workflow: its position in the run, stable id and fixture record."""

    index: int
    flow_id: str
    record_index: int


class _StoredStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    prompt: str
    max_tokens: int
    temperature: float
    ignore_eos: bool
    uses_steps: list[str]


class _StoredExpansion(BaseModel):
    """Schema of the serialized expansion, so a damaged cache file is rejected rather than trusted."""

    model_config = ConfigDict(extra="forbid")
    format_version: int
    name: str
    template_sha256: str
    fixture_sha256: str
    num_flows: int
    steps: list[_StoredStep]
    records: list[dict[str, JsonValue]]
    static_prompts: list[dict[str, str]]
    flow_ids: list[str]
    record_indices: list[int]


class ExpandedFlowSet:
    """The N flows of one run, sharing steps and records; renders each step's prompt on demand.

    Flows are kept as two parallel lists (ids, record indices) and materialized on access, so loading
    100,000 cached flows costs one JSON parse rather than 100,000 object constructions.
    """

    def __init__(
        self,
        *,
        name: str,
        template_sha256: str,
        fixture_sha256: str,
        steps: tuple[StepSpec, ...],
        records: tuple[dict[str, Any], ...],
        static_prompts: tuple[dict[str, str], ...],
        flow_ids: list[str],
        record_indices: list[int],
    ) -> None:
        self.name = name
        self.template_sha256 = template_sha256
        self.fixture_sha256 = fixture_sha256
        self.steps = steps
        self.records = records
        self.static_prompts = static_prompts
        self._flow_ids = flow_ids
        self._record_indices = record_indices
        self._render = PromptRenderer()

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
        """Compile the templates of steps rendered at run time (a few ms, kept out of measurements)."""
        self._render.compile(tuple(step for step in self.steps if step.uses_steps))

    def render(self, flow: ExpandedFlow, step: StepSpec, outputs: Mapping[str, str]) -> str:
        """The prompt of `step` in `flow`, given the outputs of the earlier steps of that flow."""
        static = self.static_prompts[flow.record_index].get(step.id)
        if static is not None:
            return static
        return self._render(step, self.records[flow.record_index], outputs)

    def to_json(self) -> str:
        """Deterministic serialization: equal sets give equal bytes."""
        document = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "template_sha256": self.template_sha256,
            "fixture_sha256": self.fixture_sha256,
            "num_flows": len(self),
            "steps": [
                {
                    "id": s.id,
                    "prompt": s.prompt,
                    "max_tokens": s.max_tokens,
                    "temperature": s.temperature,
                    "ignore_eos": s.ignore_eos,
                    "uses_steps": list(s.uses_steps),
                }
                for s in self.steps
            ],
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
            steps=tuple(
                StepSpec(**(s.model_dump() | {"uses_steps": tuple(s.uses_steps)})) for s in stored.steps
            ),
            records=tuple(stored.records),
            static_prompts=tuple(stored.static_prompts),
            flow_ids=stored.flow_ids,
            record_indices=stored.record_indices,
        )


def expand(
    template: FlowTemplate, template_sha256: str, fixture: FixtureFile, num_flows: int
) -> ExpandedFlowSet:
    """Expand `template` over `fixture` into `num_flows` flows, checking every prompt renders."""
    if num_flows < 1:
        raise UserError(f"--num-flows must be at least 1, got {num_flows}")
    references = template.references()
    steps = tuple(
        StepSpec(
            id=step.id,
            prompt=step.prompt,
            max_tokens=step.max_tokens,
            temperature=step.temperature,
            ignore_eos=step.ignore_eos,
            uses_steps=references[step.id].step_ids,
        )
        for step in template.steps
    )
    records = fixture.records[: min(num_flows, len(fixture.records))]
    render = PromptRenderer()
    placeholders = {step.id: f"(output of step {step.id})" for step in steps}
    static_prompts: list[dict[str, str]] = []
    for record_index, record in enumerate(records):
        rendered: dict[str, str] = {}
        for step in steps:
            try:
                prompt = render(step, record, placeholders)
            except Exception as error:  # a user template can fail in any way Jinja or Python can
                line = fixture.line_numbers[record_index]
                raise UserError(
                    f"step '{step.id}' of flow '{template.name}' cannot be rendered with the record at "
                    f"{fixture.path}:{line}: {type(error).__name__}: {error}"
                ) from None
            if not step.uses_steps:
                rendered[step.id] = prompt
        static_prompts.append(rendered)
    return ExpandedFlowSet(
        name=template.name,
        template_sha256=template_sha256,
        fixture_sha256=fixture.sha256,
        steps=steps,
        records=records,
        static_prompts=tuple(static_prompts),
        flow_ids=[f"{template.name}-{i:06d}" for i in range(num_flows)],
        record_indices=[i % len(records) for i in range(num_flows)],
    )
