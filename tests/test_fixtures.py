"""Fixture files: every broken line is named by file and line number; records stay data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flowperf.errors import UserError
from flowperf.flows.cache import expand_with_cache
from flowperf.flows.fixtures import MAX_RECORD_BYTES, load_fixture_file

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_fixtures_are_valid_and_large_enough() -> None:
    documents = load_fixture_file(ROOT / "fixtures" / "documents.jsonl", ["id", "title", "source", "text"])
    tasks = load_fixture_file(
        ROOT / "fixtures" / "tasks.jsonl", ["id", "goal", "audience", "context", "constraints"]
    )
    assert len(documents.records) >= 50
    assert len(tasks.records) >= 50
    assert len({r["id"] for r in documents.records}) == len(documents.records)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"title": "ok"}\n{"title": \n', r"f.jsonl:2: invalid JSON"),
        (b'{"title": "ok"}\n[1, 2]\n', r"f.jsonl:2: expected a JSON object, got list"),
        (b'{"name": "x"}\n', r"f.jsonl:1: title: Field required"),
        (b'{"title": "ok"}\n\xff\xfe\x00\x01garbage\n', r"f.jsonl:2: not UTF-8 text"),
        (b"\n\n", r"f.jsonl: fixture file has no records"),
        (b"", r"f.jsonl: fixture file has no records"),
    ],
)
def test_broken_fixture_lines(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_fixture_file(path, ["title"])


def test_oversized_record_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    huge = json.dumps({"title": "x" * (50 * 1024 * 1024)})
    path.write_text('{"title": "small"}\n' + huge + "\n")
    with pytest.raises(UserError, match=r"f.jsonl:2: fixture record is 50.0 MiB, over the 1 MiB limit"):
        load_fixture_file(path, ["title"])
    assert MAX_RECORD_BYTES == 1024 * 1024


def test_missing_fixture_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fixture file not found"):
        load_fixture_file(tmp_path / "absent.jsonl", [])


def test_template_using_an_undefined_field_fails_at_expansion(tmp_path: Path) -> None:
    (tmp_path / "f.jsonl").write_text('{"title": "a"}\n{"name": "b", "title": "c"}\n')
    template = {
        "name": "t",
        "fixture": {"path": "f.jsonl"},
        "steps": [{"id": "a", "prompt": "{{ fixture.title }} {{ fixture.name }}"}],
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template))
    with pytest.raises(
        UserError, match=r"step 'a' of flow 't' cannot be rendered with the record at .*f.jsonl:1"
    ):
        expand_with_cache(tmp_path / "t.yaml", 2, force=False, warn=print)
