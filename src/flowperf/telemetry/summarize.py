"""Each server's engine_metrics records summarised (summary_schema.ServerState), beside the client's steps.

vLLM's series are read by name (prom.VLLM_EXPECTED); a server that lacks one leaves that figure empty.
Histogram percentiles are in telemetry/histogram.py; the client's side of a comparison is the LLM steps
that server answered (by `endpoint`, all of them when the engine has one server).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from flowperf.rundir.records import EngineMetricRecord, EngineSample, ScrapeGap, ServerSeries
from flowperf.rundir.summary_schema import HistogramEstimate, ServerState
from flowperf.telemetry.histogram import bucket_width, merge, quantile

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
PREEMPTIONS = "vllm:num_preemptions"
PREFIX_QUERIES = "vllm:prefix_cache_queries"
PREFIX_HITS = "vllm:prefix_cache_hits"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
TTFT = "vllm:time_to_first_token_seconds"
QUEUE = "vllm:request_queue_time_seconds"


def gauge_series(samples: list[EngineSample], name: str) -> np.ndarray:
    return np.array([sample.gauges[name] for sample in samples if name in sample.gauges], dtype=float)


def counter_total(samples: list[EngineSample], name: str) -> float | None:
    values = [sample.counters[name] for sample in samples if name in sample.counters]
    return float(sum(values)) if values else None


def estimate(samples: list[EngineSample], name: str) -> HistogramEstimate:
    """Percentiles (ms) of histogram `name` over the window's intervals."""
    merged = merge(sample.histograms[name] for sample in samples if name in sample.histograms)
    if merged is None:
        return HistogramEstimate()
    p50, p90, p99 = (quantile(merged, q) for q in (0.5, 0.9, 0.99))

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000.0

    def width(value: float | None) -> float | None:
        found = None if value is None else bucket_width(merged, value)
        return ms(found)

    return HistogramEstimate(
        count=int(merged.count),
        mean=ms(merged.sum / merged.count),
        p50=ms(p50),
        p90=ms(p90),
        p99=ms(p99),
        p50_bucket_ms=width(p50),
        p99_bucket_ms=width(p99),
    )


def saturated_ms(samples: list[EngineSample]) -> tuple[float | None, float | None]:
    """Time with requests waiting (intervals closing with waiting > 0), and its share of sampled time."""
    timed = [sample for sample in samples if sample.interval_ms is not None and WAITING in sample.gauges]
    if not timed:
        return None, None
    total = sum(sample.interval_ms or 0.0 for sample in timed)
    busy = sum(sample.interval_ms or 0.0 for sample in timed if sample.gauges[WAITING] > 0)
    return busy, (busy / total if total > 0 else None)


def _steps_of(steps: pd.DataFrame, endpoint: int | None, servers: int) -> pd.DataFrame:
    """The client's steps this server answered: all of them with one server, else by `endpoint`."""
    if steps.empty or endpoint is None:
        return steps.iloc[0:0] if not steps.empty else steps
    if servers <= 1 or "endpoint" not in steps:
        return steps
    return steps[steps["endpoint"].fillna(0) == endpoint]


def _client_minus_server(steps: pd.DataFrame, server: HistogramEstimate) -> tuple[float | None, float | None]:
    if steps.empty or server.count == 0 or "ttft_ms" not in steps:
        return None, None
    ttft = steps["ttft_ms"].dropna()
    if ttft.empty:
        return None, None
    p50, p99 = np.percentile(ttft, [50, 99])
    return (
        None if server.p50 is None else float(p50) - server.p50,
        None if server.p99 is None else float(p99) - server.p99,
    )


def _gauges(samples: list[EngineSample]) -> dict[str, float | None]:
    running, waiting, usage = (gauge_series(samples, name) for name in (RUNNING, WAITING, KV_USAGE))

    def stat(values: np.ndarray, how: str) -> float | None:
        return None if values.size == 0 else float(values.mean() if how == "mean" else values.max())

    return {
        "running_mean": stat(running, "mean"),
        "running_max": stat(running, "max"),
        "waiting_mean": stat(waiting, "mean"),
        "waiting_max": stat(waiting, "max"),
        "kv_usage_max": stat(usage, "max"),
    }


def server_state(
    name: str, records: list[EngineMetricRecord], steps: pd.DataFrame, servers: int
) -> ServerState:
    samples = [record for record in records if isinstance(record, EngineSample)]
    info = next((record for record in records if isinstance(record, ServerSeries)), None)
    endpoint = None if info is None else info.endpoint
    queries, hits = counter_total(samples, PREFIX_QUERIES), counter_total(samples, PREFIX_HITS)
    busy, share = saturated_ms(samples)
    ttft = estimate(samples, TTFT)
    answered = _steps_of(steps, endpoint, servers)
    minus_p50, minus_p99 = _client_minus_server(answered, ttft)
    bursts = (
        int(answered["burst_delivered"].fillna(False).astype(bool).sum())
        if "burst_delivered" in answered
        else 0
    )
    return ServerState(
        server=name,
        endpoint=endpoint,
        vllm=None if info is None else info.vllm,
        samples=len(samples),
        scrape_failures=sum(isinstance(record, ScrapeGap) for record in records),
        missing_series=[] if info is None else info.missing,
        saturated_ms=busy,
        saturated_share=share,
        preemptions=counter_total(samples, PREEMPTIONS),
        prefix_cache_hit_ratio=hits / queries if queries and hits is not None else None,
        prompt_tokens=counter_total(samples, PROMPT_TOKENS),
        generation_tokens=counter_total(samples, GENERATION_TOKENS),
        ttft_ms=ttft,
        queue_ms=estimate(samples, QUEUE),
        client_minus_server_ttft_p50_ms=minus_p50,
        client_minus_server_ttft_p99_ms=minus_p99,
        burst_steps=bursts,
        **_gauges(samples),
    )


def engine_state(records: list[EngineMetricRecord], ok_llm_steps: pd.DataFrame) -> list[ServerState]:
    """One ServerState per server that has records, in the order they first appear."""
    by_server: dict[str, list[EngineMetricRecord]] = defaultdict(list)
    for record in records:
        by_server[record.server].append(record)
    engine_servers = {
        record.server
        for record in records
        if isinstance(record, ServerSeries) and record.endpoint is not None
    }
    return [
        server_state(name, server_records, ok_llm_steps, len(engine_servers))
        for name, server_records in by_server.items()
    ]
