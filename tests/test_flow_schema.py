"""Flow templates: the rules a user can break, each caught before anything runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flowperf.errors import UserError
from flowperf.flows import available_flows, resolve_flow
from flowperf.flows.graph import load_template
from flowperf.flows.schema import StepTemplate
from flowperf.flows.templating import TemplateProblem, analyse

FLOWS_DIR = Path(__file__).resolve().parents[1] / "flows"


def write_template(tmp_path: Path, steps: list[dict], **extra) -> Path:
    document = {"name": "t", "fixture": {"path": "f.jsonl", "fields": ["title"]}, "steps": steps} | extra
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_shipped_flows_load_and_chain_their_steps() -> None:
    assert set(available_flows(FLOWS_DIR)) >= {"summarize_critique_refine", "plan_draft_check"}
    for name in available_flows(FLOWS_DIR):
        load_template(FLOWS_DIR / f"{name}.yaml")
    for name in ("summarize_critique_refine", "plan_draft_check"):
        template = load_template(FLOWS_DIR / f"{name}.yaml")
        assert len(template.steps) >= 3
        # every step after the first uses an earlier step's output and a fixture field
        for step in template.steps[1:]:
            assert isinstance(step, StepTemplate) and step.prompt
            references = analyse(step.prompt)
            assert references.step_ids
            assert references.fixture_fields


def test_analyse_lists_fields_and_steps_in_order() -> None:
    refs = analyse(
        "{{ fixture.title }} {{ steps.a.output }} {% for c in fixture['items'] %}{{ c }}{% endfor %}"
    )
    assert refs.fixture_fields == {"title", "items"}
    assert refs.step_ids == ("a",)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ steps }}", "steps.<id>.output"),
        ("{{ steps[fixture.key].output }}", "literal step id"),
        ("{{ os.environ }}", "unknown name(s) os"),
        ("{{ fixture.title ", "syntax error on line 1"),
    ],
)
def test_analyse_refuses_what_cannot_be_checked(source: str, message: str) -> None:
    with pytest.raises(TemplateProblem, match=re.escape(message)):
        analyse(source)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"id": "a", "prompt": "{{ fixture.title }}"}, {"id": "a", "prompt": "x"}], "duplicate step id 'a'"),
        ([{"id": "a", "prompt": "{{ steps.b.output }}"}, {"id": "b", "prompt": "x"}], "which runs later"),
        ([{"id": "a", "prompt": "{{ steps.zz.output }}"}], "unknown step 'zz'"),
        ([{"id": "a", "prompt": "{{ steps.a.output }}"}], "which runs later"),
        ([{"id": "a", "prompt": "{{ fixture.body }}"}], "not declared in fixture.fields"),
        ([{"id": "a", "prompt": "x", "max_tokens": 0}], "steps.0.max_tokens"),
        ([{"id": "a b", "prompt": "x"}], "steps.0.id"),
        ([{"id": "a", "prompt": "x", "colour": "red"}], "Extra inputs are not permitted"),
        ([], "steps"),
    ],
)
def test_bad_templates_name_the_problem(tmp_path: Path, steps: list[dict], message: str) -> None:
    path = write_template(tmp_path, steps)
    with pytest.raises(UserError, match=message) as raised:
        load_template(path)
    assert str(path) in str(raised.value)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsteps: [\n  - id: a\n")
    with pytest.raises(UserError, match=r"bad.yaml: invalid YAML \(line \d+, column \d+\)"):
        load_template(path)


def test_non_mapping_and_binary_files(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_template(listing)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x89PNG")
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_template(binary)


def test_resolve_flow_by_name_and_path(tmp_path: Path) -> None:
    assert resolve_flow("plan_draft_check", FLOWS_DIR) == FLOWS_DIR / "plan_draft_check.yaml"
    path = FLOWS_DIR / "plan_draft_check.yaml"
    assert resolve_flow(str(path), tmp_path) == path
    with pytest.raises(UserError, match=r"--flow nope: unknown flow .* available: .*plan_draft_check"):
        resolve_flow("nope", FLOWS_DIR)
    with pytest.raises(UserError, match="no such flow template file"):
        resolve_flow(str(tmp_path / "missing.yaml"), FLOWS_DIR)
