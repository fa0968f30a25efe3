"""Jinja2 in an immutable sandbox: the only way flowperf turns a template into a prompt.

Templates come from files users share, so they must not reach Python objects, the filesystem or the
environment: the sandbox refuses unsafe attributes and mutation, StrictUndefined turns a typo into an
error instead of an empty string, and autoescape is off because prompts are plain text, not HTML.
A template sees exactly two names: `fixture` (the record, data only) and `steps` (earlier outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

ALLOWED_NAMES = frozenset({"fixture", "steps"})
MAX_REPEATED_LENGTH = 1_000_000
MAX_EXPONENT = 1_000


class PromptSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus limits on `*` and `**`, which it leaves unbounded.

    Without them `{{ "x" * 10**10 }}` in a shared template would exhaust memory instead of failing.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is over the limit of {MAX_EXPONENT}")
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(count, int)
                    and len(sequence) * count > MAX_REPEATED_LENGTH
                ):
                    raise SecurityError(f"repetition of {count} x {len(sequence)} is over the limit")
        return super().call_binop(context, operator, left, right)


ENVIRONMENT = PromptSandbox(
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    auto_reload=False,
)


class TemplateProblem(ValueError):
    """A prompt template that cannot be used; the message says why, without file context."""


@dataclass(frozen=True)
class TemplateReferences:
    """What a prompt template reads: fixture fields and the ids of the steps whose output it uses."""

    fixture_fields: frozenset[str]
    step_ids: tuple[str, ...]


def analyse(source: str) -> TemplateReferences:
    """Parse `source` and list what it references, refusing names other than `fixture` and `steps`.

    A step output must be written `steps.<id>.output` (or `steps['<id>'].output`) so that the order of
    steps can be checked before anything runs.
    """
    try:
        tree = ENVIRONMENT.parse(source)
    except TemplateSyntaxError as error:
        raise TemplateProblem(f"template syntax error on line {error.lineno}: {error.message}") from None
    unknown = meta.find_undeclared_variables(tree) - ALLOWED_NAMES
    if unknown:
        names = ", ".join(sorted(unknown))
        raise TemplateProblem(f"unknown name(s) {names}: a template sees only 'fixture' and 'steps'")

    keyed: dict[int, str] = {}
    for access in tree.find_all((nodes.Getattr, nodes.Getitem)):
        key = _static_key(access)
        if key is not None and isinstance(access.node, nodes.Name):
            keyed[id(access.node)] = key

    step_ids: list[str] = []
    fields: set[str] = set()
    for name_node in tree.find_all(nodes.Name):
        key = keyed.get(id(name_node))
        if name_node.name == "fixture" and key is not None:
            fields.add(key)
        elif name_node.name == "steps":
            if key is None:
                raise TemplateProblem("'steps' must be used as steps.<id>.output with a literal step id")
            if key not in step_ids:
                step_ids.append(key)
    return TemplateReferences(fixture_fields=frozenset(fields), step_ids=tuple(step_ids))


def _static_key(access: nodes.Getattr | nodes.Getitem) -> str | None:
    """The literal name in `x.key` or `x['key']`, or None for a computed key."""
    if isinstance(access, nodes.Getattr):
        return access.attr
    if isinstance(access.arg, nodes.Const) and isinstance(access.arg.value, str):
        return access.arg.value
    return None
