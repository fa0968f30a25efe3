"""summary.json as a typed document: what `summary.py` computes and report, compare, benchmarks and tests
read, by attribute, never by string path.

Every interval is defined once, in the field's description, and docs/ARCHITECTURE.md lists them. The JSON
written is `RunSummary.model_dump(mode="json")`: the shape users script against. `schema_version` says
which shape; version 1 (flowperf 0.1) named the per-step rate `output_tokens_per_s`.

Run-wide step figures (latencies, steps/s, the prefix-cache table) count LLM steps only: a tool or think
step is a pause, not a request, and appears only in `latency_by_step` (its `step_ms` is its duration).
Directories from before step kinds (schema 1 and 2) hold LLM steps only and summarise as they did; the
figures they lack columns for (turn depth, the per-workflow breakdown) are empty or None.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowperf.rundir.records import FIRST_RUN_SCHEMA_VERSION, RUN_SCHEMA_VERSION

RunStatus = Literal["running", "complete", "stopped_on_failure", "warmup_failed", "interrupted", "partial"]


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Distribution(Part):
    """Count, mean, sample std, min, max and linear-interpolated percentiles; None when empty."""

    count: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None


class StepLatencies(Part):
    step_ms: Distribution = Field(description="submit to last token, harness clock")
    ttft_ms: Distribution = Field(description="submit to first token event, harness clock")
    tpot_ms: Distribution = Field(description="(step - ttft) / (output tokens - 1), per step")
    itl_ms: Distribution = Field(description="every gap between consecutive token events")


class RunLatencies(StepLatencies):
    workflow_ms: Distribution = Field(description="first step submitted to last step finished")
    workflow_latency_ms: Distribution = Field(
        default_factory=Distribution,
        description="open loop: scheduled arrival to last step finished, harness clock (the wait for a "
        "--concurrency slot included: no coordinated omission); closed loop: the same as workflow_ms",
    )
    ttft_beyond_engine_ms: Distribution = Field(
        default_factory=Distribution,
        description="per step where the engine reports its own TTFT: ttft_ms - engine_ttft_ms, two "
        "durations on their own clocks; the time the engine does not see (its HTTP front end, tokenising "
        "and detokenising, transport, the client)",
    )
    connect_wait_ms: Distribution = Field(
        default_factory=Distribution,
        description="over HTTP, per ok LLM step: waiting for a pooled connection (or a new one to open) "
        "before the request was submitted, harness clock; outside ttft_ms and step_ms, so client-side "
        "pool queueing shows here and nowhere else (empty in-process)",
    )


class StepIdLatencies(StepLatencies):
    @model_validator(mode="before")
    @classmethod
    def _version_1_name(cls, data: Any) -> Any:
        """Schema 1 called the per-step rate `output_tokens_per_s`."""
        if isinstance(data, dict) and "output_tokens_per_s" in data:
            data = {"request_output_tokens_per_s": data["output_tokens_per_s"]} | data
        return data

    kind: str = Field(default="llm", description="llm, tool or think (schema 1 and 2: always llm)")
    request_output_tokens_per_s: float | None = Field(
        default=None,
        description="output tokens / step time, summed over this step's requests: the rate one request "
        "sees (prefill included), not the engine's throughput; None for tool and think steps",
    )


class Counts(Part):
    workflows_planned: int
    workflows_done: int
    workflows_ok: int
    workflows_failed: int
    failures_by_type: dict[str, int] = Field(default_factory=dict)
    steps_done: int
    steps_ok: int
    sessions: int


class Timings(Part):
    flow_expansion_ms: float | None = None
    expansion_source: str | None = None
    engine_init_ms: float | None = None
    measured_window_ms: float = Field(
        default=0.0, description="sum over sessions of session start to its last finished workflow"
    )


class Throughput(Part):
    output_tokens: int = 0
    output_tokens_per_s: float | None = None
    steps_per_s: float | None = Field(default=None, description="ok LLM steps / measured window")
    workflows_per_s: float | None = None


class CachePosition(Part):
    step_index: int
    step_id: str
    prompt_tokens: int
    cached_prompt_tokens: int
    hit_ratio: float | None


class AchievedConcurrency(Part):
    mean: float | None = Field(default=None, description="time-weighted mean in flight over the window")
    max: int | None = None
    series: list[tuple[float, int]] = Field(
        default_factory=list, description="(ms since the window began, in flight) at evenly spaced instants"
    )


class Load(Part):
    achieved_concurrency: AchievedConcurrency = Field(
        default_factory=AchievedConcurrency,
        description="workflows (sessions) in flight, each from its first step submitted to its last step "
        "finished, over the busiest session's window (its start to its last workflow's end), harness clock",
    )
    request_concurrency: AchievedConcurrency = Field(
        default_factory=AchievedConcurrency,
        description="LLM requests in flight (steps of kind llm, failed ones included: they held the "
        "engine too), each from start_offset_ms to end_offset_ms (schema 1 and 2: start + step_ms), over "
        "the same window and instants as achieved_concurrency, harness clock; below it while sessions "
        "pause in tools or think time",
    )
    start_delay_ms: Distribution | None = Field(
        default=None,
        description="open loop: scheduled arrival to first step submitted, harness clock (the wait for a "
        "--concurrency slot, or for a busy event loop); per workflow, workflow_latency_ms is this plus "
        "workflow_ms",
    )


class GpuUse(Part):
    util_percent_mean: float | None
    util_percent_peak: float | None
    mem_used_mb_mean: float | None
    mem_used_mb_peak: float | None


class GpusUnavailable(Part):
    available: Literal[False] = False
    reason: str


class PhaseTotal(Part):
    count: int
    total_ms: float
    mean_ms: float


class Resources(Part):
    samples: int = 0
    monitor_cpu_ms: float = 0.0
    peak_rss_mb: float | None = None
    peak_engine_rss_mb: float | None = None
    peak_total_rss_mb: float | None = None
    cpu_percent_mean: float | None = None
    engine_cpu_percent_mean: float | None = None
    rss_growth_mb_per_100_steps: float | None = None
    engine_rss_growth_mb_per_100_steps: float | None = None
    gpus: dict[str, GpuUse] | GpusUnavailable = Field(
        default_factory=lambda: GpusUnavailable(reason="not sampled")
    )
    phases_ms: dict[str, PhaseTotal] = Field(default_factory=dict)
    monitor_errors: list[str] = Field(
        default_factory=list, description="why sampling stopped early, per session where it did"
    )


class TurnGroup(Part):
    """Ok LLM steps of one group (a turn depth, a prompt-length bucket): how context length and prefix
    reuse shape the first token, the curve an agent builder needs."""

    steps: int
    prompt_tokens_mean: float | None = None
    cached_prompt_ratio: float | None = Field(
        default=None, description="sum of cached prompt tokens / sum of prompt tokens over the group"
    )
    ttft_ms: Distribution = Field(description="submit to first token event, harness clock")
    tpot_ms: Distribution = Field(description="(step - ttft) / (output tokens - 1), per step")


class DepthGroup(TurnGroup):
    depth: int = Field(
        description="StepRecord.depth: LLM calls on the step's transcript up to and including it (1 = the "
        "conversation's first call); a branch continues its parent's count"
    )


class PromptLengthGroup(TurnGroup):
    prompt_tokens_from: int = Field(description="smallest prompt length in the bucket (0, 256, 512, ...)")
    prompt_tokens_below: int = Field(description="the bucket holds prompts shorter than this (powers of two)")


class WorkflowBreakdown(Part):
    """Where an ok workflow's time goes, one sample per workflow (schema 3 on). Harness perf_counter clock
    unless said otherwise; `makespan = critical_path + scheduling_gap` and `critical_path = llm + tool`,
    so the means add up. The critical path is the chain the run took: from the step that finished last,
    back through the need that finished last, to a step with no needs."""

    workflows: int
    makespan_ms: Distribution = Field(description="workflow_ms: first step submitted to last step finished")
    critical_path_ms: Distribution = Field(
        description="sum of the critical path's step durations, each its start to its end"
    )
    llm_ms: Distribution = Field(description="the LLM steps' part of critical_path_ms")
    tool_ms: Distribution = Field(description="the tool and think steps' part of critical_path_ms (pauses)")
    engine_queue_ms: Distribution = Field(
        description="part of llm_ms: the critical path's LLM steps' engine_queue_ms (arrival in the engine "
        "to first scheduled) summed; durations on the engine's own clock, never mixed with ours; only "
        "workflows where every such step reports it"
    )
    scheduling_gap_ms: Distribution = Field(
        description="makespan_ms - critical_path_ms: time no critical-path step was running (the harness "
        "handing over from a step to the next)"
    )
    slot_wait_ms: Distribution | None = Field(
        default=None,
        description="open loop: scheduled arrival to first step submitted (waiting for a --concurrency "
        "slot), outside the makespan; None closed loop",
    )


class ThinkGapGroup(TurnGroup):
    """Ok LLM steps of a replayed session trace by the think pause planned before them: how much of the
    prefix cache survives a pause of that length (`cached_prompt_ratio`) and what it costs (`ttft_ms`)."""

    think_from_ms: float = Field(
        description="smallest planned pause in the bucket (StepRecord.think_before_ms)"
    )
    think_below_ms: float | None = Field(
        description="the bucket holds pauses shorter than this; None: no bound"
    )


class ObjectiveOutcome(Part):
    name: str = Field(description="the objective as given, e.g. session_p95_ms")
    missed: int = Field(description="sessions that did not meet it (failed ones included)")
    run_value_ms: float | None = Field(
        description="the objective's percentile over every ok session's samples pooled (nearest rank)"
    )
    run_met: bool | None = None


class SessionGoodput(Part):
    """Sessions that met every objective of `--slo` (rundir/slo.py: a session meets `ttft_p99_ms` when
    99% of its own requests' TTFTs are within the limit; `session_pNN_ms` is its latency)."""

    slo: str
    sessions: int = Field(description="sessions counted: every finished one, failed ones included")
    good: int
    attainment: float | None = Field(description="good / sessions")
    goodput_per_s: float | None = Field(description="good sessions per second of measured window")
    objectives: list[ObjectiveOutcome] = Field(default_factory=list)


class SessionResults(Part):
    """Job-level results of a replayed session trace (`bench replay SESSIONS`), one workflow per session.
    The per-session makespan and its critical-path split (LLM, of which engine queueing; think pauses;
    scheduling gap) are `workflow_breakdown`, TTFT and cache share by turn depth are `turns`, sessions
    and requests in flight over time are `load`: each computed per session here since a session is a
    workflow. Harness perf_counter clock."""

    sessions: int = Field(description="sessions finished (ok or failed)")
    sessions_ok: int
    requests: int = Field(description="ok LLM requests (steps of kind llm)")
    requests_per_session: Distribution = Field(description="ok LLM requests per ok session")
    session_latency_ms: Distribution = Field(
        description="per ok session: scheduled arrival (open loop; closed loop its first submission) to its "
        "last request's end, harness clock; the sample of session_pNN_ms objectives"
    )
    think_ms: Distribution = Field(description="planned think pause before each ok LLM request, ms")
    by_think_gap: list[ThinkGapGroup] = Field(
        default_factory=list, description="ok LLM requests by the pause before them: [0, 1) s, [1, 5) s, ..."
    )
    goodput: SessionGoodput | None = Field(default=None, description="None without --slo")


class RunInfo(Part):
    run_id: str | None = None
    flow: str | None = None
    mode: Literal["closed_loop", "open_loop"] | None = None
    concurrency: int | None = None
    rate_per_s: float | None = None
    engine_kind: str | None = None
    config_sha256: str | None = None
    warmup_workflows: int | None = None
    prefix_cache_reset: bool = False
    sample_interval_s: float | None = None
    warmup_failure: str | None = Field(
        default=None, description="why a fail-fast warm-up stopped the run (status warmup_failed)"
    )
    slo: str | None = Field(default=None, description="the run's --slo objectives, as given")


class HistogramEstimate(Part):
    """Percentiles estimated from a server's Prometheus histogram: the bucket deltas of every scrape
    in the window added up, and the rank's bucket interpolated linearly (telemetry/histogram.py). Each
    estimate is within its bucket's width (`*_bucket_ms`) of the true percentile. ms, engine clock."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p50_bucket_ms: float | None = None
    p99_bucket_ms: float | None = None


class ServerState(Part):
    """One server's own view of the window (`engine_metrics.jsonl`), beside the client's numbers.

    Gauges (running, waiting, KV usage) are the means and maxima over the samples read every
    --server-metrics-interval; counters are summed over the window's intervals. `saturated_ms` is the
    time the engine had requests waiting: the sum of the intervals whose closing sample says waiting > 0
    (harness clock, to within one interval)."""

    server: str
    endpoint: int | None = None
    vllm: bool | None = None
    samples: int = 0
    scrape_failures: int = 0
    missing_series: list[str] = Field(default_factory=list)
    running_mean: float | None = None
    running_max: float | None = None
    waiting_mean: float | None = None
    waiting_max: float | None = None
    kv_usage_max: float | None = Field(default=None, description="fraction of the KV cache in use, 0-1")
    saturated_ms: float | None = None
    saturated_share: float | None = Field(default=None, description="saturated_ms / the sampled time")
    preemptions: float | None = None
    prefix_cache_hit_ratio: float | None = Field(
        default=None, description="prefix-cache hits / queries (tokens) as the engine counted them"
    )
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    ttft_ms: HistogramEstimate = Field(
        default_factory=HistogramEstimate, description="the server's TTFT: arrival to first token"
    )
    queue_ms: HistogramEstimate = Field(default_factory=HistogramEstimate, description="time in its queue")
    client_minus_server_ttft_p50_ms: float | None = Field(
        default=None,
        description="the client's TTFT p50 (its steps on this server) minus the server's histogram p50: "
        "front end, transport and client; a difference of percentiles, not a percentile of differences",
    )
    client_minus_server_ttft_p99_ms: float | None = None
    burst_steps: int = Field(
        default=0, description="steps on this server whose stream arrived in one burst (burst_delivered)"
    )


class RunSummary(Part):
    schema_version: int = Field(description=f"run-directory schema; {RUN_SCHEMA_VERSION} when written now")
    status: RunStatus
    run: RunInfo
    engine: dict[str, Any] | None = None
    counts: Counts
    timing: Timings
    latency: RunLatencies
    latency_by_step: dict[str, StepIdLatencies] = Field(default_factory=dict)
    throughput: Throughput
    prefix_cache: list[CachePosition] = Field(default_factory=list)
    turns: list[DepthGroup] = Field(
        default_factory=list, description="ok LLM steps by turn depth (empty before schema 3)"
    )
    by_prompt_length: list[PromptLengthGroup] = Field(
        default_factory=list, description="ok LLM steps by prompt length, power-of-two buckets from 256"
    )
    workflow_breakdown: WorkflowBreakdown | None = Field(
        default=None, description="None for directories from before schema 3 (no critical-path columns)"
    )
    load: Load
    resources: Resources
    sessions: SessionResults | None = Field(
        default=None, description="a replayed session trace's job-level results; None for other runs"
    )
    engine_state: list[ServerState] = Field(
        default_factory=list, description="per server, from its own metrics; empty when none were read"
    )

    @model_validator(mode="before")
    @classmethod
    def _unversioned_is_version_1(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schema_version" not in data:
            data = data | {"schema_version": FIRST_RUN_SCHEMA_VERSION}
        return data

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
