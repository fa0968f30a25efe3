"""One workflow in flight: its plan, the outputs its templates read, and each step's transcript.

In a conversation every step continues the transcript of the step it follows (`transcript_from` in the
plan): an LLM call sends that transcript plus its own user message and appends the answer, a tool
appends its result, think time appends nothing. Branches fork the transcript where they start, so
sibling branches never see each other's messages; a join reads their outputs through its template.
"""

from __future__ import annotations

from flowperf.engines.base import ChatMessage, Prompt
from flowperf.flows.expand import ExpandedFlow
from flowperf.flows.plan import PlannedNode
from flowperf.rundir.records import StepRecord

Transcript = tuple[ChatMessage, ...]


class WorkflowState:
    def __init__(self, flow: ExpandedFlow, plan: tuple[PlannedNode, ...], system: str | None) -> None:
        self.flow = flow
        self.plan = plan
        self.conversation = system is not None
        self.outputs: dict[str, list[str]] = {}
        self.records: list[StepRecord] = []
        self.failed = False
        self._root: Transcript = ({"role": "system", "content": system},) if system else ()
        self._transcripts: dict[int, Transcript] = {}

    def transcript(self, node: PlannedNode) -> Transcript:
        """The transcript `node` continues."""
        if node.transcript_from is None:
            return self._root
        return self._transcripts[node.transcript_from]

    def prompt(self, node: PlannedNode, message: Prompt | None) -> Prompt:
        """What an LLM step sends: its rendered prompt, or in a conversation the transcript so far plus
        its user message (none: the call continues the transcript as it is)."""
        if not self.conversation:
            return "" if message is None else message
        base = self.transcript(node)
        if message is None:
            return base
        assert isinstance(message, str), "a conversation's user message is text"
        return (*base, {"role": "user", "content": message})

    def finish_llm(self, node: PlannedNode, prompt: Prompt, answer: str) -> None:
        if self.conversation and not isinstance(prompt, str):
            self._transcripts[node.index] = (*prompt, {"role": "assistant", "content": answer})
        self._set_output(node, answer)

    def finish_pause(self, node: PlannedNode, result: str) -> None:
        if self.conversation:
            added: Transcript = ()
            if node.step.kind == "tool":
                added = ({"role": "tool", "content": result, "tool_call_id": f"call_{node.index}"},)
            self._transcripts[node.index] = (*self.transcript(node), *added)
        self._set_output(node, result)

    def _set_output(self, node: PlannedNode, text: str) -> None:
        """A step's latest output (a loop's last turn so far); a fan-out's outputs in item order."""
        if node.item_index is None:
            self.outputs[node.step.id] = [text]
            return
        texts = self.outputs.setdefault(node.step.id, [])
        texts.extend([""] * (node.item_index + 1 - len(texts)))
        texts[node.item_index] = text
