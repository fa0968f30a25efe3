"""A Prometheus text page as numbers, and two successive pages as one interval's record.

Parsing is prometheus_client's own text parser (the format's reference implementation). Counters and
histograms are summed over their label sets (counts add up whatever the labels), keyed by the family
name (a counter without `_total`). A gauge is summed only where that means something: vLLM's gauges,
labelled by engine index and model name (or a waiting reason), whose sum is the deployment's running,
waiting or KV usage; any other server's gauge keeps one series per label set, keyed `name{k="v",...}`
(a sum of, say, per-GPU temperatures or per-pool sizes would be a number nobody measured).
`_created` timestamps, info/state-set families and info-style gauges (`*_info`,
`vllm:engine_sleep_state`) carry no load and are skipped.

Between two pages: a gauge is the later value; a counter is the increase, or, when it went down (the
server restarted and counts from zero again), the later value itself: all that is known to have
accrued since the restart. A histogram is the increase of each cumulative bucket and of its count and
sum, with the same rule for a reset (its count went down).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from flowperf.rundir.records import HistogramDelta

VLLM_PREFIX = "vllm:"
VLLM_EXPECTED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:e2e_request_latency_seconds",
)
"""The series flowperf reads from a vLLM server (names as vLLM 0.1x's v1 engine exposes them)."""


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts by upper bound (+Inf left out: it is `count`), count and sum."""

    le: tuple[float, ...]
    counts: tuple[float, ...]
    count: float
    sum: float


@dataclass
class Page:
    """One scrape: every gauge, counter and histogram family, summed over label sets."""

    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)

    @property
    def families(self) -> set[str]:
        return set(self.gauges) | set(self.counters) | set(self.histograms)

    def missing_vllm_series(self) -> list[str]:
        return [name for name in VLLM_EXPECTED if name not in self.families]

    @property
    def looks_like_vllm(self) -> bool:
        return any(name.startswith(VLLM_PREFIX) for name in self.families)

    def only_vllm(self) -> Page:
        """The vLLM series flowperf reads (`VLLM_EXPECTED`) alone: a vLLM server also exposes dozens of
        process, HTTP and other engine series, which would only bloat the records and cost parsing."""
        return Page(
            {name: value for name, value in self.gauges.items() if name in VLLM_EXPECTED},
            {name: value for name, value in self.counters.items() if name in VLLM_EXPECTED},
            {name: value for name, value in self.histograms.items() if name in VLLM_EXPECTED},
        )


def parse_page(text: str, keep_only_vllm: bool = False) -> Page:
    """The families of a Prometheus text page; with `keep_only_vllm`, only the vLLM series flowperf
    reads (`VLLM_EXPECTED`). A page that is not Prometheus text raises ValueError."""
    return page_of(text_string_to_metric_families(text), keep_only_vllm)


MAX_KNOWN_SERIES = 100_000
"""A server whose label values never repeat would otherwise grow the reader's memory without end."""


class PageReader:
    """One server's successive pages, each distinct series parsed by prometheus_client once.

    The library's parser reads labels a character at a time (about 10 us a line, 1-8 ms a page, 4 pages a
    second, on the 2 cores a run measures on). A server repeats the same series every round with new
    numbers, so after the first page a sample line (`series value`) whose series text was seen before only
    needs its number read, and a line unchanged since the last page not even that; the family, type and
    labels are the library's from that first time. A line it could not vouch for (one with a timestamp,
    or whose number is not the value the library read) is given to the library whenever it changes."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, str, Sample]] = {}
        self._types: dict[str, tuple[str, str]] = {}
        self._last: dict[str, tuple[str, str, Sample]] = {}

    def read(self, text: str, keep_only_vllm: bool = False) -> Page:
        """The page's families as `parse_page` gives them; with `keep_only_vllm`, the lines of families
        other than `VLLM_EXPECTED` are skipped before anything is parsed."""
        families: dict[str, Metric] = {}
        type_line = ""
        previous, self._last = self._last, {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                type_line = line
                if not keep_only_vllm or line[7:].startswith(VLLM_EXPECTED):
                    _family(families, *self._family_of(line))
            elif line and line[0] != "#" and (not keep_only_vllm or line.startswith(VLLM_EXPECTED)):
                parsed = previous.get(line) or self._sample(type_line, line)
                self._last[line] = parsed
                _family(families, parsed[0], parsed[1]).samples.append(parsed[2])
        return page_of(families.values(), keep_only_vllm)

    def _family_of(self, type_line: str) -> tuple[str, str]:
        """The family a TYPE line declares, named as the library names it (a counter without `_total`):
        a family with no sample yet is still on the page."""
        known = self._types.get(type_line)
        if known is None:
            (family,) = text_string_to_metric_families(type_line + "\n")
            known = self._types[type_line] = (family.name, family.type)
        return known

    def _sample(self, type_line: str, line: str) -> tuple[str, str, Sample]:
        series, _, number = line.rpartition(" ")
        known = self._known.get(series)
        if known is not None:
            name, kind, sample = known
            return name, kind, sample._replace(value=float(number))
        return self._learn(type_line, line, series, number)

    def _learn(self, type_line: str, line: str, series: str, number: str) -> tuple[str, str, Sample]:
        """The library's reading of one line under the family's TYPE line (the format keeps a family's
        lines together after it); remembered when reading the number alone would give the same."""
        parsed = [
            (family.name, family.type, sample)
            for family in text_string_to_metric_families(f"{type_line}\n{line}\n")
            for sample in family.samples
        ]
        if len(parsed) != 1:
            raise ValueError(f"not a Prometheus sample line: {line[:80]!r}")
        name, kind, sample = parsed[0]
        if sample.timestamp is None and _same_value(number, sample.value):
            if len(self._known) >= MAX_KNOWN_SERIES:
                self._known.clear()
            self._known[series] = parsed[0]
        return name, kind, sample


def _family(families: dict[str, Metric], name: str, kind: str) -> Metric:
    family = families.get(name)
    if family is None:
        family = families[name] = Metric(name, "", kind)
    return family


def _same_value(number: str, value: float) -> bool:
    try:
        read = float(number)
    except ValueError:
        return False
    return read == value or (math.isnan(read) and math.isnan(value))


def page_of(families: Iterable[Metric], keep_only_vllm: bool = False) -> Page:
    """The families as a Page, whether parsed from text or collected from a registry in this process
    (`Registry.collect()`: the same objects, with no text written or read in between)."""
    page = Page()
    for family in families:
        if (keep_only_vllm and family.name not in VLLM_EXPECTED) or _carries_no_load(family.name):
            continue
        if family.type == "gauge" and family.name.startswith(VLLM_PREFIX):
            page.gauges[family.name] = _total(family.samples, family.name)
        elif family.type == "gauge":
            page.gauges.update(_per_label_set(family.samples, family.name))
        elif family.type == "counter":
            page.counters[family.name] = _total(family.samples, family.name + "_total")
        elif family.type == "histogram":
            page.histograms[family.name] = _histogram(family.samples, family.name)
    return page


INFO_GAUGES = ("vllm:engine_sleep_state",)
"""Gauges that describe rather than measure (besides every `*_info`): a state flag, not a load."""


def _carries_no_load(name: str) -> bool:
    """`_created` timestamps and info-style gauges (vLLM's `vllm:cache_config_info`, whose value is always
    1 and whose labels are the configuration; `vllm:engine_sleep_state`; a process's `*_info`): kept,
    they would be series of constants in every sample and sums of label sets that mean nothing."""
    return name.endswith(("_created", "_info")) or name in INFO_GAUGES


def _total(samples: list, name: str) -> float:
    return float(
        sum(sample.value for sample in samples if sample.name == name and math.isfinite(sample.value))
    )


def _per_label_set(samples: list, name: str) -> dict[str, float]:
    """One value per label set: `name` alone without labels, else `name{k="v",...}` (labels sorted)."""
    values: dict[str, float] = {}
    for sample in samples:
        if sample.name != name or not math.isfinite(sample.value):
            continue
        labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
        values[f"{name}{{{labels}}}" if labels else name] = float(sample.value)
    return values


def _histogram(samples: list, name: str) -> Histogram:
    buckets: dict[float, float] = {}
    count = total = 0.0
    for sample in samples:
        if sample.name == name + "_bucket":
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
        elif sample.name == name + "_count":
            count += sample.value
        elif sample.name == name + "_sum":
            total += sample.value
    bounds = sorted(bound for bound in buckets if math.isfinite(bound))
    return Histogram(tuple(bounds), tuple(buckets[bound] for bound in bounds), count, total)


@dataclass(frozen=True)
class Interval:
    """What happened between two pages: gauges now, counter and histogram increases, resets seen."""

    gauges: dict[str, float]
    counters: dict[str, float]
    histograms: dict[str, HistogramDelta]
    resets: list[str]


def counter_delta(before: float | None, now: float) -> tuple[float, bool]:
    """The increase of a counter, and whether it was reset (went down: the delta is then `now`)."""
    if before is None:
        return 0.0, False
    if now < before:
        return now, True
    return now - before, False


def histogram_delta(before: Histogram | None, now: Histogram) -> tuple[HistogramDelta | None, bool]:
    """The interval's observations, None if there were none (or `before` is None: no baseline yet);
    whether the histogram was reset (its count went down: the interval then holds all of `now`)."""
    if before is None:
        return None, False
    reset = now.count < before.count
    if reset or before.le != now.le:
        counts, count, total = list(now.counts), now.count, now.sum
    else:
        counts = [later - earlier for later, earlier in zip(now.counts, before.counts, strict=True)]
        count, total = now.count - before.count, now.sum - before.sum
    if count <= 0:
        return None, reset
    return HistogramDelta(le=list(now.le), counts=counts, count=count, sum=total), reset


def interval(before: Page | None, now: Page) -> Interval:
    """`now` against the page before it (None: the first page, which only sets the baseline)."""
    counters: dict[str, float] = {}
    histograms: dict[str, HistogramDelta] = {}
    resets: list[str] = []
    for name, value in now.counters.items():
        delta, reset = counter_delta(None if before is None else before.counters.get(name, 0.0), value)
        counters[name] = delta
        if reset:
            resets.append(name)
    for name, histogram in now.histograms.items():
        empty = Histogram(histogram.le, tuple(0.0 for _ in histogram.le), 0.0, 0.0)
        previous = None if before is None else before.histograms.get(name, empty)
        change, reset = histogram_delta(previous, histogram)
        if change is not None:
            histograms[name] = change
        if reset:
            resets.append(name)
    return Interval(dict(now.gauges), counters if before is not None else {}, histograms, resets)
