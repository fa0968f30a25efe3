"""The scraper's part in one session of a run: started as the measured window is about to open, stopped
once it has closed (a last round covers its tail), its cost and failures said in timing.log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from flowperf.config import MonitorConfig
from flowperf.rundir.records import EngineMetricRecord
from flowperf.telemetry.scraper import Scraper, ScrapeStats
from flowperf.telemetry.sources import metrics_sources


def start_scraper(
    settings: MonitorConfig,
    engine: object,
    session: int,
    write: Callable[[EngineMetricRecord], None],
    origin: Callable[[], float | None],
) -> Scraper | None:
    """A running scraper of `engine`'s servers and the extra URLs; None when turned off or none exist."""
    if not settings.server_metrics:
        return None
    sources = metrics_sources(engine, list(settings.server_metrics_urls))
    if not sources:
        return None
    scraper = Scraper(sources, settings.server_metrics_interval_s, session, write, origin)
    scraper.start()
    return scraper


async def stop_scraper(scraper: Scraper | None) -> ScrapeStats | None:
    """Stop it without blocking the event loop (its last round may wait on a slow server)."""
    if scraper is None:
        return None
    return await asyncio.to_thread(scraper.stop)
