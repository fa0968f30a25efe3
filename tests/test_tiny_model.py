"""The embedded model: same bytes every build, rebuilt only when its inputs change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flowperf.engines.tiny import ARCHITECTURE, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_two_builds_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPERF_HOME", str(tmp_path / "a"))
    first = build_tiny_model(ROOT / "fixtures")
    monkeypatch.setenv("FLOWPERF_HOME", str(tmp_path / "b"))
    second = build_tiny_model(ROOT / "fixtures")
    assert first.built and second.built
    assert first.path.name == second.path.name
    assert tree_bytes(first.path) == tree_bytes(second.path)
    again = build_tiny_model(ROOT / "fixtures")
    assert not again.built and again.path == second.path


def test_model_is_llama_with_head_dim_64_and_a_trained_tokenizer(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] == 64 == ARCHITECTURE["head_dim"]
    tokenizer = json.loads((tiny_model / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) + len(tokenizer["added_tokens"]) >= ARCHITECTURE["vocab_size"] - 3
    assert tokenizer["pre_tokenizer"]["type"] == "ByteLevel"


def test_changed_corpus_gives_a_new_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPERF_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "fixtures"
    shutil.copytree(ROOT / "fixtures", corpus)
    original = build_tiny_model(corpus)
    with (corpus / "documents.jsonl").open("a") as extra:
        extra.write(
            json.dumps({"id": "doc-x", "title": "new", "source": "note", "text": "something new"}) + "\n"
        )
    assert build_tiny_model(corpus).path != original.path
