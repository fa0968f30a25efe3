"""The engine's own state over the measured window, beside the client's numbers: what it owns and uses.

Owns: scraping Prometheus `/metrics` pages (HTTP engines, extra endpoints such as a router: in a process
of its own, `process`) and the in-process engine's own Prometheus registry (`scraper`), turning
successive pages into per-interval records (`prom`: gauges as values, counters and histogram buckets as
deltas, resets handled), estimating percentiles from histogram bucket deltas (`histogram`), and
summarising the records per server (`summarize`).

May import: `flowperf.rundir.records` and `flowperf.rundir.summary_schema` (the records it fills, the
summary part it computes), `flowperf.config` (its settings), and `prometheus_client`. An engine is only
asked for its metrics sources (`sources.metrics_sources`), so the package stays off vLLM's import path.
Must not import: run, engines, cli, outputs, modes, workers.
"""
