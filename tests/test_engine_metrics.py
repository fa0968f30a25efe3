"""The engines' own metrics (telemetry/): read from the mock server's /metrics page, whose values follow
from what it actually sent, and checked against that and against the client's own records."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.rundir.records import EngineSample, HistogramDelta, ScrapeGap, ServerSeries
from flowperf.rundir.store import ENGINE_METRICS, RunStore
from flowperf.telemetry.histogram import bucket_width, quantile
from flowperf.telemetry.prom import VLLM_EXPECTED, Histogram, Page, interval, page_of, parse_page
from flowperf.telemetry.scraper import HttpSource, Scraper
from helpers import run_in_process


def post(url: str, payload: dict | None = None) -> None:
    data = json.dumps(payload or {}).encode()
    urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=5).read()


def complete(base: str, max_tokens: int) -> None:
    body = {"model": "mock", "prompt": "hi", "max_tokens": max_tokens, "stream": True}
    request = urllib.request.Request(
        base + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=10).read()


def scrape_while(base: str, action) -> list:
    """Records of a scraper reading `base`/metrics every 20 ms while `action()` runs."""
    records: list = []
    origin = time.perf_counter()
    scraper = Scraper([HttpSource(base + "/metrics", 0)], 0.02, 0, records.append, lambda: origin)
    scraper.start()
    time.sleep(0.1)
    action()
    time.sleep(0.1)
    scraper.stop()
    return records


def test_every_vllm_series_is_read_and_counters_match_what_the_server_sent() -> None:
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=2, lifetime_s=60)) as server:
        base = f"http://127.0.0.1:{server.port}"
        records = scrape_while(base, lambda: [complete(base, 7) for _ in range(3)])
        sent = sum(len(log.token_sent) for log in server.logs)
    (info,) = [record for record in records if isinstance(record, ServerSeries)]
    assert info.vllm and info.missing == [] and info.endpoint == 0
    samples = [record for record in records if isinstance(record, EngineSample)]
    assert samples[0].interval_ms is None and samples[0].counters == {}  # the baseline
    seen = set().union(*(set(s.gauges) | set(s.counters) | set(s.histograms) for s in samples))
    assert set(VLLM_EXPECTED) <= seen
    assert sent == 21 and sum(s.counters.get("vllm:generation_tokens", 0) for s in samples) == sent
    name = "vllm:time_to_first_token_seconds"
    assert sum(s.histograms[name].count for s in samples if name in s.histograms) == 3
    offsets = [s.t_ms for s in samples]
    assert offsets == sorted(offsets) and offsets[0] >= 0


def test_a_counter_reset_gives_the_new_value_as_the_delta() -> None:
    before = Page(counters={"c": 100.0}, histograms={"h": Histogram((1.0,), (5.0,), 5.0, 2.0)})
    after = Page(counters={"c": 7.0}, histograms={"h": Histogram((1.0,), (1.0,), 2.0, 3.0)})
    change = interval(before, after)
    assert change.counters == {"c": 7.0} and sorted(change.resets) == ["c", "h"]
    assert change.histograms["h"].count == 2.0 and change.histograms["h"].counts == [1.0]
    steady = interval(Page(counters={"c": 3.0}), Page(counters={"c": 10.0}))
    assert steady.counters == {"c": 7.0} and steady.resets == []
    with serve_in_thread(MockConfig(ttft_ms=1, itl_ms=1, lifetime_s=60)) as server:
        base = f"http://127.0.0.1:{server.port}"

        def load_reset_load() -> None:
            complete(base, 5)
            time.sleep(0.08)
            post(base + "/mock/metrics/reset")
            complete(base, 3)
            time.sleep(0.08)

        records = scrape_while(base, load_reset_load)
    samples = [record for record in records if isinstance(record, EngineSample)]
    reset = [s for s in samples if s.resets and "vllm:generation_tokens" in s.resets]
    assert len(reset) == 1 and reset[0].counters["vllm:generation_tokens"] == 3.0
    assert sum(s.counters.get("vllm:generation_tokens", 0) for s in samples) == 8.0


def test_a_failing_scrape_is_a_gap_and_the_run_goes_on(tmp_path: Path) -> None:
    # TTFT 150 ms: the baseline page (the third read, ~100 ms in) comes before any token is counted
    with serve_in_thread(MockConfig(ttft_ms=150, itl_ms=5, lifetime_s=120)) as server:
        base = f"http://127.0.0.1:{server.port}"
        post(base + "/mock/metrics/fail", {"count": 2})
        result = run_in_process(
            tmp_path, "gaps", {"kind": "openai", "base_url": base}, num_flows=4, concurrency=2, max_tokens=16,
            monitor={"sample_interval_s": 0, "server_metrics_interval_s": 0.05},
        )  # fmt: skip
    assert result.exit_code == 0
    records = RunStore(result.run_dir).read_engine_metrics()
    gaps = [record for record in records if isinstance(record, ScrapeGap)]
    assert len(gaps) == 2 and all("HTTPError" in gap.error for gap in gaps)
    (state,) = result.summary.engine_state
    assert state.scrape_failures == 2 and state.samples > 2
    steps = RunStore(result.run_dir).read_steps()
    assert state.generation_tokens == sum(step.output_tokens or 0 for step in steps)  # the client's count
    window_end = max(step.end_offset_ms or 0 for step in steps)
    samples = [record for record in records if isinstance(record, EngineSample)]
    first = min(record.t_ms for record in [*gaps, *samples])  # the first read, failed or not
    assert -50 < first < 100 and window_end <= samples[-1].t_ms < window_end + 500
    assert state.ttft_ms.count == len(steps)


def test_no_server_metrics_reads_nothing(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(ttft_ms=1, itl_ms=1, lifetime_s=60)) as server:
        result = run_in_process(
            tmp_path, "off", {"kind": "openai", "base_url": f"http://127.0.0.1:{server.port}"},
            num_flows=1, max_tokens=4, monitor={"sample_interval_s": 0, "server_metrics": False},
        )  # fmt: skip
        scrapes = server.metrics.scrapes
    assert scrapes == 0 and not (result.run_dir / ENGINE_METRICS).exists()
    assert result.summary.engine_state == []


def test_a_server_that_is_not_vllm_keeps_its_series_and_says_what_is_missing() -> None:
    with serve_in_thread(MockConfig(ttft_ms=1, itl_ms=1, vllm=False, lifetime_s=60)) as server:
        base = f"http://127.0.0.1:{server.port}"
        records = scrape_while(base, lambda: complete(base, 2))
    (info,) = [record for record in records if isinstance(record, ServerSeries)]
    assert not info.vllm and info.missing == list(VLLM_EXPECTED)
    samples = [record for record in records if isinstance(record, EngineSample)]
    assert "mock:requests_running" in samples[-1].gauges
    assert sum(s.counters.get("mock:requests", 0) for s in samples) == 1


def test_an_unreachable_endpoint_is_recorded_as_gaps() -> None:
    records: list = []
    scraper = Scraper([HttpSource("http://127.0.0.1:9/metrics")], 0.02, 0, records.append, time.perf_counter)
    scraper.start()
    time.sleep(0.1)
    stats = scraper.stop()
    assert stats.failures >= 2 and stats.scrapes == 0
    assert len(records) == stats.failures and all(isinstance(record, ScrapeGap) for record in records)


def test_parsing_takes_prometheus_text_as_the_library_writes_it() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
    from prometheus_client import Histogram as PromHistogram

    registry = CollectorRegistry()
    Gauge("vllm:num_requests_running", "x", ["engine"], registry=registry).labels("0").set(2)
    gauge = Gauge("vllm:num_requests_waiting", "x", ["engine"], registry=registry)
    gauge.labels("0").set(1)
    gauge.labels("1").set(4)
    Counter("vllm:prompt_tokens", "x", registry=registry).inc(9)
    PromHistogram("vllm:time_to_first_token_seconds", "x", buckets=(0.1, 1.0), registry=registry).observe(0.5)
    page = parse_page(generate_latest(registry).decode())
    assert page.gauges == {"vllm:num_requests_running": 2.0, "vllm:num_requests_waiting": 5.0}
    assert page.counters == {"vllm:prompt_tokens": 9.0}
    assert page.histograms["vllm:time_to_first_token_seconds"] == Histogram((0.1, 1.0), (0.0, 1.0), 1.0, 0.5)


def test_a_gauge_of_a_server_that_is_not_vllm_keeps_each_label_set() -> None:
    """Summing gauges over labels is only right for vLLM's per-engine ones; elsewhere (temperatures per
    GPU, sizes per pool) each label set stays its own series. Counters still add up."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    registry = CollectorRegistry()
    temperature = Gauge("gpu_temperature", "x", ["gpu"], registry=registry)
    temperature.labels("0").set(60)
    temperature.labels("1").set(70)
    Gauge("queue_depth", "x", registry=registry).set(3)
    requests = Counter("router_requests", "x", ["replica"], registry=registry)
    requests.labels("a").inc(2)
    requests.labels("b").inc(5)
    page = parse_page(generate_latest(registry).decode())
    assert page.gauges == {
        'gpu_temperature{gpu="0"}': 60.0,
        'gpu_temperature{gpu="1"}': 70.0,
        "queue_depth": 3.0,
    }
    assert page.counters == {"router_requests": 7.0}


