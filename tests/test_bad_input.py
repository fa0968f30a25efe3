"""Bad input through the CLI: one line naming the file/field/flag, exit 2, and nothing written anywhere
(no run directory, no expansion cache, no [TIMING] line, no engine; a refused resume leaves its
directory byte for byte as it was)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flowperf.config import RunConfig
from flowperf.flows.cache import CACHE_FILE_NAME, EXPANDED_DIR_NAME
from flowperf.rundir.records import RUN_SCHEMA_VERSION
from flowperf.rundir.store import STEPS, WORKFLOWS
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
    assert_nothing_else_written(project, done.stdout)


def assert_nothing_else_written(project: Path, stdout: str) -> None:
    assert "[TIMING]" not in stdout
    assert not (project / "flows" / CACHE_FILE_NAME).exists()
    assert not (project / "flows" / EXPANDED_DIR_NAME).exists()


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in directory.iterdir()}


def crashed_run(project: Path) -> Path:
    """A run directory as a crash leaves it: config.json and torn last lines in the append-only files."""
    config = RunConfig.model_validate({"num_flows": 2, "output": {"out_dir": str(project / "runs")}})
    run_dir = project / "runs" / "old"
    run_dir.mkdir(parents=True)
    document = {
        "schema_version": RUN_SCHEMA_VERSION,
        "run_id": "old",
        "config": config.model_dump(mode="json"),
        "config_sha256": config.fingerprint(),
        "flow": {"name": "t", "template_sha256": "0" * 64, "fixture_sha256": "0" * 64},
    }
    (run_dir / "config.json").write_text(json.dumps(document))
    (run_dir / STEPS).write_text('{"flow_index": 0, "session": 0}\n{"flow_ind')
    (run_dir / WORKFLOWS).write_text("flow_index,session\n0,0\n1,")
    return run_dir


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-flows", "3"], "settings differ from the run's: num_flows (2 -> 3)"),
        ([], "the flow template or its fixtures changed since the run started"),
    ],
    ids=["changed settings", "changed flows"],
)
def test_a_refused_resume_writes_nothing(project: Path, flags: list[str], message: str) -> None:
    """Refused before its torn tails are cut, before the flows are expanded (for changed settings), and
    before any [TIMING] line."""
    run_dir = crashed_run(project)
    before = snapshot(run_dir)
    done = run_bench("run", "--resume", str(run_dir), *flags, "--no-progress", cwd=project, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert snapshot(run_dir) == before
    assert "[TIMING]" not in done.stdout
    if flags:
        assert_nothing_else_written(project, done.stdout)
