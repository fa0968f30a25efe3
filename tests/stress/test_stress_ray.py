"""`--executor ray`: the same tests as Ray tasks on a local Ray cluster that this module starts and stops."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_stress_suite import figures, noisy, run_api, run_with_replicas

from flowperf.errors import UserError

# Keep the test cluster on loopback: on Linux Ray otherwise binds to this machine's network address.
# Ray reads this when imported, so it is set first; the subprocess driver below inherits it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")


def test_an_address_where_nothing_listens_fails_at_once(tmp_path):
    """Runs before the module's cluster exists (tests run in file order), so nothing is connected yet."""
    with pytest.raises(UserError, match=r"--ray-address: nothing answers at 127\.0\.0\.1:9"):
        run_api(tmp_path, num_requests=10, executor="ray", ray_address="127.0.0.1:9")
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    """A two-CPU local Ray cluster for this module; its GCS address lets another driver join it."""
    context = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20
    )
    try:
        address = context.address_info["gcs_address"]
        assert address.startswith("127.0.0.1:")
        yield address
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
def test_ray_tasks_give_the_serial_bands(tmp_path, local_ray):
    """The replica plan travels with each task: a Ray worker's bands are the serial ones, digit for digit."""
    noise = noisy()
    run_with_replicas(tmp_path / "serial", noise, step1_only=True)
    report, _ = run_with_replicas(tmp_path / "ray", noise, step1_only=True, executor="ray")
    assert len(report.results) == 10 and all(result.replicas == 4 for result in report.results)
    banded = figures(tmp_path / "ray" / "stress_results.csv")
    assert all(float(row["e2e_p50_s_p5"]) < float(row["e2e_p50_s_p95"]) for row in banded)
    assert banded == figures(tmp_path / "serial" / "stress_results.csv")


@pytest.mark.slow
def test_ray_address_connects_another_driver(tmp_path, local_ray):
    script = (
        "import sys; from test_stress_suite import run_api; "
        f"run_api(sys.argv[1], num_requests=400, executor='ray', ray_address={local_ray!r})"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        cwd=__file__.rsplit("/", 1)[0],
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 0, stderr[-2000:]
    # the cluster at the address ran that process as a driver (a cluster of its own would not be listed)
    drivers = {job["DriverPid"] for job in ray._private.state.jobs()}
    assert driver.pid in drivers, drivers
    (row,) = figures(tmp_path / "out" / "stress_results.csv")
    assert row["test_id"] == "single/continuous/r400/g16"
