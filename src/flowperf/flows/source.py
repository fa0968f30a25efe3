"""What the runner and the benchmark need from a run's workflows, whoever made them: an expanded flow
template (`flows.expand.ExpandedFlowSet`), a replayed request trace (`flows.trace_source.TraceRequests`)
or a replayed session trace (`sessions.source.SessionSource`)."""

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


class TokenIdSource:
    """What a replayed trace's source shares: one workflow per trace item (a request or a session),
    prompts already token ids (no templates, no transcript), warm-up items that are the first ones again
    under ids of their own. A subclass sets `name` and says how many items there are."""

    name: str

    @property
    def conversation(self) -> bool:
        return False

    def __len__(self) -> int:
        raise NotImplementedError

    def flow_id(self, index: int) -> str:
        return f"{self.name}-{index:06d}"

    def __getitem__(self, index: int) -> ExpandedFlow:
        return ExpandedFlow(index=index, flow_id=self.flow_id(index), record_index=index)

    def __iter__(self) -> Iterator[ExpandedFlow]:
        for index in range(len(self)):
            yield self[index]

    def warmup_flows(self, count: int) -> list[ExpandedFlow]:
        return [
            ExpandedFlow(index=k, flow_id=f"{self.name}-warmup-{k:06d}", record_index=k % len(self))
            for k in range(count)
        ]

    def compile_templates(self) -> None:
        """Nothing to compile: prompts are token ids."""

    def system_message(self, flow: ExpandedFlow) -> str | None:
        return None
