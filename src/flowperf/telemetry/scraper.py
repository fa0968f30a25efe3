"""Reading every engine's metrics page at a fixed period, beside the measured window, without slowing it.

The reading itself (`Rounds`: every source once per round, each page turned into an interval record) runs
either in a process of its own (`telemetry/process.py`, for HTTP servers: parsing a page holds a GIL, and
in the measuring process that GIL is the one the event loop stamping tokens wants) or in a thread here
(`Scraper`, for the in-process engine's own registry, which no other process can read: it is collected
directly, with no text written or parsed, so each round costs the measuring process little). Each read
has a timeout, so a slow or hung server delays only the scraper.

Each sample is stamped with `perf_counter` when its page was read, the clock of every step time (on Linux
CLOCK_MONOTONIC, one clock for every process on the host), and written as an offset from the measured
window's start (`origin`, known once the window opens: samples taken before are held back until then).
A failed or timed-out read is written as a gap, counted, and the next good page's deltas span it; nothing
a server does can fail the run.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from flowperf.rundir.records import EngineMetricRecord, EngineSample, ScrapeGap, ServerSeries
from flowperf.telemetry.prom import Page, PageReader, interval, page_of

IN_PROCESS = "in-process"
READ_LIMIT_BYTES = 16 * 1024 * 1024


class Source:
    """Where one server's metrics are read from; `page()` returns them as a Page or raises."""

    name: str
    endpoint: int | None

    def page(self, timeout_s: float, vllm: bool | None, reader: PageReader) -> Page:
        raise NotImplementedError


@dataclass
class HttpSource(Source):
    """A Prometheus endpoint over HTTP (`name` is its URL); `endpoint` is the engine's replica it
    belongs to (None for an extra endpoint such as a router).

    The connection is kept open between rounds: a new one per read (urllib's way) cost about half of a
    round's CPU. A kept connection the server has closed meanwhile (a keep-alive timeout) is reopened
    once at once; errors read as urllib's (HTTPError, URLError), as the gaps record them."""

    name: str
    endpoint: int | None = None
    _connection: http.client.HTTPConnection | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_connection": None}  # sent to the scraper process before any read

    def page(self, timeout_s: float, vllm: bool | None, reader: PageReader) -> Page:
        """The page now, read by this server's `reader`; once the source is known to be vLLM (`vllm`),
        only the lines of the series flowperf reads are parsed."""
        return reader.read(self.read(timeout_s), keep_only_vllm=bool(vllm))

    def read(self, timeout_s: float) -> str:
        try:
            return self._get_reconnecting(timeout_s)
        except urllib.error.HTTPError:  # an answer, kept as it is (it is an OSError too)
            raise
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise urllib.error.URLError(error) from error

    def _get_reconnecting(self, timeout_s: float) -> str:
        """A read over the kept connection, once more over a new one if the server had closed it."""
        if self._connection is not None:
            try:
                return self._get(timeout_s)
            except (ConnectionResetError, BrokenPipeError):  # http.client's RemoteDisconnected included
                self.close()
        return self._get(timeout_s)

    def _get(self, timeout_s: float) -> str:
        url = urllib.parse.urlsplit(self.name)
        if self._connection is None:
            kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(url.netloc, timeout=timeout_s)
        self._connection.timeout = timeout_s
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout_s)
        self._connection.request("GET", url.path + (f"?{url.query}" if url.query else "") or "/")
        response = self._connection.getresponse()
        body = response.read(READ_LIMIT_BYTES)
        if response.will_close or len(body) >= READ_LIMIT_BYTES:
            self.close()
        if response.status != 200:
            raise urllib.error.HTTPError(self.name, response.status, response.reason, response.headers, None)
        return body.decode("utf-8", "replace")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class RegistrySource(Source):
    """This process's own Prometheus registry, where the in-process vLLM engine's stat logger keeps the
    very series its OpenAI server would serve."""

    name: str = IN_PROCESS
    endpoint: int | None = 0

    def page(self, timeout_s: float, vllm: bool | None, reader: PageReader) -> Page:
        """The registry's families as collected, never rendered to text and parsed back."""
        from prometheus_client import REGISTRY

        return page_of(REGISTRY.collect(), keep_only_vllm=bool(vllm))


@dataclass
class _Server:
    source: Source
    page: Page | None = None
    read_at: float | None = None
    vllm: bool | None = None
    reader: PageReader = field(default_factory=PageReader)


