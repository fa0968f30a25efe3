"""The prompt sandbox: a flow template someone shared cannot reach Python's internals, change the fixture
records every flow shares, or exhaust memory or CPU, and fixture text is always data, never template code.

Each probe goes through the renderer flowperf uses (`PromptRenderer`, `expand_with_cache`). The probes
that would exhaust the machine without the sandbox run in a child process with a memory cap and a
timeout, so that replacing the sandbox makes these tests fail rather than hang; a control test shows
that a plain Jinja environment does what each probe tries.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import SecurityError

from flowperf.errors import UserError
from flowperf.flows.cache import expand_with_cache
from flowperf.flows.expand import PromptRenderer, template_context
from flowperf.flows.templating import MAX_EXPONENT, MAX_REPEATED_LENGTH

RECORD = {"id": "r1", "title": "ab", "text": "plain"}
ESCAPES = [
    "{{ fixture.__class__ }}",
    "{{ fixture.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ fixture.clear() }}",  # the records are shared by every flow of the run
    "{{ fixture.update(title='changed') }}",
]
BOMB_CAP_BYTES = 1 << 30
BOMB_TIMEOUT_S = 20.0
BOMB_RENDER = """
import json, sys
from flowperf.flows.expand import PromptRenderer, template_context
try:
    text = PromptRenderer().template("s", sys.argv[1]).render(template_context({"title": "ab"}, {}, None))
    print(json.dumps({"rendered": text[:200]}))
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
"""


def render(source: str, record: dict[str, object] | None = None) -> str:
    context = template_context(RECORD if record is None else record, {}, None)
    return PromptRenderer().template("s", source).render(context)


def render_capped(source: str, timeout_s: float = BOMB_TIMEOUT_S) -> dict[str, str]:
    """Render `source` with flowperf's renderer in a child limited to 1 GiB and `timeout_s`."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (BOMB_CAP_BYTES, BOMB_CAP_BYTES))

    try:
        result = subprocess.run(
            [sys.executable, "-c", BOMB_RENDER, source],
            capture_output=True, text=True, timeout=timeout_s, preexec_fn=cap_memory,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}", "message": result.stderr[-300:]}
    return json.loads(result.stdout)


@pytest.mark.parametrize("source", ESCAPES)
def test_internals_and_mutation_are_refused(source: str) -> None:
    record = dict(RECORD)
    with pytest.raises(SecurityError, match="unsafe"):
        render(source, record)
    assert record == RECORD


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
        ("{{ range(10**9) | list | length }}", "Range too big"),
        ("{{ 'x' * 10**9 }}", "repetition of 1000000000 x 1 is over the limit"),
        ("{{ fixture.title * 10**9 }}", "repetition of 1000000000 x 2 is over the limit"),
        ("{{ [0] * 10**9 }}", "repetition of 1000000000 x 1 is over the limit"),
        ("{{ 10 ** (10 ** 10) }}", "exponent 10000000000 is over the limit"),
        ("{{ 2 ** (2 ** (2 ** 10)) }}", "over the limit of 1000"),
    ],
)
def test_memory_and_cpu_bombs_are_refused(source: str, refusal: str) -> None:
    outcome = render_capped(source)
    assert outcome.get("error") in ("SecurityError", "OverflowError"), outcome
    assert refusal in outcome["message"]


def test_a_power_tower_is_left_associative_and_harmless() -> None:
    """Jinja reads `10 ** 10 ** 10` as (10 ** 10) ** 10: a 101-digit number, rendered at once."""
    assert render_capped("{{ 10 ** 10 ** 10 }}") == {"rendered": str(10**100)}


