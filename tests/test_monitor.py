"""The resource monitor: samples of this process and its children, phases, and the summary it feeds."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from flowperf.run.monitor import ResourceMonitor
from flowperf.rundir.records import GpuInfoRecord, GpuSample, PhaseRecord, ResourceSample
from flowperf.rundir.summary import growth_per_100_steps, leak_warning, resource_summary
from flowperf.rundir.summary_schema import GpusUnavailable


def test_samples_cover_children_and_phases() -> None:
    records: list[ResourceSample | GpuInfoRecord | PhaseRecord] = []
    monitor = ResourceMonitor(records.append, interval_s=0.05)
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 * 2**20); time.sleep(3)"])
    try:
        steps = iter(range(1000))
        monitor.start(session=3, steps_done=lambda: next(steps))
        with monitor.phase("work", flow_index=7):
            time.sleep(0.6)
        monitor.stop()
    finally:
        child.kill()
        child.wait()
    assert all(isinstance(r, ResourceSample | GpuInfoRecord | PhaseRecord) for r in records)
    samples = [r for r in records if isinstance(r, ResourceSample)]
    assert all(s.type == "sample" for s in samples)
    assert len(samples) >= 5
    assert all(s.session == 3 and s.rss_mb > 10 for s in samples)
    assert max(s.children for s in samples) >= 1
    assert max(s.children_rss_mb or 0.0 for s in samples) > 40
    assert [s.steps_done for s in samples] == sorted(s.steps_done for s in samples)
    (phase,) = [r for r in records if isinstance(r, PhaseRecord)]
    assert phase.name == "work" and phase.flow_index == 7 and 550 < phase.duration_ms < 2000
    assert phase.rss_before_mb > 0 and phase.rss_after_mb > 0
    (gpu,) = [r for r in records if isinstance(r, GpuInfoRecord)]
    if not gpu.available:
        assert gpu.reason  # absent NVML is reported as such, never as zero use


def test_interval_zero_records_phases_only() -> None:
    records: list[ResourceSample | GpuInfoRecord | PhaseRecord] = []
    monitor = ResourceMonitor(records.append, interval_s=0)
    monitor.start(session=0, steps_done=lambda: 0)
    with monitor.phase("p"):
        time.sleep(0.05)
    monitor.stop()
    assert [type(r) for r in records] == [PhaseRecord]
    assert [r.type for r in records] == ["phase"]


def test_an_error_ends_sampling_and_is_kept_whatever_its_type() -> None:
    """A sink or psutil failure that is not a UserError must not vanish with the thread."""
    seen: list[object] = []

    def sink(record: object) -> None:
        if isinstance(record, ResourceSample) and len(seen) >= 3:
            raise OSError(28, "No space left on device")
        seen.append(record)

    monitor = ResourceMonitor(sink, interval_s=0.01)
    monitor.start(session=0, steps_done=lambda: 0)
    deadline = time.monotonic() + 10
    while monitor.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    monitor.stop()
    assert isinstance(monitor.error, OSError)
    assert monitor.failure is not None
    assert monitor.failure.startswith("resource sampling stopped at ")
    assert "OSError: [Errno 28] No space left on device" in monitor.failure
    assert ResourceMonitor(lambda record: None, interval_s=0).failure is None


def test_tracking_pids_while_sampling_never_breaks_the_sampler() -> None:
    """`track` runs on the run's thread while the sampler iterates the tracked pids; many pids (none
    alive) make each rescan long enough that an add lands inside it on every try."""
    samples: list[ResourceSample] = []
    monitor = ResourceMonitor(
        lambda r: samples.append(r) if isinstance(r, ResourceSample) else None, interval_s=0.005
    )
    for pid in range(10**7, 10**7 + 3000):
        monitor.track(pid)
    done = threading.Event()

    def keep_tracking() -> None:
        pid = 2 * 10**7
        while not done.is_set():
            monitor.track(pid)
            pid += 1
            time.sleep(0.0005)

    adder = threading.Thread(target=keep_tracking)
    monitor.start(session=0, steps_done=lambda: 0)
    adder.start()
    time.sleep(2.0)
    done.set()
    adder.join()
    monitor.stop()
    assert monitor.error is None, monitor.failure
    assert samples and samples[-1].t_s > 1.5  # sampled to the end


def sample(
    session: int, steps: int, rss: float, engine: float = 1000.0, gpus: list[GpuSample] | None = None
) -> ResourceSample:
    return ResourceSample(
        session=session,
        t_s=steps / 100.0,
        steps_done=steps,
        rss_mb=rss,
        children_rss_mb=engine,
        cpu_percent=10.0,
        children_cpu_percent=90.0,
        gpus=gpus,
    )


def test_leak_slope_is_fitted_on_the_longest_session() -> None:
    leaky = [sample(1, steps, 500 + 0.05 * steps) for steps in range(0, 2000, 50)]
    short = [sample(0, steps, 900.0) for steps in range(1, 30)]
    info = GpuInfoRecord(session=0, available=False, reason="NVML unavailable: no driver", devices=0)
    summary = resource_summary([info, *short, *leaky])
    assert summary.rss_growth_mb_per_100_steps == pytest.approx(5.0)
    assert summary.engine_rss_growth_mb_per_100_steps == pytest.approx(0.0, abs=1e-9)
    assert summary.peak_rss_mb == pytest.approx(900.0)
    assert summary.gpus == GpusUnavailable(reason="NVML unavailable: no driver")
    assert summary.model_dump(mode="json")["gpus"] == {
        "available": False,
        "reason": "NVML unavailable: no driver",
    }
    assert "5.00 MB per 100 steps" in leak_warning(summary, threshold_mb=2.0)
    assert leak_warning(summary, threshold_mb=10.0) is None


def test_not_enough_steps_means_no_slope() -> None:
    assert growth_per_100_steps([1, 2, 3], [1.0, 2.0, 3.0]) is None
    assert growth_per_100_steps(list(range(10)), [float(i) for i in range(10)]) is None


def test_gpu_use_is_summarised_per_device() -> None:
    info = GpuInfoRecord(session=0, available=True, reason=None, devices=2)
    records = [info] + [
        sample(0, step, 100.0, gpus=[
            GpuSample(index=0, mem_used_mb=1000 + step, mem_total_mb=8000, util_percent=50),
            GpuSample(index=1, mem_used_mb=10.0, mem_total_mb=8000, util_percent=step % 2 * 100),
        ])
        for step in range(4)
    ]  # fmt: skip
    gpus = resource_summary(records).gpus
    assert isinstance(gpus, dict) and sorted(gpus) == ["0", "1"]
    assert gpus["0"].mem_used_mb_peak == 1003 and gpus["0"].util_percent_mean == 50
    assert gpus["1"].util_percent_peak == 100 and gpus["1"].util_percent_mean == 50


def test_a_sampler_that_died_is_in_every_summary_of_the_directory(tmp_path) -> None:
    """benchmark.record_monitor_failure keeps the failure in metrics.jsonl and warns; a summary
    recomputed later from the files (a report) still says sampling stopped."""
    from types import SimpleNamespace

    from flowperf.run.benchmark import RunHooks, record_monitor_failure
    from flowperf.rundir.store import RunStore
    from flowperf.rundir.summary import resource_summary

    store = RunStore.create(tmp_path, "r")
    warned: list[str] = []
    monitor = SimpleNamespace(failure="resource sampling stopped at 3.2 s: OSError: disk full")
    run = SimpleNamespace(monitor=monitor, hooks=RunHooks(warn=warned.append), store=store,
                          opened=SimpleNamespace(session=1))  # fmt: skip
    record_monitor_failure(run)
    store.close()
    assert warned == [monitor.failure]
    assert resource_summary(store.read_metrics()).monitor_errors == [monitor.failure]
    assert resource_summary([]).monitor_errors == []


def test_an_ignored_child_is_not_counted_as_an_engine_process() -> None:
    """The periodic-summary worker is the harness's child but not the engine: its memory must not be
    reported as the engine's."""
    import subprocess
    import sys

    from flowperf.run.monitor import ProcessTree, TrackedPids

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ignored = TrackedPids()
        ignored.add(child.pid)
        # other children of the test process (the session's engine) are counted either way
        assert ProcessTree(ignored=ignored).sample()["children"] == ProcessTree().sample()["children"] - 1
    finally:
        child.kill()
        child.wait()
