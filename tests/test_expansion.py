"""Expansion and its cache: identical bytes cached vs fresh, every input change a miss, damage a warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flowperf.errors import UserError
from flowperf.flows.cache import CACHE_FILE_NAME, EXPANDED_DIR_NAME, expand_with_cache
from flowperf.flows.expand import ExpandedFlowSet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A private copy of flows/ and fixtures/ so cache files never touch the repository."""
    shutil.copytree(ROOT / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns(".expanded*"))
    shutil.copytree(ROOT / "fixtures", tmp_path / "fixtures")
    return tmp_path


@pytest.fixture
def template(project: Path) -> Path:
    return project / "flows" / "summarize_critique_refine.yaml"


class Warnings(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


def expand(template: Path, n: int = 25, force: bool = False) -> tuple[str, str, Warnings]:
    warnings = Warnings()
    result = expand_with_cache(template, n, force=force, warn=warnings)
    return result.source, result.flows.to_json(), warnings


def test_cached_expansion_is_byte_identical_to_fresh(template: Path) -> None:
    first_source, fresh, _ = expand(template)
    second_source, cached, warnings = expand(template)
    forced_source, forced, _ = expand(template, force=True)
    assert (first_source, second_source, forced_source) == ("generated", "cache", "generated")
    assert fresh == cached == forced
    assert not warnings
    stored = next((template.parent / EXPANDED_DIR_NAME).glob("*.json")).read_text(encoding="utf-8")
    assert stored == fresh


def test_flows_cycle_through_records_with_stable_ids(template: Path) -> None:
    flows = expand_with_cache(template, 130, force=False, warn=print).flows
    assert len(flows) == 130
    assert len(flows.records) == 60
    assert [f.record_index for f in flows][58:62] == [58, 59, 0, 1]
    assert flows[7].flow_id == "summarize_critique_refine-000007"
    # the first step needs no earlier output, so its prompt is rendered once per record at expansion
    first = flows.plan(flows[61], seed=0)[0]
    prompt = flows.render(flows[61], first, {})
    assert flows.records[1]["title"] in prompt


def test_later_steps_render_with_real_outputs_inserted_literally(template: Path) -> None:
    flows = expand_with_cache(template, 3, force=False, warn=print).flows
    critique = flows.plan(flows[0], seed=0)[1]
    output = "THE SUMMARY {{ 7*7 }} {% raw %}"
    prompt = flows.render(flows[0], critique, {"summarize": [output]})
    assert output in prompt
    assert "49" not in prompt


@pytest.mark.parametrize("change", ["template", "fixture", "num_flows"])
def test_any_input_change_is_a_miss(project: Path, template: Path, change: str) -> None:
    expand(template)
    n = 25
    if change == "template":
        template.write_text(template.read_text() + "\n# edited\n")
    elif change == "fixture":
        fixture = project / "fixtures" / "documents.jsonl"
        lines = fixture.read_text().splitlines()
        record = json.loads(lines[0]) | {"title": "A different title"}
        fixture.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    else:
        n = 26
    source, flows_json, _ = expand(template, n)
    assert source == "generated"
    if change == "fixture":
        assert "A different title" in flows_json


def test_both_flow_counts_stay_cached(template: Path) -> None:
    expand(template, 25)
    expand(template, 1000)
    assert expand(template, 25)[0] == "cache"
    assert expand(template, 1000)[0] == "cache"


@pytest.mark.parametrize(
    ("damage", "warning"),
    [
        ("truncate_index", "corrupt"),
        ("garbage_index", "corrupt"),
        ("binary_index", "unreadable"),
        ("delete_expanded", "missing or unreadable"),
        ("truncate_expanded", "does not match its recorded hash"),
        ("edit_expanded_consistently", "corrupt"),
    ],
)
def test_damaged_cache_is_a_miss_with_a_warning(template: Path, damage: str, warning: str) -> None:
    _, fresh, _ = expand(template)
    index = template.parent / CACHE_FILE_NAME
    expanded = next((template.parent / EXPANDED_DIR_NAME).glob("*.json"))
    if damage == "truncate_index":
        index.write_text(index.read_text()[:40])
    elif damage == "garbage_index":
        index.write_text('{"entries": [{"nonsense": 1}]}')
    elif damage == "binary_index":
        index.write_bytes(b"\xff\xfe\x00\x00binary")
    elif damage == "delete_expanded":
        expanded.unlink()
    elif damage == "truncate_expanded":
        expanded.write_text(expanded.read_text()[:100])
    else:
        # a valid-looking edit that also fixes up the recorded hash must still be rejected if malformed
        import hashlib

        broken = expanded.read_text().replace('"format_version":3', '"format_version":"x"')
        expanded.write_text(broken)
        entries = json.loads(index.read_text())
        entries["entries"][0]["expanded_sha256"] = hashlib.sha256(broken.encode()).hexdigest()
        index.write_text(json.dumps(entries))
    source, regenerated, warnings = expand(template)
    assert source == "generated"
    assert regenerated == fresh
    assert any(warning in message for message in warnings), warnings
    assert expand(template)[0] == "cache"


def test_unwritable_cache_warns_and_still_expands(template: Path) -> None:
    flows_dir = template.parent
    flows_dir.chmod(0o555)
    try:
        source, _, warnings = expand(template)
    finally:
        flows_dir.chmod(0o755)
    assert source == "generated"
    if warnings:  # root can write anyway; elsewhere the failure must be a warning, not an error
        assert "cannot write the expansion cache" in warnings[0]


def test_expanded_set_round_trips(template: Path) -> None:
    _, fresh, _ = expand(template, 7)
    assert ExpandedFlowSet.from_json(fresh).to_json() == fresh


def test_bad_num_flows_and_missing_template(template: Path) -> None:
    with pytest.raises(UserError, match="--num-flows must be at least 1"):
        expand_with_cache(template, 0, force=False, warn=print)
    with pytest.raises(UserError, match="flow template not found"):
        expand_with_cache(template.parent / "missing.yaml", 3, force=False, warn=print)
