"""Resource monitor: what the harness and the engine processes it started use, sampled as a run goes.

A sampler thread records, every `interval_s`, the RSS and CPU% of this process and of its children (vLLM's
engine core and workers are children), system memory, and per-GPU memory and utilisation where NVML is
available. Where it is not, that is recorded once with the reason, never as zeros. Named phases (flow
expansion, engine start-up, warm-up, each workflow) are timed into the same stream with memory before and
after. Records go to a sink (the run's metrics.jsonl); the summary is computed from that file.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from flowperf.rundir.records import GpuInfoRecord, GpuSample, MetricRecord, PhaseRecord, ResourceSample

MB = 1024 * 1024

Sink = Callable[[MetricRecord], None]


def nvml_devices() -> tuple[Any, list[Any], str | None]:
    """(pynvml module, device handles, None) where NVML works, else (None, [], the reason it does not)."""
    try:
        import pynvml
    except ImportError:
        return None, [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as error:
        return None, [], f"NVML unavailable: {error}"
    if not handles:
        pynvml.nvmlShutdown()
        return None, [], "NVML found no GPU"
    return pynvml, handles, None


class TrackedPids:
    """Pids added by the run's thread while the sampler thread reads them: every read is a snapshot
    taken under a lock, so an add during a sample can never break the iteration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: set[int] = set()

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def snapshot(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._pids)


class ProcessTree:
    """This process and its descendants, with CPU% measured between successive samples.

    Descendants are the engine's processes when the engine runs in this process (vLLM's core); an engine
    reached over HTTP has none here (client workers and a local Ray cluster are the harness's). Engine
    processes that are not descendants (a persistent server flowperf started earlier) are added
    with `track`, and count as engine processes with their own descendants. Finding descendants means
    reading every process on the machine, two thirds of a sample's cost, so the tree is rescanned every
    `rescan_every` samples (2 s at the default interval): engine processes live for the whole run.
    """

    rescan_every = 8

    def __init__(
        self,
        tracked: TrackedPids | None = None,
        ignored: TrackedPids | None = None,
        children_are_engine: bool = True,
    ) -> None:
        self.root = psutil.Process()
        self.children_are_engine = children_are_engine
        self.tracked = tracked or TrackedPids()
        self.ignored = ignored or TrackedPids()
        self._known: dict[int, psutil.Process] = {}
        self._samples = 0
        self.root.cpu_percent(None)

    def _engine_processes(self) -> list[psutil.Process]:
        ignored = self.ignored.snapshot()
        children = self.root.children(recursive=True) if self.children_are_engine else []
        processes = [child for child in children if child.pid not in ignored]
        for pid in self.tracked.snapshot():
            with contextlib.suppress(psutil.Error):
                tracked = psutil.Process(pid)
                processes += [tracked, *tracked.children(recursive=True)]
        return processes

    def sample(self) -> dict[str, float | None]:
        if self._samples % self.rescan_every == 0:
            children = self._engine_processes()
        else:
            children = [process for process in self._known.values() if process.is_running()]
        self._samples += 1
        live = {child.pid: self._known.get(child.pid, child) for child in children}
        for pid, child in live.items():
            if pid not in self._known:
                with contextlib.suppress(psutil.Error):
                    child.cpu_percent(None)
        self._known = live
        children_rss = children_cpu = 0.0
        for child in live.values():
            with contextlib.suppress(psutil.Error):
                children_rss += child.memory_info().rss
                children_cpu += child.cpu_percent(None)
        return {
            "rss_mb": self.root.memory_info().rss / MB,
            "cpu_percent": self.root.cpu_percent(None),
            "children_rss_mb": children_rss / MB if live else None,
            "children_cpu_percent": children_cpu if live else None,
            "children": len(live),
        }


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