@pytest.mark.parametrize(("q", "expected"), [(0.25, 1.0), (0.5, 2.0), (0.9, 3.6), (0.05, 0.2)])
def test_histogram_percentiles_interpolate_linearly_within_a_bucket(q: float, expected: float) -> None:
    """Ten observations spread evenly in each of four unit buckets: a uniform distribution on [0, 4],
    whose q-quantile is 4q exactly."""
    uniform = HistogramDelta(le=[1.0, 2.0, 3.0, 4.0], counts=[10.0, 20.0, 30.0, 40.0], count=40.0, sum=80.0)
    assert quantile(uniform, q) == pytest.approx(expected)
    assert bucket_width(uniform, expected) == 1.0


def test_a_percentile_beyond_the_last_bound_is_that_bound() -> None:
    tail = HistogramDelta(le=[1.0, 2.0], counts=[1.0, 2.0], count=10.0, sum=50.0)
    assert quantile(tail, 0.99) == 2.0
    assert quantile(HistogramDelta(le=[1.0], counts=[0.0], count=0.0, sum=0.0), 0.5) is None


@pytest.mark.parametrize(("burst", "expected"), [(True, True), (False, False)])
def test_burst_delivered_streams_are_flagged_and_steady_ones_not(
    tmp_path: Path, burst: bool, expected: bool
) -> None:
    with serve_in_thread(MockConfig(ttft_ms=5, itl_ms=3, burst=burst, lifetime_s=60)) as server:
        result = run_in_process(
            tmp_path, "burst", {"kind": "openai", "base_url": f"http://127.0.0.1:{server.port}"},
            num_flows=2, max_tokens=16, monitor={"sample_interval_s": 0, "server_metrics_interval_s": 0.05},
        )  # fmt: skip
    steps = RunStore(result.run_dir).read_steps()
    assert steps and all(step.burst_delivered is expected for step in steps)
    if burst:
        assert all(step.token_reads == 2 and step.max_read_share == pytest.approx(15 / 16) for step in steps)
    else:
        # mostly one token per read (a loaded host sometimes reads two or three together: seen 11 of 16)
        assert all(8 <= (step.token_reads or 0) <= 16 for step in steps)
    (state,) = result.summary.engine_state
    assert state.burst_steps == (len(steps) if burst else 0)


