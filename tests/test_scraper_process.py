"""The HTTP metrics scraper in a process of its own (telemetry/process.py): its clock is the run's, it
writes what it read as window offsets, records a failing read as a gap, stops cleanly when told, and dies
with the process that started it. The in-process engine's registry is collected without text."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowperf.diagnostics.mockserver import MockConfig, serve_in_thread
from flowperf.rundir.records import ENGINE_METRIC_RECORD, EngineSample, ScrapeGap, ServerSeries
from flowperf.rundir.store import parse_records
from flowperf.telemetry import prom
from flowperf.telemetry.process import ProcessScraper
from flowperf.telemetry.prom import PageReader, parse_page
from flowperf.telemetry.scraper import HttpSource, RegistrySource

ROOT = Path(__file__).resolve().parents[1]


def read_records(path: Path) -> list:
    return parse_records(path.read_text().splitlines(keepends=True), ENGINE_METRIC_RECORD.validate_json)


def child_clock(queue: multiprocessing.Queue) -> None:
    queue.put(time.perf_counter())


def test_a_spawned_process_reads_the_same_perf_counter() -> None:
    """The child stamps samples with perf_counter and the parent subtracts its window start from them:
    one clock only if perf_counter is CLOCK_MONOTONIC in both (Linux), not a per-process origin."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    before = time.perf_counter()
    process = context.Process(target=child_clock, args=(queue,))
    process.start()
    theirs = queue.get(timeout=60)
    after = time.perf_counter()
    process.join(60)
    assert before < theirs < after
    assert time.get_clock_info("perf_counter").implementation == "clock_gettime(CLOCK_MONOTONIC)"


def run_scraper(sources: list, path: Path, seconds: float) -> ProcessScraper:
    """Scrape for `seconds`, the window opening 50 ms after the start (known to the parent only)."""
    window: list[float | None] = [None]
    scraper = ProcessScraper(sources, 0.02, 3, path, lambda: window[0])
    assert scraper.ready(60)
    scraper.start()
    window[0] = time.perf_counter() + 0.05
    time.sleep(seconds)
    scraper.stop()
    return scraper


def test_it_writes_window_offsets_and_stops_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "engine_metrics.jsonl"
    with serve_in_thread(MockConfig(ttft_ms=1, itl_ms=1, lifetime_s=60)) as server:
        scraper = run_scraper([HttpSource(f"http://127.0.0.1:{server.port}/metrics", 0)], path, 0.4)
        scrapes = server.metrics.scrapes
    assert scraper.process.returncode == 0 and scraper.write_error is None  # ended by itself, not killed
    records = read_records(path)
    samples = [record for record in records if isinstance(record, EngineSample)]
    assert [type(r) for r in records if isinstance(r, ServerSeries)] == [ServerSeries]
    assert scraper.stats.scrapes == len(samples) == scrapes >= 5 and scraper.stats.failures == 0
    assert all(record.session == 3 for record in records)
    # stamped from the parent's origin: the first read at ~-50 ms, the last one at the stop (~350 ms)
    assert -80 < samples[0].t_ms < 0 < samples[-1].t_ms < 1000
    assert scraper.stats.process_cpu_ms > 0


def test_a_failing_scrape_is_a_gap_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "engine_metrics.jsonl"
    scraper = run_scraper([HttpSource("http://127.0.0.1:9/metrics")], path, 0.2)
    records = read_records(path)
    assert scraper.process.returncode == 0
    assert scraper.stats.failures >= 3 and scraper.stats.scrapes == 0
    assert len(records) == scraper.stats.failures and all(isinstance(r, ScrapeGap) for r in records)
    assert all("URLError" in record.error for record in records)


PARENT = """
import sys, time
from flowperf.telemetry.process import ProcessScraper
from flowperf.telemetry.scraper import HttpSource
scraper = ProcessScraper([HttpSource(sys.argv[2])], 0.5, 0, sys.argv[1], time.perf_counter)
assert scraper.ready(60)
scraper.start()
print(scraper.process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_scraper_process_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL the run while the scraper waits on a server that never answers (a 2 s read timeout): the
    kernel kills it at once (PR_SET_PDEATHSIG), not when its read times out and it finds the pipe closed."""
    import socket

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # connections are accepted by the kernel and never answered
    url = f"http://127.0.0.1:{hung.getsockname()[1]}/metrics"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "m.jsonl"), url],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.3)  # inside its first read
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        killed = time.monotonic()
        while alive(child) and time.monotonic() < killed + 10:
            time.sleep(0.02)
        assert time.monotonic() - killed < 1.0 and not alive(child)
    finally:
        parent.kill()
        parent.wait()
        hung.close()


def test_the_in_process_registry_is_collected_without_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same page as rendering and parsing would give, with no text written (generate_latest
    refused)."""
    import prometheus_client
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    names = ("vllm:test_running", "vllm:test_tokens", "vllm:test_ttft_seconds")
    monkeypatch.setattr(prom, "VLLM_EXPECTED", names)  # vLLM's own names may be taken by an engine here
    collectors = [
        Gauge(names[0], "x", ["engine"]),
        Counter(names[1], "x", ["engine"]),
        Histogram(names[2], "x", buckets=(0.1, 1.0)),
    ]
    try:
        collectors[0].labels("0").set(3)
        collectors[0].labels("1").set(4)
        collectors[1].labels("0").inc(9)
        collectors[2].observe(0.5)
        expected = parse_page(prometheus_client.generate_latest(REGISTRY).decode(), keep_only_vllm=True)
        monkeypatch.setattr(prometheus_client, "generate_latest", lambda *_: pytest.fail("rendered text"))
        page = RegistrySource().page(1.0, True, PageReader())
    finally:
        for collector in collectors:
            REGISTRY.unregister(collector)
    assert page == expected
    assert page.gauges[names[0]] == 7.0 and page.counters[names[1]] == 9.0
    assert page.histograms[names[2]].counts == (0.0, 1.0)