class ResourceMonitor:
    """Samples resources on a thread; times phases on demand. Start once, stop once."""

    def __init__(self, sink: Sink, *, interval_s: float = 0.25, children_are_engine: bool = True) -> None:
        self._sink = sink
        self._children_are_engine = children_are_engine
        self.interval_s = interval_s
        self._steps_done: Callable[[], int] = lambda: 0
        self._session = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._origin = time.perf_counter()
        self.error: Exception | None = None
        self._failed_at_s: float | None = None
        self._tracked = TrackedPids()
        self._ignored = TrackedPids()

    def start(self, *, session: int, steps_done: Callable[[], int]) -> None:
        """Begin sampling (an interval of 0 records phases only); times count from construction."""
        self._session = session
        self._steps_done = steps_done
        if self.interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._sample_forever, name="resource-monitor", daemon=True)
        self._thread.start()

    def track(self, pid: int) -> None:
        """Count process `pid` (and its descendants) as an engine process from the next sample on."""
        self._tracked.add(pid)

    def ignore(self, pid: int) -> None:
        """Leave child `pid` out of the engine processes (the harness's own helper processes, such as the
        periodic-summary worker, are not the engine)."""
        self._ignored.add(pid)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def failure(self) -> str | None:
        """Why sampling ended early, in one line (for the summary and a warning); None if it did not.
        From that moment the run has no resource samples: a summary must say so, not look complete."""
        if self.error is None:
            return None
        return f"resource sampling stopped at {self._failed_at_s:.1f} s: {type(self.error).__name__}: " + (
            " ".join(str(self.error).split()) or "no message"
        )

    def _sample_forever(self) -> None:
        """Sample until stopped, or until anything fails (the sink, psutil, NVML): the error is kept
        for `failure`, never lost with the thread."""
        try:
            self._sample_until_stopped()
        except Exception as error:
            self._failed_at_s = time.perf_counter() - self._origin
            self.error = error

    def _sample_until_stopped(self) -> None:
        tree = ProcessTree(self._tracked, self._ignored, self._children_are_engine)
        nvml, devices, unavailable = nvml_devices()
        self._sink(
            GpuInfoRecord(
                session=self._session, available=nvml is not None, reason=unavailable, devices=len(devices)
            )
        )
        try:
            while not self._stop.wait(self.interval_s):
                self._sink(self._sample(tree, nvml, devices))
        finally:
            if nvml is not None:
                nvml.nvmlShutdown()

    def _sample(self, tree: ProcessTree, nvml: Any, devices: list[Any]) -> ResourceSample:
        sampling_started = time.thread_time()
        memory = psutil.virtual_memory()
        processes = {key: None if value is None else round(value, 3) for key, value in tree.sample().items()}
        gpus = None
        if nvml is not None:
            gpus = [_gpu_sample(nvml, index, handle) for index, handle in enumerate(devices)]
        return ResourceSample(
            session=self._session,
            t_s=round(time.perf_counter() - self._origin, 4),
            steps_done=self._steps_done(),
            **processes,
            system_mem_used_mb=round((memory.total - memory.available) / MB, 1),
            system_mem_percent=memory.percent,
            gpus=gpus,
            # the monitor's own cost: CPU time this thread spent taking the sample
            sample_cpu_ms=round((time.thread_time() - sampling_started) * 1000.0, 4),
        )

    @contextlib.contextmanager
    def phase(self, name: str, **fields: Any) -> Iterator[None]:
        """Time a named phase, with this process's RSS before and after, into the same stream."""
        before = rss_mb()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sink(
                PhaseRecord(
                    session=self._session,
                    name=name,
                    start_s=round(started - self._origin, 4),
                    duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
                    rss_before_mb=round(before, 3),
                    rss_after_mb=round(rss_mb(), 3),
                    **fields,
                )
            )


def _gpu_sample(nvml: Any, index: int, handle: Any) -> GpuSample:
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    utilisation = nvml.nvmlDeviceGetUtilizationRates(handle)
    return GpuSample(
        index=index,
        mem_used_mb=round(memory.used / MB, 1),
        mem_total_mb=round(memory.total / MB, 1),
        util_percent=utilisation.gpu,
    )