def test_delivery_counts_reads_and_flags_a_late_majority() -> None:
    from flowperf.engines.streaming import delivery

    assert delivery([1, 15])["burst_delivered"] is True
    assert delivery([9, 7])["burst_delivered"] is False  # most came first: not held back
    assert delivery([1] * 16) == {"token_reads": 16, "max_read_share": 0.0625, "burst_delivered": False}
    assert delivery([]) == {}


INFO_PAGE = """# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",enable_prefix_caching="True",num_gpu_blocks="512"} 1.0
# TYPE vllm:engine_sleep_state gauge
vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="awake"} 1.0
vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="weights_offloaded"} 0.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
# TYPE python_info gauge
python_info{implementation="CPython",major="3"} 1.0
# TYPE queue_depth gauge
queue_depth 4.0
"""


def test_info_style_gauges_are_not_kept() -> None:
    """vLLM's configuration and sleep-state gauges (and any *_info) describe the server, they do not
    measure load: dropped from every page, parsed from text or collected from a registry."""
    from prometheus_client import CollectorRegistry, Gauge

    assert parse_page(INFO_PAGE).gauges == {"vllm:num_requests_running": 2.0, "queue_depth": 4.0}
    assert parse_page(INFO_PAGE, keep_only_vllm=True).gauges == {"vllm:num_requests_running": 2.0}
    registry = CollectorRegistry()
    Gauge("vllm:cache_config_info", "x", ["block_size"], registry=registry).labels("16").set(1)
    Gauge("vllm:engine_sleep_state", "x", ["sleep_state"], registry=registry).labels("awake").set(1)
    Gauge("vllm:num_requests_waiting", "x", registry=registry).set(3)
    assert page_of(registry.collect()).gauges == {"vllm:num_requests_waiting": 3.0}


class _PageHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive announced; `closes` makes it drop each connection after answering, without
    saying so, as a server whose keep-alive timeout passed between two rounds does."""

    protocol_version = "HTTP/1.1"
    closes = False
    connections: ClassVar[set] = set()

    def do_GET(self) -> None:
        type(self).connections.add(self.client_address)
        body = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.closes

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("closes", [False, True])
def test_the_connection_is_kept_between_rounds_and_reopened_when_the_server_dropped_it(closes: bool) -> None:
    handler = type("Handler", (_PageHandler,), {"closes": closes, "connections": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    source = HttpSource(f"http://127.0.0.1:{server.server_address[1]}/metrics")
    try:
        pages = []
        for _ in range(3):
            pages.append(source.read(2.0))
            time.sleep(0.05)  # the server side closes meanwhile
    finally:
        source.close()
        server.shutdown()
        server.server_close()
    assert all("vllm:num_requests_running 3" in page for page in pages)
    assert len(handler.connections) == (3 if closes else 1)
