"""One definition per record kind: what is written is what is read, a run directory made by flowperf 0.1
(schema 1, before the version was recorded) still reports, compares and resumes, and one from a newer
flowperf is refused with one line.

`tests/data/run_v1` was written by `bench run -n 4 --max-tokens 8` at the commit before the records were
unified (git 83cef5c); its summary.json is that version's own.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from faults import FaultyEngine
from flowperf.config import load_run_config
from flowperf.engines.base import StepResult
from flowperf.errors import UserError
from flowperf.outputs.compare import compare_runs, parse_gate
from flowperf.outputs.report import report_summary
from flowperf.run.benchmark import RunHooks, run_benchmark
from flowperf.run.runner import measured_fields
from flowperf.rundir.records import (
    RUN_SCHEMA_VERSION,
    ResourceSample,
    StepRecord,
    WorkflowRecord,
    column_kinds,
)
from flowperf.rundir.rundata import STEP_KINDS, counted_frame, load_run, workflow_frame
from flowperf.rundir.store import CONFIG, STEPS, WORKFLOWS, RunStore, recorded_config
from flowperf.rundir.summary_schema import RunSummary
from helpers import run_bench

ROOT = Path(__file__).resolve().parents[1]
RUN_V1 = ROOT / "tests" / "data" / "run_v1"

STEP = StepRecord(
    flow_index=3,
    flow_id="f-000003",
    session=1,
    step_index=0,
    step_id="summarize",
    max_tokens=8,
    inflight_at_start=2,
    start_offset_ms=1.5,
    status="ok",
    step_ms=20.0,
    ttft_ms=5.0,
    itl_ms=[2.0, 3.0],
    prompt_tokens=100,
    output_tokens=3,
    cached_prompt_tokens=64,
)
IDENTITY_FIELDS = {
    "flow_index", "flow_id", "session", "step_index", "step_id", "max_tokens", "inflight_at_start",
    "start_offset_ms",
}  # fmt: skip
WORKFLOW = WorkflowRecord(
    flow_index=3,
    flow_id="f-000003",
    session=1,
    status="failed",
    workflow_ms=30.0,
    step_ms_sum=29.0,
    steps=3,
    steps_ok=1,
    prompt_tokens=100,
    output_tokens=3,
    cached_prompt_tokens=64,
    start_offset_ms=1.5,
    end_offset_ms=31.5,
    error_type="EngineError",
    error_message="line one\n  line two",
)


def test_records_read_back_as_written(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    store.append_step(STEP)
    store.append_workflow(WORKFLOW)
    sample = ResourceSample(session=1, t_s=0.5, steps_done=1, rss_mb=10.0, cpu_percent=1.0)
    store.append_metric(sample)
    store.close()
    assert store.read_steps() == [STEP]
    assert store.read_metrics() == [sample]
    header = (tmp_path / "r" / WORKFLOWS).read_text().splitlines()[0]
    assert header.split(",") == list(WorkflowRecord.model_fields)
    both_steps = {(3, 1, 0), (3, 1, 1)}  # the row accounts for its ok step and its failed one
    (row,) = counted_frame(store.read_workflows(), both_steps).to_dict(orient="records")
    assert workflow_frame(store).empty  # its failed step was never written: not counted
    assert row["error_message"] == "line one line two"  # one line in a CSV cell
    assert row["workflow_ms"] == 30.0 and row["flow_index"] == 3


def test_a_failed_step_line_has_no_measurement_keys() -> None:
    identity = STEP.model_dump(include=IDENTITY_FIELDS)
    failed = StepRecord(**identity, status="failed", step_ms=1.0, error_type="StepTimeout", error_message="x")
    assert set(json.loads(failed.to_line())) == IDENTITY_FIELDS | {
        "kind",
        "status",
        "step_ms",
        "error_type",
        "error_message",
    }


def test_a_wait_for_a_connection_is_recorded_beside_the_step() -> None:
    """The engine's answer carries the wait before submission; the step's line keeps it, apart from TTFT."""
    result = StepResult("x y", 10, 2, None, ttft_ms=4.0, e2e_ms=9.0, itl_ms=[5.0], connect_wait_ms=3.14159)
    record = StepRecord(**STEP.model_dump(include=IDENTITY_FIELDS), status="ok", **measured_fields(result))
    read = StepRecord.model_validate_json(record.to_line())
    assert (read.connect_wait_ms, read.ttft_ms, read.step_ms) == (3.142, 4.0, 9.0)
    assert "connect_wait_ms" in STEP_KINDS and STEP.connect_wait_ms is None


def test_tables_have_one_fixed_dtype_per_record_field(tmp_path: Path) -> None:
    assert set(STEP_KINDS) == set(column_kinds(StepRecord)) - {"prompt_text", "output_text"}
    frame = workflow_frame(_copy_v1(tmp_path))
    kinds = column_kinds(WorkflowRecord)
    assert list(frame.columns) == list(kinds)
    for column, kind in kinds.items():
        if column in ("flow_index", "session"):
            assert frame[column].dtype == "int64"
        elif kind in ("int", "float"):
            assert frame[column].dtype == "float64", column


def test_a_version_1_directory_reports_what_it_reported_then(tmp_path: Path) -> None:
    run = load_run(RUN_V1)
    saved = json.loads((RUN_V1 / "summary.json").read_text())
    summary = report_summary(run)
    assert summary.counts.workflows_ok == saved["counts"]["workflows_ok"] == 4
    assert summary.counts.steps_ok == saved["counts"]["steps_ok"] == 12
    assert summary.latency.workflow_ms.p50 == pytest.approx(saved["latency"]["workflow_ms"]["p50"])
    assert summary.latency.itl_ms.count == saved["latency"]["itl_ms"]["count"]
    for step_id, block in saved["latency_by_step"].items():
        rate = summary.latency_by_step[step_id].request_output_tokens_per_s
        assert rate == pytest.approx(block["output_tokens_per_s"])
    assert summary.resources.peak_rss_mb == pytest.approx(saved["resources"]["peak_rss_mb"])
    assert [row.hit_ratio for row in summary.prefix_cache] == pytest.approx(
        [row["hit_ratio"] for row in saved["prefix_cache"]]
    )


def test_a_version_1_summary_parses_with_its_own_version_and_names() -> None:
    text = (RUN_V1 / "summary.json").read_text()
    saved, parsed = json.loads(text), RunSummary.model_validate_json(text)
    assert parsed.schema_version == 1
    for step_id, block in saved["latency_by_step"].items():
        assert parsed.latency_by_step[step_id].request_output_tokens_per_s == block["output_tokens_per_s"]


def test_a_version_1_directory_compares_with_a_slower_copy(tmp_path: Path) -> None:
    """Compare reads a version 1 directory's figures: against a copy whose workflows all took twice as
    long, the workflow_ms medians are the recorded ones and the change is +100%."""
    slower = _copy_v1(tmp_path)
    rows = list(csv.DictReader(slower.path(WORKFLOWS).read_text().splitlines()))
    for row in rows:
        row["workflow_ms"] = str(2 * float(row["workflow_ms"]))
    with slower.path(WORKFLOWS).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    base = load_run(RUN_V1)
    results = compare_runs(base, load_run(slower.run_dir), alpha=0.05, threshold_pct=5.0,
                           gate=parse_gate(None), seed=0)  # fmt: skip
    workflow = next(result for result in results if result.metric == "workflow_ms")
    assert workflow.base == pytest.approx(float(base.workflows["workflow_ms"].median()))
    assert workflow.delta_pct == pytest.approx(100.0) and workflow.change == "regression"


def test_a_directory_from_a_newer_flowperf_is_refused(tmp_path: Path) -> None:
    store = _copy_v1(tmp_path)
    document = json.loads(store.path(CONFIG).read_text())
    store.path(CONFIG).write_text(json.dumps(document | {"schema_version": RUN_SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match=f"run-directory schema {RUN_SCHEMA_VERSION + 1} is not one"):
        load_run(store.run_dir)
    done = run_bench("report", str(store.run_dir))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "schema" in done.stderr
    before = store.path(STEPS).read_bytes()
    resumed = run_bench("run", "--resume", str(store.run_dir), cwd=ROOT)
    assert resumed.returncode == 2 and "schema" in resumed.stderr and "Traceback" not in resumed.stderr
    assert store.path(STEPS).read_bytes() == before


@pytest.mark.engine
def test_a_version_1_directory_resumes_to_completion(engine, engine_loop, tmp_path, monkeypatch) -> None:
    store = _copy_v1(tmp_path)
    monkeypatch.chdir(ROOT)  # the v1 run's flows and fixtures directories were relative to the repo
    rows = store.path(WORKFLOWS).read_text().splitlines()
    store.path(WORKFLOWS).write_text("\n".join(rows[:-2]) + "\n")  # the last two workflows were lost
    config = load_run_config(None, {}, base=recorded_config(store.run_dir))
    faulty = FaultyEngine(engine)
    resumed = engine_loop.run(
        run_benchmark(config, RunHooks(echo=lambda _: None), resume_from=store.run_dir, engine=faulty)
    )
    assert resumed.exit_code == 0 and faulty.calls == 3 + 6  # one warm-up workflow, then flows 2 and 3
    assert resumed.summary.counts.workflows_ok == 4 and resumed.summary.counts.sessions == 2
    keys = [(step.flow_index, step.step_index) for step in store.read_steps()]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12
    saved = json.loads(store.path("summary.json").read_text())
    assert saved["schema_version"] == RUN_SCHEMA_VERSION


def _copy_v1(tmp_path: Path) -> RunStore:
    run_dir = tmp_path / "run_v1"
    shutil.copytree(RUN_V1, run_dir)
    return RunStore(run_dir)
