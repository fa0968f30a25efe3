"""Which metrics pages a run reads: each HTTP engine's servers (a managed server, every replica, any
--base-url), the in-process engine's own registry, and any extra endpoint the user names
(`--server-metrics URL`, e.g. a router in front of the replicas)."""

from __future__ import annotations

from flowperf.telemetry.scraper import HttpSource, RegistrySource, Source


def metrics_sources(engine: object, extra_urls: list[str]) -> list[Source]:
    """The engine's own pages, then the extra ones (each once). An engine names its servers by
    `metrics_urls()` (the HTTP engines, once started) or says `metrics_in_process` (the in-process
    engine); any other engine (a test double) has none of its own."""
    sources: list[Source] = []
    urls = getattr(engine, "metrics_urls", None)
    if callable(urls):
        sources += [HttpSource(url, index) for index, url in enumerate(urls())]
    elif getattr(engine, "metrics_in_process", False):
        sources.append(RegistrySource())
    named = {source.name for source in sources}
    for url in extra_urls:
        if url not in named:
            sources.append(HttpSource(url))
            named.add(url)
    return sources
