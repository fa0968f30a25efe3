"""The flow template format (YAML) as pydantic models, checked completely before anything runs.

A template names its fixture file and lists its entries: steps (an LLM call, a tool pause that returns a
result, or think time) and loops (a chain of steps repeated a fixed or sampled number of times). Entries
form a graph: each needs the entry listed before it unless it names its `needs`, and entries whose needs
are met run concurrently. A `conversation` flow keeps a transcript of messages that every LLM call sends
whole. Every rule a user can break is checked here or in `flows.graph`, so a bad template fails in
milliseconds with the step named, never after the engine has started.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from flowperf.flows.distributions import Distribution, FieldValues, Uniform

StepId = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
MAX_LOOP_COUNT = 1000
StepKind = Literal["llm", "tool", "think"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FixtureSpec(_Strict):
    """Where the records come from (path relative to the template file) and the fields each must have."""

    path: str = Field(min_length=1)
    fields: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class FillerResult(_Strict):
    """A tool result of about N tokens of deterministic filler text: grows the transcript the way a
    real tool's output does, without shipping one."""

    filler_tokens: Distribution


class ToolSpec(_Strict):
    """A tool call the agent waits for: a pause, then a result appended to the transcript (a template
    over the fixture and earlier outputs, or filler)."""

    duration_ms: Distribution
    result: Annotated[str, Field(min_length=1)] | FillerResult | None = None


class ThinkSpec(_Strict):
    """Time the agent (or its user) spends between turns; appends nothing."""

    duration_ms: Distribution


class StepTemplate(_Strict):
    """One step: an LLM call (`prompt`, generation settings), a `tool`, or `think` time."""

    id: StepId
    prompt: str | None = Field(default=None, min_length=1)
    max_tokens: int = Field(default=64, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    ignore_eos: bool = True
    needs: list[StepId] | None = None
    for_each: str | None = Field(default=None, min_length=1)
    tool: ToolSpec | None = None
    think: ThinkSpec | None = None

    @property
    def kind(self) -> StepKind:
        return "tool" if self.tool else "think" if self.think else "llm"

    @model_validator(mode="after")
    def _one_kind(self) -> StepTemplate:
        if self.tool and self.think:
            raise ValueError(f"step '{self.id}': a step is a tool or think time, not both")
        if self.kind != "llm" and (self.prompt is not None or self.for_each is not None):
            raise ValueError(f"step '{self.id}': a {self.kind} step takes no prompt or for_each")
        return self


LoopCount = Annotated[int, Field(ge=1, le=MAX_LOOP_COUNT)] | Uniform | FieldValues


class LoopTemplate(_Strict):
    """A chain of steps repeated `repeat` times per workflow (drawn per workflow when it varies): an
    agent's act/observe loop. Its steps see the iteration as `turn` (0-based)."""

    loop: StepId
    repeat: LoopCount
    needs: list[StepId] | None = None
    steps: list[StepTemplate] = Field(min_length=1, max_length=64)

    @property
    def id(self) -> str:
        return self.loop

    @model_validator(mode="after")
    def _bounded_chain(self) -> LoopTemplate:
        if isinstance(self.repeat, Uniform):
            low, high = self.repeat.uniform
            if low < 1 or high > MAX_LOOP_COUNT or int(low) != low or int(high) != high:
                raise ValueError(
                    f"loop '{self.loop}': repeat bounds must be whole numbers from 1 to {MAX_LOOP_COUNT}"
                )
        for step in self.steps:
            if step.needs is not None or step.for_each is not None:
                raise ValueError(
                    f"loop '{self.loop}' step '{step.id}': steps in a loop run as a chain "
                    "(no needs or for_each inside a loop)"
                )
        return self


def _entry_kind(value: Any) -> str:
    return "loop" if isinstance(value, dict) and "loop" in value else "step"


ENTRY_TAGS = frozenset({"step", "loop"})
Entry = Annotated[
    Annotated[StepTemplate, Tag("step")] | Annotated[LoopTemplate, Tag("loop")],
    Discriminator(_entry_kind),
]


class ConversationSpec(_Strict):
    """A conversation flow: every LLM call sends the transcript so far (as chat messages), starting with
    this system message (a template over the fixture)."""

    system: str = ""


class FlowTemplate(_Strict):
    """A named graph of steps over a fixture file."""

    name: StepId
    description: str = ""
    fixture: FixtureSpec
    conversation: ConversationSpec | None = None
    steps: list[Entry] = Field(min_length=1, max_length=64)

    def entries(self) -> dict[str, StepTemplate | LoopTemplate]:
        """Top-level entries by id, in the order listed."""
        return {entry.id: entry for entry in self.steps}
