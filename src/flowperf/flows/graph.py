"""The rules a flow's graph must keep, checked on the template before anything is expanded or run.

Entries (steps and loops) need the entry listed before them unless they name their `needs`; a template
may only read outputs of steps its step (transitively) needs, so a run can never render a prompt whose
input does not exist yet. Loop bodies are chains; `turn` exists only inside a loop, `item` only in a
`for_each` step, a prompt-less LLM call only in a conversation (it continues the transcript).

`load_template` reads a template file: its fields checked by the models in `schema`, then its graph here
(the models know nothing of these rules, so schema never imports this module).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from flowperf.errors import UserError
from flowperf.flows.distributions import FORM_TAGS, Distribution, FieldValues
from flowperf.flows.schema import ENTRY_TAGS, FillerResult, FlowTemplate, LoopTemplate, StepTemplate
from flowperf.flows.templating import TemplateProblem, TemplateReferences, analyse
from flowperf.validation import describe_validation_error, load_yaml_mapping

Entry = StepTemplate | LoopTemplate


def effective_needs(template: FlowTemplate) -> dict[str, tuple[str, ...]]:
    """What each top-level entry waits for: its `needs`, or else the entry listed before it."""
    needs: dict[str, tuple[str, ...]] = {}
    previous: str | None = None
    for entry in template.steps:
        if entry.needs is not None:
            needs[entry.id] = tuple(entry.needs)
        else:
            needs[entry.id] = () if previous is None else (previous,)
        previous = entry.id
    return needs


def entry_order(template: FlowTemplate) -> list[str]:
    """Top-level entry ids in an order where each comes after everything it needs (listing order
    where the file allows it)."""
    needs = effective_needs(template)
    order: list[str] = []
    placed: set[str] = set()

    def place(entry_id: str) -> None:
        if entry_id in placed:
            return
        for need in needs[entry_id]:
            place(need)
        placed.add(entry_id)
        order.append(entry_id)

    for entry_id in needs:
        place(entry_id)
    return order


def ancestors(template: FlowTemplate) -> dict[str, set[str]]:
    """For each top-level entry, every entry it transitively needs."""
    needs = effective_needs(template)
    found: dict[str, set[str]] = {}
    for entry_id in entry_order(template):
        found[entry_id] = set(needs[entry_id]).union(*(found[need] for need in needs[entry_id]))
    return found


def check_template(template: FlowTemplate) -> None:
    """Raise ValueError with the step named for the first rule `template` breaks."""
    _check_unique_ids(template)
    _check_needs(template)
    _check_cycles(template)
    _check_conversation(template)
    reachable = ancestors(template)
    entries = template.entries()
    listed = {step.id: position for position, step in enumerate(_all_steps(template))} | {
        entry.id: _first_position(template, entry.id) for entry in template.steps
    }
    for entry in template.steps:
        visible = set().union(*(_ids_within(entries[a]) for a in reachable[entry.id]))
        if isinstance(entry, LoopTemplate):
            if isinstance(entry.repeat, FieldValues):
                _check_declared(template, entry.repeat.field, f"loop '{entry.id}'")
            for position, step in enumerate(entry.steps):
                earlier = {s.id for s in entry.steps[:position]}
                _check_step(template, step, visible | earlier, listed, in_loop=True)
        else:
            _check_step(template, entry, visible, listed, in_loop=False)


def _first_position(template: FlowTemplate, entry_id: str) -> int:
    """Where an entry starts in the flat listing of steps (a loop: its first step)."""
    position = 0
    for entry in template.steps:
        if entry.id == entry_id:
            return position
        position += len(entry.steps) if isinstance(entry, LoopTemplate) else 1
    raise KeyError(entry_id)


def _ids_within(entry: Entry) -> set[str]:
    return {entry.id} | ({step.id for step in entry.steps} if isinstance(entry, LoopTemplate) else set())


def _all_steps(template: FlowTemplate) -> Iterator[StepTemplate]:
    for entry in template.steps:
        if isinstance(entry, LoopTemplate):
            yield from entry.steps
        else:
            yield entry


def _check_unique_ids(template: FlowTemplate) -> None:
    seen: set[str] = set()
    for entry in template.steps:
        for entry_id in [entry.id] + ([s.id for s in entry.steps] if isinstance(entry, LoopTemplate) else []):
            if entry_id in seen:
                raise ValueError(f"duplicate step id '{entry_id}'")
            seen.add(entry_id)


def _check_needs(template: FlowTemplate) -> None:
    top = template.entries()
    inside = {
        step.id: entry.id
        for entry in template.steps
        if isinstance(entry, LoopTemplate)
        for step in entry.steps
    }
    for entry in template.steps:
        for need in entry.needs or ():
            if need in inside:
                raise ValueError(
                    f"step '{entry.id}' needs '{need}', a step inside loop '{inside[need]}'; "
                    f"need the loop '{inside[need]}' instead"
                )
            if need not in top:
                raise ValueError(f"step '{entry.id}' needs unknown step '{need}'")
            if need == entry.id:
                raise ValueError(f"step '{entry.id}' needs itself")


def _check_cycles(template: FlowTemplate) -> None:
    needs = effective_needs(template)
    state: dict[str, str] = {}

    def visit(entry_id: str, path: list[str]) -> None:
        if state.get(entry_id) == "done":
            return
        if state.get(entry_id) == "open":
            cycle = [*path[path.index(entry_id) :], entry_id]
            raise ValueError(f"steps form a cycle: {' -> '.join(cycle)} (each needs the next)")
        state[entry_id] = "open"
        for need in needs[entry_id]:
            visit(need, [*path, entry_id])
        state[entry_id] = "done"

    for entry_id in needs:
        visit(entry_id, [])


def _check_conversation(template: FlowTemplate) -> None:
    if template.conversation is None:
        for step in _all_steps(template):
            if step.kind == "llm" and step.prompt is None:
                raise ValueError(
                    f"step '{step.id}' has no prompt; only a conversation flow may call the LLM "
                    "without one (the call then continues the transcript)"
                )
        return
    references = _references(template.conversation.system, "conversation.system")
    if references.step_ids or references.names - {"fixture"}:
        raise ValueError("conversation.system may use only fixture fields")
    _check_fields(template, references, "conversation.system")


def _references(source: str, where: str) -> TemplateReferences:
    try:
        return analyse(source)
    except TemplateProblem as problem:
        raise ValueError(f"{where}: {problem}") from None


def _check_step(
    template: FlowTemplate, step: StepTemplate, visible: set[str], listed: dict[str, int], *, in_loop: bool
) -> None:
    where = f"step '{step.id}'"
    sources = [step.prompt] if step.prompt else []
    if step.tool and isinstance(step.tool.result, str):
        sources.append(step.tool.result)
    for source in sources:
        references = _references(source, where)
        for used in references.step_ids:
            _check_visible(where, used, visible, listed, listed[step.id])
        if "turn" in references.names and not in_loop:
            raise ValueError(f"{where} uses 'turn' outside a loop")
        if references.names & {"item", "item_index"} and step.for_each is None:
            raise ValueError(f"{where} uses 'item' but has no for_each")
        _check_fields(template, references, where)
    for field in _fields_drawn(step):
        _check_declared(template, field, where)
    if step.for_each is not None:
        _check_declared(template, step.for_each, where)


def _check_visible(where: str, used: str, visible: set[str], listed: dict[str, int], position: int) -> None:
    if used in visible:
        return
    if used not in listed:
        raise ValueError(f"{where} references unknown step '{used}'")
    if listed[used] >= position:
        raise ValueError(
            f"{where} references step '{used}', which runs later; "
            "a step may only use the outputs of steps it needs"
        )
    raise ValueError(
        f"{where} uses the output of step '{used}', which it does not need "
        "(list it, or a step after it, in needs)"
    )


def _fields_drawn(step: StepTemplate) -> list[str]:
    specs: list[Distribution] = []
    if step.tool:
        specs.append(step.tool.duration_ms)
        if isinstance(step.tool.result, FillerResult):
            specs.append(step.tool.result.filler_tokens)
    if step.think:
        specs.append(step.think.duration_ms)
    return [spec.field for spec in specs if isinstance(spec, FieldValues)]


def _check_fields(template: FlowTemplate, references: TemplateReferences, where: str) -> None:
    for field in sorted(references.fixture_fields):
        _check_declared(template, field, where)


def _check_declared(template: FlowTemplate, field: str, where: str) -> None:
    declared = template.fixture.fields
    if declared and field not in declared:
        raise ValueError(f"{where} uses fixture field '{field}' not declared in fixture.fields {declared}")


def load_template(path: Path) -> FlowTemplate:
    """Read and validate a flow template file; every problem becomes a UserError naming the file."""
    try:
        template = FlowTemplate.model_validate(load_yaml_mapping(path))
    except ValidationError as error:
        raise UserError(f"{path}: {describe_validation_error(error, ENTRY_TAGS | FORM_TAGS)}") from None
    try:
        check_template(template)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None
    return template
