"""The scraper's part in one session of a run: spawned before the warm-up (its process's start-up is paid
outside the measured window), started as the window is about to open, stopped once it has closed (a last
round covers its tail), its cost and failures said in timing.log.

HTTP servers are read by a process of their own (`process.ProcessScraper`); the in-process engine's
registry, which only this process can read, by a thread here that collects it without text (`Scraper`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from flowperf.config import MonitorConfig
from flowperf.rundir.records import EngineMetricRecord
from flowperf.telemetry.process import READY_TIMEOUT_S, ProcessScraper
from flowperf.telemetry.scraper import HttpSource, Scraper, ScrapeStats
from flowperf.telemetry.sources import metrics_sources


class EngineScraper:
    """Every metrics source of a session: HTTP ones in the scraper process, the registry in a thread."""

    def __init__(self, remote: ProcessScraper | None, local: Scraper | None) -> None:
        self.remote, self.local = remote, local

    async def ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait (off the loop) until the scraper process has imported what it needs."""
        if self.remote is not None:
            await asyncio.to_thread(self.remote.ready, timeout_s)

    def start(self) -> None:
        for part in (self.remote, self.local):
            if part is not None:
                part.start()

    def stop(self) -> ScrapeStats:
        stats = ScrapeStats()
        for part in (self.remote, self.local):
            if part is not None:
                stats.add(part.stop())
        return stats

    @property
    def write_error(self) -> str | None:
        errors = [part.write_error for part in (self.remote, self.local) if part is not None]
        return next((error for error in errors if error is not None), None)


def start_scraper(
    settings: MonitorConfig,
    engine: object,
    session: int,
    path: Path,
    write: Callable[[EngineMetricRecord], None],
    origin: Callable[[], float | None],
) -> EngineScraper | None:
    """A scraper of `engine`'s servers and the extra URLs, spawned but not yet reading (`start()`);
    None when turned off or there is nothing to read. HTTP records are appended to `path` by the
    scraper process, the registry's through `write`."""
    if not settings.server_metrics:
        return None
    sources = metrics_sources(engine, list(settings.server_metrics_urls))
    if not sources:
        return None
    interval_s = settings.server_metrics_interval_s
    http = [source for source in sources if isinstance(source, HttpSource)]
    local = [source for source in sources if not isinstance(source, HttpSource)]
    return EngineScraper(
        ProcessScraper(http, interval_s, session, path, origin) if http else None,
        Scraper(local, interval_s, session, write, origin) if local else None,
    )


async def stop_scraper(scraper: EngineScraper | None) -> ScrapeStats | None:
    """Stop it without blocking the event loop (its last round may wait on a slow server)."""
    if scraper is None:
        return None
    return await asyncio.to_thread(scraper.stop)
