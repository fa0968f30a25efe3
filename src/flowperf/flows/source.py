"""What the runner and the benchmark need from a run's workflows, whoever made them: an expanded flow
template (`flows.expand.ExpandedFlowSet`) or a replayed trace (`replay.TraceRequests`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from flowperf.engines.base import Prompt
from flowperf.flows.expand import ExpandedFlow
from flowperf.flows.plan import PlannedNode, StepSpec


class WorkflowSource(Protocol):
    name: str
    template_sha256: str
    fixture_sha256: str

    @property
    def steps(self) -> list[StepSpec]:
        """Every step template, for tables keyed by step id."""

    @property
    def conversation(self) -> bool: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[ExpandedFlow]: ...

    def warmup_flows(self, count: int) -> list[ExpandedFlow]: ...

    def compile_templates(self) -> None: ...

    def parallel_width(self) -> int:
        """At most how many steps of one workflow run at once."""

    def arrival_s(self, flow: ExpandedFlow) -> float | None:
        """When `flow` arrives on its own timeline (a trace's), or None: the run's schedule decides."""

    def plan(self, flow: ExpandedFlow, seed: int) -> tuple[PlannedNode, ...]: ...

    def render(
        self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]
    ) -> Prompt: ...

    def render_result(
        self, flow: ExpandedFlow, node: PlannedNode, outputs: Mapping[str, Sequence[str]]
    ) -> str: ...

    def system_message(self, flow: ExpandedFlow) -> str | None: ...
