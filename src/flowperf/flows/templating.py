"""Jinja2 in an immutable sandbox: the only way flowperf turns a template into a prompt.

Templates come from files users share, so they must not reach Python objects, the filesystem or the
environment: the sandbox refuses unsafe attributes and mutation, StrictUndefined turns a typo into an
error instead of an empty string, and autoescape is off because prompts are plain text, not HTML.
A template sees `fixture` (the record, data only), `steps` (outputs of the steps it needs), and inside
loops and fan-outs `turn`, `item` and `item_index`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes, pass_eval_context
from jinja2.filters import do_indent, do_join
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

ALLOWED_NAMES = frozenset({"fixture", "steps", "turn", "item", "item_index"})
MAX_REPEATED_LENGTH = 1_000_000
MAX_EXPONENT = 1_000
MAX_POWER_BITS = 100_000
PERCENT_WIDTHS = re.compile(r"%[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
FORMAT_WIDTHS = re.compile(r"\{[^{}]*?:[^{}\d]*(\d+)?(?:[,_]?\.(\d+))?[^{}]*\}")


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_REPEATED_LENGTH:
        raise SecurityError(f"{what} is over the limit ({size:,} > {MAX_REPEATED_LENGTH:,})")


def _check_percent_format(text: str, arguments: Any) -> None:
    """`'%1000000000s' % x` allocates its width before anything else can stop it."""
    values = arguments if isinstance(arguments, tuple) else (arguments,)
    for width, precision in PERCENT_WIDTHS.findall(text):
        for given in (width, precision):
            if given == "*":
                for value in values:
                    if isinstance(value, int):
                        _refuse_size(value, "format width")
            elif given:
                _refuse_size(int(given), "format width")


def _check_format_method(text: str) -> None:
    for width, precision in FORMAT_WIDTHS.findall(text):
        for given in (width, precision):
            if given:
                _refuse_size(int(given), "format width")


def _bounded_center(value: str, width: int = 80) -> str:
    _refuse_size(width, "center width")
    return str(value).center(width)


def _bounded_indent(value: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    if isinstance(width, int):
        _refuse_size(width * (str(value).count("\n") + 1), "indentation")
    return do_indent(value, width, first, blank)


def _bounded_replace(value: str, old: str, new: str, count: int | None = None) -> str:
    text = str(value)
    if len(new) > len(old):
        _refuse_size(len(text) + (len(new) - len(old)) * text.count(old), "replacement result")
    return text.replace(old, new) if count is None else text.replace(old, new, count)


@pass_eval_context
def _bounded_join(context: EvalContext, value: Any, d: str = "", attribute: str | None = None) -> str:
    items = list(value)
    if attribute is None:
        total = sum(len(item) if isinstance(item, str) else len(str(item)) for item in items)
        _refuse_size(total + len(d) * max(len(items) - 1, 0), "joined length")
    return do_join(context, items, d, attribute)


class PromptSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus limits on what it leaves unbounded: `*`, `**` and `%`, the widths of
    `str.format`, and the filters that allocate what their arguments say (center, indent, replace, join).

    Without them `{{ "x" * 10**10 }}` in a shared template would exhaust memory instead of failing. The
    limits are on the size a result would have, checked before it is built.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(count, int):
                    _refuse_size(len(sequence) * count, f"repetition of {count} x {len(sequence)}")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, right)
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            _check_format_method(obj)
        return super().getattr(obj, attribute)


def _check_power(left: Any, right: Any) -> None:
    if not isinstance(right, int):
        return
    if abs(right) > MAX_EXPONENT:
        raise SecurityError(f"exponent {right} is over the limit of {MAX_EXPONENT}")
    if isinstance(left, int) and right > 0 and abs(left).bit_length() * right > MAX_POWER_BITS:
        raise SecurityError(f"a power of {abs(left).bit_length() * right:,} bits is over the limit")


ENVIRONMENT = PromptSandbox(
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    auto_reload=False,
)
ENVIRONMENT.globals.pop("lipsum", None)  # generates text of any size; no prompt needs it
ENVIRONMENT.filters |= {
    "center": _bounded_center,
    "indent": _bounded_indent,
    "replace": _bounded_replace,
    "join": _bounded_join,
}


class TemplateProblem(ValueError):
    """A prompt template that cannot be used; the message says why, without file context."""


@dataclass(frozen=True)
class TemplateReferences:
    """What a prompt template reads: fixture fields, the ids of the steps whose output it uses, and every
    top-level name (so a `turn` outside a loop can be refused)."""

    fixture_fields: frozenset[str]
    step_ids: tuple[str, ...]
    names: frozenset[str] = frozenset()


def analyse(source: str) -> TemplateReferences:
    """Parse `source` and list what it references, refusing names other than `fixture` and `steps`.

    A step output must be written `steps.<id>.output` (or `steps['<id>'].output`) so that the order of
    steps can be checked before anything runs.
    """
    try:
        tree = ENVIRONMENT.parse(source)
    except TemplateSyntaxError as error:
        raise TemplateProblem(f"template syntax error on line {error.lineno}: {error.message}") from None
    used = meta.find_undeclared_variables(tree)
    unknown = used - ALLOWED_NAMES
    if unknown:
        names = ", ".join(sorted(unknown))
        raise TemplateProblem(
            f"unknown name(s) {names}: a template sees only {', '.join(sorted(ALLOWED_NAMES))}"
        )

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
                raise TemplateProblem(
                    "'steps' must be used as steps.<id>.output (or .outputs) with a literal step id"
                )
            if key not in step_ids:
                step_ids.append(key)
    return TemplateReferences(
        fixture_fields=frozenset(fields), step_ids=tuple(step_ids), names=frozenset(used)
    )


def _static_key(access: nodes.Getattr | nodes.Getitem) -> str | None:
    """The literal name in `x.key` or `x['key']`, or None for a computed key."""
    if isinstance(access, nodes.Getattr):
        return access.attr
    if isinstance(access.arg, nodes.Const) and isinstance(access.arg.value, str):
        return access.arg.value
    return None
