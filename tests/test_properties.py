"""Property tests: no input to the flow schema or the expander ends in anything but a clear UserError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flowperf.errors import UserError
from flowperf.flows.cache import expand_with_cache
from flowperf.flows.expand import ExpandedFlowSet
from flowperf.flows.graph import load_template

FRAGMENTS = [
    "{{ fixture.a }}",
    "{{ fixture.b | upper }}",
    "{{ fixture['c'] }}",
    "{{ steps.s0.output }}",
    "{{ steps.s1.output | trim }}",
    "{{ steps.s9.output }}",
    "{% if fixture.a %}yes{% else %}no{% endif %}",
    "{% for x in fixture.b %}{{ x }},{% endfor %}",
    "{{ fixture.missing }}",
    "{{ 1 / 0 }}",
    "{{ fixture.__class__.__mro__ }}",
    "{{ 'x' * 10**8 }}",
    "{{ 2 ** 10**6 }}",
    "{% include 'other.txt' %}",
    "{{ self }}",
    "{{ range(10**9) | list }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{",
    "}}",
    "{%",
    "{# note #}",
    "{% raw %}{{ literal }}{% endraw %}",
]

prompts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)), min_size=1, max_size=6).map(
    "".join
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
records = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), json_values, max_size=4)
steps = st.lists(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["s0", "s1", "s2", "s 3", ""]), "prompt": prompts},
        optional={"max_tokens": st.integers(-2, 70000), "temperature": st.floats(-1, 3), "extra": st.just(1)},
    ),
    max_size=4,
)
documents = st.fixed_dictionaries(
    {"name": st.sampled_from(["flow", "bad name", ""]), "steps": steps},
    optional={
        "fixture": st.fixed_dictionaries(
            {"path": st.just("f.jsonl")}, optional={"fields": st.lists(st.text(max_size=3), max_size=3)}
        )
    },
)

SAFE_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="{}%#", blacklist_categories=["Cs"]), max_size=25
)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[dict, list[dict]]:
    """A valid flow: ordered steps, each using fields and only earlier outputs, over complete records."""
    count = draw(st.integers(1, 4))
    step_list = []
    for position in range(count):
        pieces = [draw(SAFE_TEXT), "{{ fixture.a }}", draw(SAFE_TEXT)]
        for earlier in draw(st.lists(st.integers(0, max(position - 1, 0)), max_size=2)) if position else []:
            pieces.append(f"{{{{ steps.s{earlier}.output }}}}")
        if draw(st.booleans()):
            pieces.append("{% for x in fixture.b %}[{{ x }}]{% endfor %}")
        step_list.append({"id": f"s{position}", "prompt": "".join(draw(st.permutations(pieces)))})
    document = {"name": "flow", "fixture": {"path": "f.jsonl", "fields": ["a", "b"]}, "steps": step_list}
    rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {"a": json_values, "b": st.lists(SAFE_TEXT, max_size=3)}, optional={"c": json_values}
            ),
            min_size=1,
            max_size=5,
        )
    )
    return document, rows


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_bytes_as_a_template_file(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "t.yaml"
        path.write_bytes(raw)
        try:
            load_template(path)
        except UserError as error:
            assert str(path) in str(error)


@PROPERTY_SETTINGS
@given(
    document=documents,
    fixture_records=st.lists(st.one_of(records, json_values), max_size=4),
    n=st.integers(-1, 7),
)
def test_any_template_and_fixture_expand_or_fail_cleanly(
    document: dict, fixture_records: list, n: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "t.yaml").write_text(yaml.safe_dump(document))
        (root / "f.jsonl").write_text("".join(json.dumps(record) + "\n" for record in fixture_records))
        try:
            expansion = expand_with_cache(root / "t.yaml", n, force=False, warn=lambda message: None)
        except UserError:
            event("refused with a UserError")
            return
        event("expanded")
        flows = expansion.flows
        assert len(flows) == n
        assert ExpandedFlowSet.from_json(flows.to_json()).to_json() == flows.to_json()
        outputs = {step.id: ["{{ 7*7 }} output"] for step in flows.steps}
        for node in flows.plan(flows[0], seed=0):
            prompt = flows.render(flows[0], node, outputs)
            if node.step.uses_steps:
                assert "{{ 7*7 }} output" in prompt


@PROPERTY_SETTINGS
@given(flow=well_formed(), n=st.integers(1, 12))
def test_well_formed_flows_always_expand_and_chain(flow: tuple[dict, list[dict]], n: int) -> None:
    document, rows = flow
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "t.yaml").write_text(yaml.safe_dump(document))
        (root / "f.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        fresh = expand_with_cache(root / "t.yaml", n, force=False, warn=lambda message: None)
        cached = expand_with_cache(root / "t.yaml", n, force=False, warn=lambda message: None)
        assert (fresh.source, cached.source) == ("generated", "cache")
        assert fresh.flows.to_json() == cached.flows.to_json()
        flows = cached.flows
        assert [flow.record_index for flow in flows] == [i % len(rows) for i in range(n)]
        outputs = {step.id: [f"<{step.id} says {{{{ 7*7 }}}}>"] for step in flows.steps}
        for flow in flows:
            for node in flows.plan(flow, seed=0):
                prompt = flows.render(flow, node, outputs)
                for used in node.step.uses_steps:
                    assert outputs[used][0] in prompt
