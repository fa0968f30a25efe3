"""`--executor ray`: the same tests as Ray tasks on a local Ray cluster that this module starts and stops."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_stress_suite import figures, run_api

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """A two-CPU local Ray cluster for this module; its GCS address lets another driver join it."""
    context = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20
    )
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_tasks_give_the_serial_results(tmp_path, local_ray):
    run_api(tmp_path / "serial", step1_only=True)
    _, seen = run_api(tmp_path / "ray", step1_only=True, executor="ray")
    assert len(seen) == 10
    assert figures(tmp_path / "ray" / "stress_results.csv") == figures(
        tmp_path / "serial" / "stress_results.csv"
    )
    assert ray.is_initialized()  # a cluster the suite did not start is left running


@pytest.mark.slow
def test_ray_address_connects_another_driver(tmp_path, local_ray):
    script = (
        "import sys; from test_stress_suite import run_api; "
        f"run_api(sys.argv[1], num_requests=400, executor='ray', ray_address={local_ray!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        cwd=__file__.rsplit("/", 1)[0],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = figures(tmp_path / "out" / "stress_results.csv")
    assert row["test_id"] == "single/continuous/r400/g16"