def test_a_plain_jinja_environment_does_what_each_probe_tries() -> None:
    """The control: without the sandbox each probe succeeds (the bombs just over the limits, so that
    the plain environment finishes), so the refusals above are the sandbox's doing."""
    plain = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    for source in ESCAPES:
        plain.from_string(source).render(fixture=dict(RECORD), steps={})
    assert "os" in plain.from_string("{{ cycler.__init__.__globals__ }}").render()
    over_the_limits = [
        f"{{{{ range({10**5 + 1}) | list | length }}}}",
        f"{{{{ 'x' * {MAX_REPEATED_LENGTH + 1} }}}}",
        f"{{{{ 2 ** {MAX_EXPONENT + 1} }}}}",
    ]
    for source in over_the_limits:
        plain.from_string(source).render()
        with pytest.raises((SecurityError, OverflowError)):
            render(source)


def test_fixture_text_that_looks_like_a_template_is_rendered_literally() -> None:
    text = "{{ 7*7 }} {% for i in range(10**9) %}x{% endfor %} {{ fixture.__class__ }} {% raw %}"
    assert render("Document: {{ fixture.text }}", {"text": text}) == f"Document: {text}"


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    lines = [
        {"id": "a", "text": "{{ 7*7 }} and {% if true %}yes{% endif %}"},
        {"id": "b", "text": "{{ fixture.__class__.__mro__ }} {{ cycler.__init__.__globals__ }}"},
    ]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


def write_flow(flow_dir: Path, first_prompt: str) -> Path:
    path = flow_dir / "flow.yaml"
    path.write_text(
        "name: probe\nfixture:\n  path: records.jsonl\nsteps:\n"
        f"  - id: first\n    prompt: {json.dumps(first_prompt)}\n"
        "  - id: second\n    prompt: 'Earlier: {{ steps.first.output }}'\n"
    )
    return path


def test_an_expanded_flow_keeps_fixture_text_and_step_outputs_literal(flow_dir: Path) -> None:
    flows = expand_with_cache(
        write_flow(flow_dir, "Text: {{ fixture.text }}"), 2, force=True, warn=print
    ).flows
    first, second = flows.plan(flows[0], seed=0)
    assert [flows.render(flow, first, {}) for flow in flows] == [
        "Text: {{ 7*7 }} and {% if true %}yes{% endif %}",
        "Text: {{ fixture.__class__.__mro__ }} {{ cycler.__init__.__globals__ }}",
    ]
    output = "{{ 6*7 }} {% raw %}"
    assert flows.render(flows[0], second, {"first": [output]}) == f"Earlier: {output}"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("{{ fixture.__class__.__mro__ }}", r"step 'first' .*records.jsonl:1: SecurityError: .*'__class__'"),
        ("{{ fixture.items.__self__ }}", r"step 'first' .*SecurityError: .*'__self__'"),
        ("{{ fixture.text * 10**9 }}", r"step 'first' .*SecurityError: repetition"),
        ("{{ cycler.__init__ }}", r"step 'first' .*SecurityError: .*'__init__'"),
        ("{{ range(10**9) | length }}", r"step 'first' .*OverflowError: Range too big"),
        ("{{ secrets }}", r"unknown name\(s\) secrets"),
    ],
)
def test_a_flow_file_that_tries_is_a_user_error_naming_the_step(
    flow_dir: Path, prompt: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        expand_with_cache(write_flow(flow_dir, prompt), 2, force=True, warn=print)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 10 ** 1000 ** 1000 ** 1000 }}",  # each exponent is under the limit; the base is not bounded
        "{{ fixture.title | center(10**9) }}",
        "{{ '{:>1000000000}'.format('x') }}",
        "{{ '%1000000000s' % 'x' }}",
        "{{ fixture.title | indent(10**9, true) }}",
        "{{ '%*s' % (10**9, 'x') }}",
        "{{ ('x' * 1000000) | replace('x', 'xx') }}",
        "{{ (['x' * 1000000] * 1000) | join }}",
    ],
)
def test_size_bombs_beyond_the_binary_operators_are_refused(source: str) -> None:
    assert render_capped(source, timeout_s=5.0).get("error") in ("SecurityError", "OverflowError")


def test_lipsum_text_of_any_size_is_not_offered() -> None:
    assert render_capped("{{ lipsum(10**6) }}", timeout_s=5.0).get("error") == "UndefinedError"
