"""The scraper's page reader (telemetry/prom.PageReader): after the first page it reads only each known
series' number, so it must give exactly what prometheus_client's parser gives for every page, however the
values, label sets and series change between pages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flowperf.telemetry import prom
from flowperf.telemetry.prom import PageReader, parse_page

LABEL_VALUES = st.sampled_from(["0", "1", 'a "quoted" one', "with space", "back\\slash", "new\nline"])
ROUND = st.fixed_dictionaries(
    {
        "running": st.integers(0, 64),
        "usage": st.floats(0.0, 1.0),
        "queue": st.one_of(st.floats(-1e9, 1e9), st.just(float("inf")), st.just(float("nan"))),
        "tokens": st.integers(0, 10_000),
        "observations": st.lists(st.floats(0.0, 30.0), max_size=20),
        "labels": st.lists(LABEL_VALUES, min_size=1, max_size=3),
        "reset": st.booleans(),
    }
)


class Server:
    """A registry that lives across rounds (counters only grow unless reset), rendered by the library's
    own writer as a server would."""

    def __init__(self) -> None:
        self.new()

    def new(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("vllm:num_requests_running", "", ["engine"], registry=r)
        self.usage = Gauge("vllm:kv_cache_usage_perc", "", ["engine"], registry=r)
        self.queue = Gauge("queue_depth", "", ["pool"], registry=r)
        self.tokens = Counter("vllm:generation_tokens", "", ["engine"], registry=r)
        self.other = Counter("vllm:request_success", "", ["engine"], registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "", ["engine"], registry=r)

    def page(self, values: dict) -> str:
        if values["reset"]:
            self.new()
        for label in values["labels"]:
            self.running.labels(label).set(values["running"])
            self.usage.labels(label).set(values["usage"])
            self.queue.labels(label).set(values["queue"])
            self.tokens.labels(label).inc(values["tokens"])
            self.other.labels(label).inc()
            for seconds in values["observations"]:
                self.ttft.labels(label).observe(seconds)
        return generate_latest(self.registry).decode()


@settings(max_examples=60, deadline=None)
@given(st.lists(ROUND, min_size=1, max_size=8), st.booleans())
def test_every_page_reads_as_the_library_parses_it(rounds: list[dict], keep_only_vllm: bool) -> None:
    server, reader = Server(), PageReader()
    for values in rounds:
        text = server.page(values)
        assert reader.read(text, keep_only_vllm) == parse_page(text, keep_only_vllm)


def test_a_page_of_known_series_is_read_without_the_library(monkeypatch) -> None:
    server, reader = Server(), PageReader()
    first = {"running": 3, "usage": 0.5, "queue": 2.0, "tokens": 10, "observations": [0.1], "labels": ["0"]}
    reader.read(server.page({**first, "reset": False}))
    parsed: list[str] = []
    library = prom.text_string_to_metric_families

    def counted(text: str):
        parsed.append(text)
        return library(text)

    monkeypatch.setattr(prom, "text_string_to_metric_families", counted)
    text = server.page({**first, "running": 7, "tokens": 5, "observations": [2.0, 0.01], "reset": False})
    page = reader.read(text)
    assert parsed == []
    monkeypatch.setattr(prom, "text_string_to_metric_families", library)
    assert page == parse_page(text) and page.gauges["vllm:num_requests_running"] == 7.0


def test_a_line_with_a_timestamp_is_parsed_in_full_every_time() -> None:
    reader = PageReader()
    for text in (
        "# TYPE jobs gauge\njobs 1 1700000000000\n",
        "# TYPE jobs gauge\njobs 1 1700000001000\n",
        "# TYPE jobs gauge\njobs 2 1700000002000\n",
    ):
        assert reader.read(text) == parse_page(text)
    assert reader.read("# TYPE jobs gauge\njobs 2 1700000002000\n").gauges == {"jobs": 2.0}


def test_a_vllm_page_keeps_only_the_series_flowperf_reads() -> None:
    server = Server()
    values = {"running": 1, "usage": 0.2, "queue": 1.0, "tokens": 4, "observations": [], "labels": ["0"]}
    text = server.page({**values, "reset": False})
    page = PageReader().read(text, keep_only_vllm=True)
    assert "vllm:request_success" in parse_page(text).counters
    assert page.families == {
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens",
        "vllm:time_to_first_token_seconds",
    }
