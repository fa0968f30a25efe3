"""What one round of reading the in-process engine's registry costs the measuring process: the registry
collected straight into a Page (what the scraper thread does) against rendering it to text and parsing
that back (what it did before), side by side on the same registry.

The registry is a synthetic one shaped like vLLM's v1 stat logger (its gauges, counters and histograms with
vLLM's bucket counts, labelled by engine and model) plus prometheus_client's default process/GC
collectors, so it runs without starting an engine.

    PYTHONPATH=src python benchmarks/registry_scrape_cost.py [--rounds 400]
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

from flowperf.telemetry.prom import page_of, parse_page

LABELS = ("engine", "model_name")


def vllm_like_registry() -> None:
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        Gauge(f"vllm:{name}", "x", LABELS).labels("0", "m").set(3)
    for name in ("prompt_tokens", "generation_tokens", "num_preemptions", "prefix_cache_queries",
                 "prefix_cache_hits", "request_success"):  # fmt: skip
        Counter(f"vllm:{name}", "x", LABELS).labels("0", "m").inc(1000)
    buckets = [0.001 * 2**i for i in range(20)]
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "request_queue_time_seconds",
                 "e2e_request_latency_seconds", "request_prefill_time_seconds", "request_decode_time_seconds",
                 "iteration_tokens_total", "request_prompt_tokens"):  # fmt: skip
        histogram = Histogram(f"vllm:{name}", "x", LABELS, buckets=buckets).labels("0", "m")
        for value in range(200):
            histogram.observe(value * 0.003)


def per_round_us(read, rounds: int) -> float:
    started = time.thread_time()
    for _ in range(rounds):
        read()
    return (time.thread_time() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=400)
    rounds = parser.parse_args().rounds
    vllm_like_registry()
    text = per_round_us(lambda: parse_page(generate_latest(REGISTRY).decode(), keep_only_vllm=True), rounds)
    direct = per_round_us(lambda: page_of(REGISTRY.collect(), keep_only_vllm=True), rounds)
    assert page_of(REGISTRY.collect(), True) == parse_page(generate_latest(REGISTRY).decode(), True)
    print(
        f"render + parse: {text:.0f} us CPU per round; collect: {direct:.0f} us ({text / direct:.1f}x less)"
    )
    print(f"at one round per 250 ms, collect costs {direct / 250_000 * 100:.3f}% of one core")


if __name__ == "__main__":
    main()