@dataclass
class ScrapeStats:
    """What the scraper did: pages read, reads failed, the CPU time it took from the measuring process
    (`cpu_ms`: the in-process thread's) and the CPU time of its own process (`process_cpu_ms`: all of
    it, start-up included; `window_cpu_ms`: from its first round, at the window's opening, to its last)."""

    scrapes: int = 0
    failures: int = 0
    cpu_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    process_cpu_ms: float = 0.0
    window_cpu_ms: float = 0.0

    def add(self, other: ScrapeStats) -> None:
        self.scrapes += other.scrapes
        self.failures += other.failures
        self.cpu_ms += other.cpu_ms
        self.process_cpu_ms += other.process_cpu_ms
        self.window_cpu_ms += other.window_cpu_ms
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count


class Rounds:
    """One round reads every source once; records are held until the window's start is known."""

    def __init__(self, sources: list[Source], interval_s: float, session: int) -> None:
        self.servers = [_Server(source) for source in sources]
        self.timeout_s = max(0.05, min(2.0, interval_s * 4))
        self.session = session
        self.stats = ScrapeStats()
        self.started = time.perf_counter()
        self._held: list[tuple[float, EngineMetricRecord]] = []

    def scrape_all(self) -> None:
        for server in self.servers:
            self._scrape(server)

    def _scrape(self, server: _Server) -> None:
        try:
            page = server.source.page(self.timeout_s, server.vllm, server.reader)
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
            page = self._first_page(server, page, read_at)
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

    def _first_page(self, server: _Server, page: Page, read_at: float) -> Page:
        """Say what the server exposes (vLLM or not, which expected series are missing); a vLLM server's
        pages are kept to the series flowperf reads (`VLLM_EXPECTED`) from now on."""
        server.vllm = page.looks_like_vllm
        info = ServerSeries(
            session=self.session,
            server=server.source.name,
            vllm=server.vllm,
            families=len(page.families),
            missing=page.missing_vllm_series(),
            endpoint=server.source.endpoint,
        )
        self._held.append((read_at, info))
        return page.only_vllm() if server.vllm else page

    def flush(self, origin: float | None, final: bool) -> list[EngineMetricRecord]:
        """The held records stamped as window offsets, once the window's start is known (an origin from
        before this scraper started belongs to an earlier window); at the end, from the scraper's start."""
        if origin is None or origin < self.started - 1.0:
            if not final:
                return []
            origin = self.started
        held, self._held = self._held, []
        return [
            record
            if isinstance(record, ServerSeries)
            else record.model_copy(update={"t_ms": round((read_at - origin) * 1000.0, 3)})
            for read_at, record in held
        ]


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
        self.rounds = Rounds(sources, interval_s, session)
        self.interval_s = interval_s
        self.write = write
        self.origin = origin
        self.stats = self.rounds.stats
        self.write_error: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowperf-scraper", daemon=True)

    def start(self) -> None:
        self.rounds.started = time.perf_counter()
        self._thread.start()

    def stop(self) -> ScrapeStats:
        """One last round (the window's tail), then the thread ends; blocking, so call it off the loop."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(self.rounds.timeout_s * (len(self.rounds.servers) + 1) + 5.0)
        self._flush(final=True)
        return self.stats

    def _loop(self) -> None:
        cpu_started = time.thread_time()
        next_round = time.perf_counter()
        while True:
            stopping = self._stopping.is_set()
            self.rounds.scrape_all()
            self._flush(final=False)
            self.stats.cpu_ms = (time.thread_time() - cpu_started) * 1000.0
            if stopping:
                return
            next_round = next_round_at(next_round, self.interval_s)
            self._stopping.wait(next_round - time.perf_counter())

    def _flush(self, final: bool) -> None:
        for record in self.rounds.flush(self.origin(), final):
            self._write(record)

    def _write(self, record: EngineMetricRecord) -> None:
        if self.write_error is not None:
            return
        try:
            self.write(record)
        except Exception as error:  # a full disk: the run's own records say so; stop writing these
            self.write_error = f"{type(error).__name__}: {error}"


def next_round_at(previous: float, interval_s: float) -> float:
    """The next round's time: one period on; one that fell behind (a slow server) skips the missed
    rounds and starts now."""
    return max(previous + interval_s, time.perf_counter())
