"""Bad input through the CLI: one line naming the file/field/flag, exit 2, no run directory, no engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, run_bench


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns(".expanded*"))
    shutil.copytree(ROOT / "fixtures", tmp_path / "fixtures")
    return tmp_path


def add_template(project: Path, name: str, document: dict | str) -> None:
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    (project / "flows" / f"{name}.yaml").write_text(text)


def template(prompt2: str, fixture: str = "../fixtures/documents.jsonl") -> dict:
    return {
        "name": "t",
        "fixture": {"path": fixture},
        "steps": [{"id": "one", "prompt": "{{ fixture.title }}"}, {"id": "two", "prompt": prompt2}],
    }


CASES = {
    "unknown flow": ([], None, ["--flow", "nope"], "--flow nope: unknown flow"),
    "missing fixture": (
        [],
        template("{{ steps.one.output }}", fixture="../fixtures/absent.jsonl"),
        ["--flow", "t"],
        "absent.jsonl: fixture file not found",
    ),
    "undefined field": (
        [],
        template("{{ fixture.nonexistent }}"),
        ["--flow", "t"],
        "cannot be rendered with the record",
    ),
    "later step": (
        [],
        template("{{ steps.three.output }}"),
        ["--flow", "t"],
        "references unknown step 'three'",
    ),
    "invalid yaml": ([], "name: t\nsteps: [\n", ["--flow", "t"], "t.yaml: invalid YAML (line"),
    "zero flows": ([], None, ["--num-flows", "0"], "Invalid value for '--num-flows'"),
    "negative flows": ([], None, ["--num-flows", "-3"], "Invalid value for '--num-flows'"),
    "unknown model": (
        [],
        None,
        ["--model", "/no/such/model"],
        "--model /no/such/model: no such model directory",
    ),
    "bad config": ([], None, ["--config", "missing.toml"], "missing.toml: config file not found"),
    "kv cache not positive": (
        [],
        None,
        ["--kv-cache-gib", "0"],
        "Invalid value for '--kv-cache-gib': Input should be greater than 0",
    ),
    "capture sizes": ([], None, ["--cuda-graph-sizes", "1,x"], "--cuda-graph-sizes 1,x: expected comma-sep"),
    "run id": ([], None, ["--run-id", "a b"], "Invalid value for '--run-id': String should match pattern"),
    "unknown api": ([], None, ["--api", "soap"], "Invalid value for '--api'"),
    "resume with config": (
        [],
        None,
        ["--resume", "runs/x", "--config", "c.toml"],
        "--config cannot be combined with it",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input(project: Path, case: str) -> None:
    _, document, args, message = CASES[case]
    if document is not None:
        add_template(project, "t", document)
    done = run_bench("run", *args, "--out", str(project / "runs"), cwd=project, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr
    assert not (project / "runs").exists() or not any((project / "runs").iterdir())
    assert "engine_init_ms" not in done.stdout
