"""The flow template format (YAML) as pydantic models, checked completely before anything runs.

A template names its fixture file and lists steps in execution order; each step's prompt may use fields of
the fixture record and the outputs of earlier steps only. Every rule a user can break is checked here, so
a bad template fails in milliseconds with the step and field named, never after the engine has started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flowperf.errors import UserError
from flowperf.flows.templating import TemplateProblem, TemplateReferences, analyse
from flowperf.validation import describe_validation_error, load_yaml_mapping

StepId = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


class FixtureSpec(BaseModel):
    """Where the records come from (path relative to the template file) and the fields each must have."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    fields: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class StepTemplate(BaseModel):
    """One LLM call: a prompt template and the generation settings that keep runs comparable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StepId
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(default=64, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    ignore_eos: bool = True


class FlowTemplate(BaseModel):
    """A named chain of steps over a fixture file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StepId
    description: str = ""
    fixture: FixtureSpec
    steps: list[StepTemplate] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _steps_form_a_chain(self) -> FlowTemplate:
        seen: set[str] = set()
        for position, step in enumerate(self.steps):
            if step.id in seen:
                raise ValueError(f"duplicate step id '{step.id}' (steps.{position}.id)")
            try:
                references = analyse(step.prompt)
            except TemplateProblem as problem:
                raise ValueError(f"step '{step.id}': {problem}") from None
            for used in references.step_ids:
                if used not in {s.id for s in self.steps}:
                    raise ValueError(f"step '{step.id}' references unknown step '{used}'")
                if used not in seen:
                    raise ValueError(
                        f"step '{step.id}' references step '{used}', which runs later; "
                        "a step may only use the outputs of earlier steps"
                    )
            missing = references.fixture_fields - set(self.fixture.fields)
            if self.fixture.fields and missing:
                raise ValueError(
                    f"step '{step.id}' uses fixture field(s) {', '.join(sorted(missing))} "
                    f"not declared in fixture.fields {self.fixture.fields}"
                )
            seen.add(step.id)
        return self

    def references(self) -> dict[str, TemplateReferences]:
        """What each step's prompt reads, by step id."""
        return {step.id: analyse(step.prompt) for step in self.steps}


def load_template(path: Path) -> FlowTemplate:
    """Read and validate a flow template file; every problem becomes a UserError naming the file."""
    try:
        return FlowTemplate.model_validate(load_yaml_mapping(path))
    except ValidationError as error:
        raise UserError(f"{path}: {describe_validation_error(error)}") from None
