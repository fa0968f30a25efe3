"""Reading every engine's metrics page at a fixed period, beside the measured window, without slowing it.

The scraper runs in a thread of its own with plain blocking reads (urllib), never on the measuring event
loop: a slow or hung server delays only the scraper (each read has a timeout), and the loop that stamps
tokens never waits for it. The thread does cost the client process some CPU (parsing a page holds the
GIL): that cost is counted on the thread's own CPU clock (`cpu_ms`) and measured against the client's in
benchmarks/server_metrics_overhead.py, which on a 2-core host shows it too high (4% of the client's CPU,
TTFT p99 up well past the noise: docs/PERFORMANCE.md); a separate process would take it off the GIL.

Each sample is stamped with `perf_counter` when its page was read, the clock of every step time, and
written as an offset from the measured window's start (`origin`, known once the window opens: samples
taken before are held back until then). A failed or timed-out read is written as a gap, counted, and
the next good page's deltas span it; nothing a server does can fail the run.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from flowperf.rundir.records import EngineMetricRecord, EngineSample, ScrapeGap, ServerSeries
from flowperf.telemetry.prom import VLLM_PREFIX, Page, interval, parse_page

IN_PROCESS = "in-process"
READ_LIMIT_BYTES = 16 * 1024 * 1024


class Source:
    """Where one server's metrics page is read from; `read()` returns its text or raises."""

    name: str
    endpoint: int | None

    def read(self, timeout_s: float) -> str:
        raise NotImplementedError


@dataclass
class HttpSource(Source):
    """A Prometheus endpoint over HTTP (`name` is its URL); `endpoint` is the engine's replica it
    belongs to (None for an extra endpoint such as a router)."""

    name: str
    endpoint: int | None = None

    def read(self, timeout_s: float) -> str:
        with urllib.request.urlopen(self.name, timeout=timeout_s) as response:
            return response.read(READ_LIMIT_BYTES).decode("utf-8", "replace")


@dataclass
class RegistrySource(Source):
    """This process's own Prometheus registry, where the in-process vLLM engine's stat logger keeps the
    very series its OpenAI server would serve."""

    name: str = IN_PROCESS
    endpoint: int | None = 0

    def read(self, timeout_s: float) -> str:
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode("utf-8")


@dataclass
class _Server:
    source: Source
    page: Page | None = None
    read_at: float | None = None
    vllm: bool | None = None


@dataclass
class ScrapeStats:
    """What the scraper did: pages read, reads failed, and its thread's CPU time."""

    scrapes: int = 0
    failures: int = 0
    cpu_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


class Scraper:
    """Reads every source every `interval_s` in a thread until `stop()`; records go to `write`."""

    def __init__(
        self,
        sources: list[Source],
        interval_s: float,
        session: int,
        write: Callable[[EngineMetricRecord], None],
        origin: Callable[[], float | None],
    ) -> None:
        self.servers = [_Server(source) for source in sources]
        self.interval_s = interval_s
        self.timeout_s = max(0.05, min(2.0, interval_s * 4))
        self.session = session
        self.write = write
        self.origin = origin
        self.stats = ScrapeStats()
        self.write_error: str | None = None
        self._held: list[tuple[float, EngineMetricRecord]] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowperf-scraper", daemon=True)
        self._started = time.perf_counter()

    def start(self) -> None:
        self._started = time.perf_counter()
        self._thread.start()

    def stop(self) -> ScrapeStats:
        """One last round (the window's tail), then the thread ends; blocking, so call it off the loop."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s * (len(self.servers) + 1) + 5.0)
        self._flush(final=True)
        return self.stats

    def _loop(self) -> None:
        cpu_started = time.thread_time()
        next_round = time.perf_counter()
        while True:
            stopping = self._stopping.is_set()
            for server in self.servers:
                self._scrape(server)
            self._flush(final=False)
            self.stats.cpu_ms = (time.thread_time() - cpu_started) * 1000.0
            if stopping:
                return
            next_round += self.interval_s
            delay = next_round - time.perf_counter()
            if delay < 0:  # fell behind (a slow server): keep the period, skip the missed rounds
                next_round = time.perf_counter()
                delay = 0.0
            self._stopping.wait(delay)

    def _scrape(self, server: _Server) -> None:
        try:
            text = server.source.read(self.timeout_s)
            if server.vllm:
                text = "\n".join(line for line in text.splitlines() if VLLM_PREFIX in line)
            page = parse_page(text, keep_only_vllm=bool(server.vllm))
        except Exception as error:  # anything a server or the network does is a gap, never a failed run
            read_at = time.perf_counter()
            kind = type(error).__name__
            self.stats.failures += 1
            self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
            gap = ScrapeGap(
                session=self.session, server=server.source.name, t_ms=0.0, error=f"{kind}: {error}"
            )
            self._held.append((read_at, gap))
            return
        read_at = time.perf_counter()
        self.stats.scrapes += 1
        if server.vllm is None:
            server.vllm = page.looks_like_vllm
            missing = page.missing_vllm_series()
            info = ServerSeries(
                session=self.session,
                server=server.source.name,
                vllm=server.vllm,
                families=len(page.families),
                missing=missing,
                endpoint=server.source.endpoint,
            )
            self._held.append((read_at, info))
            if server.vllm:
                page = parse_page(text, keep_only_vllm=True)
        change = interval(server.page, page)
        sample = EngineSample(
            session=self.session,
            server=server.source.name,
            t_ms=0.0,
            interval_ms=None if server.read_at is None else round((read_at - server.read_at) * 1000.0, 3),
            gauges=change.gauges,
            counters=change.counters,
            histograms=change.histograms,
            resets=change.resets or None,
        )
        server.page, server.read_at = page, read_at
        self._held.append((read_at, sample))

    def _flush(self, final: bool) -> None:
        """Write what is held once the window's start is known (at the end: the scraper's start)."""
        origin = self.origin()
        if origin is None or origin < self._started - 1.0:
            if not final:
                return
            origin = self._started
        held, self._held = self._held, []
        for read_at, record in held:
            stamped = record
            if not isinstance(record, ServerSeries):
                stamped = record.model_copy(update={"t_ms": round((read_at - origin) * 1000.0, 3)})
            self._write(stamped)

    def _write(self, record: EngineMetricRecord) -> None:
        if self.write_error is not None:
            return
        try:
            self.write(record)
        except Exception as error:  # a full disk: the run's own records say so; stop writing these
            self.write_error = f"{type(error).__name__}: {error}"
