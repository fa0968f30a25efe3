"""The records of a run directory, each kind defined once: what the runner and the monitor build, the
store writes, `rundata` reads back and the stress calibration fits.

A field added here is written, read into the run's tables and available to summaries without another
edit anywhere: the CSV columns, the JSON keys and the table dtypes all come from these models. Optional
fields absent from a line (a failed step has no TTFT) read as missing, never as zero.

`RUN_SCHEMA_VERSION` is written into config.json and summary.json. Version 1 directories (flowperf 0.1,
before the version was recorded) hold records of the same shape and load as they are; a directory from
a newer flowperf is refused with one line rather than misread. Version 3 added graph workflows: a
workflow may record several failed steps (`steps_failed`), and step indices are plan positions, not a
chain.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from flowperf.errors import UserError

RUN_SCHEMA_VERSION = 3
FIRST_RUN_SCHEMA_VERSION = 1

Status = Literal["ok", "failed"]
StepKind = Literal["llm", "tool", "think"]
Count = Annotated[int, Field(ge=0)]
Duration = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def one_line(value: str) -> str:
    """Error messages go into CSV cells and table rows: whitespace folded to single spaces."""
    return " ".join(value.split())


class Record(BaseModel):
    """A run-directory record: unknown keys (written by a later minor change) are ignored on read."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class StepRecord(Record):
    """One finished step (`steps.jsonl`). Times in ms; offsets from the session's measured-window start,
    on the harness's perf_counter clock; `engine_*` on the engine's own clock, never mixed with ours."""

    flow_index: int
    flow_id: str
    session: int
    step_index: int
    step_id: str
    max_tokens: int
    inflight_at_start: int = Field(ge=1)
    start_offset_ms: float
    status: Status
    step_ms: Duration
    kind: StepKind = "llm"
    node: str | None = Field(
        default=None, description="the step instance: `id`, `id#turn` in a loop, `id[k]` in a fan-out"
    )
    needs: list[int] | None = Field(default=None, description="step_index of each step it waited for")
    end_offset_ms: float | None = Field(default=None, description="when it finished, harness clock")
    depth: int | None = Field(default=None, description="LLM calls on its transcript up to and including it")
    turn: int | None = None
    item_index: int | None = None
    ttft_ms: Duration | None = None
    tpot_ms: Duration | None = None
    itl_ms: list[Duration] | None = None
    prompt_tokens: Count | None = None
    output_tokens: Count | None = None
    cached_prompt_tokens: Count | None = None
    finish_reason: str | None = None
    engine_queue_ms: float | None = None
    engine_ttft_ms: float | None = None
    connect_wait_ms: Duration | None = Field(
        default=None,
        description="over HTTP: waiting for a pooled connection (or a new one to open) before the request "
        "was submitted, harness clock; outside ttft_ms and step_ms, which start at submission",
    )
    endpoint: int | None = Field(
        default=None,
        ge=0,
        description="which replica served it: its position in --base-url order; absent with one",
    )
    error_type: str | None = None
    error_message: str | None = None
    prompt_text: str | None = None
    output_text: str | None = None
    engine_last_token_ms: float | None = Field(
        default=None,
        description="engine core's clock: arrival in its queue to its last token made (vLLM's queued_ts to "
        "last_token_ts), so step_ms - engine_last_token_ms is what lies outside the engine",
    )
    request_id: str | None = Field(
        default=None,
        description="a replayed session trace's request id (for think steps: the one it precedes)",
    )
    think_before_ms: Duration | None = Field(
        default=None,
        description="a replayed session's LLM step: the think pause planned before it (recorded think time, "
        "scaled by --think-time and --time-scale), ms",
    )
    token_reads: Count | None = Field(
        default=None,
        description="stream delivery: network reads (in process: engine events) that carried tokens",
    )
    max_read_share: float | None = Field(
        default=None, ge=0, le=1, description="the largest share of the step's tokens that came in one read"
    )
    burst_delivered: bool | None = Field(
        default=None,
        description="more than half of the step's tokens arrived in one read after the first: the front "
        "end held the stream back and delivered it in a burst, so ttft_ms and itl_ms say little about "
        "the engine",
    )

    @field_validator("error_message")
    @classmethod
    def _fold_error(cls, value: str | None) -> str | None:
        return None if value is None else one_line(value)

    def to_line(self) -> str:
        """One JSON line; absent optional fields are left out (the shape version 1 wrote)."""
        return self.model_dump_json(exclude_none=True) + "\n"


class WorkflowRecord(Record):
    """One finished workflow (a row of `workflows.csv`): a workflow counts once this row exists.
    `workflow_ms` is its makespan, first step submitted to last step finished; `arrival_offset_ms` is its
    scheduled arrival in open loop (empty closed loop).

    `latency_ms` and `start_delay_ms` are derived from the offsets rather than stored, so every row ever
    written (and the CSV header of a directory being resumed) has them without a new column."""

    flow_index: int
    flow_id: str
    session: int
    status: Status
    workflow_ms: float
    step_ms_sum: float
    steps: int
    steps_ok: int
    prompt_tokens: int
    output_tokens: int
    cached_prompt_tokens: int
    arrival_offset_ms: float | None = None
    start_offset_ms: float
    end_offset_ms: float
    error_type: str = ""
    error_message: str = ""
    steps_failed: int | None = None
    critical_path_ms: float | None = None
    llm_ms: float | None = None
    tool_ms: float | None = None
    engine_queue_ms: float | None = None

    @field_validator("error_message")
    @classmethod
    def _fold_error(cls, value: str) -> str:
        return one_line(value)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def latency_ms(self) -> float:
        """What a user arriving on schedule waits: open loop, scheduled arrival to last step finished
        (a --concurrency cap's queueing included, so an overloaded server cannot hide it: coordinated
        omission); closed loop there is no schedule and it is `workflow_ms`. Harness clock."""
        if self.arrival_offset_ms is None:
            return self.workflow_ms
        return round(self.end_offset_ms - self.arrival_offset_ms, 3)

    @property
    def start_delay_ms(self) -> float | None:
        """Open loop: scheduled arrival to first step submitted (waiting for a --concurrency slot, or for
        a busy event loop); None closed loop. `latency_ms = start_delay_ms + workflow_ms`. Harness clock."""
        if self.arrival_offset_ms is None:
            return None
        return round(self.start_offset_ms - self.arrival_offset_ms, 3)

    def csv_cells(self) -> dict[str, Any]:
        """The row as CSV cells: a missing value is an empty cell."""
        return {key: "" if value is None else value for key, value in self.model_dump().items()}


class GpuSample(Record):
    index: int
    mem_used_mb: float
    mem_total_mb: float
    util_percent: float


class ResourceSample(Record):
    """One resource sample (`metrics.jsonl`, type `sample`): the harness process and, as `children_*`, the
    engine processes it started or tracks; `t_s` since the monitor was made, on perf_counter."""

    type: Literal["sample"] = "sample"
    session: int
    t_s: float
    steps_done: int
    rss_mb: float
    cpu_percent: float
    children_rss_mb: float | None = None
    children_cpu_percent: float | None = None
    children: int = 0
    system_mem_used_mb: float | None = None
    system_mem_percent: float | None = None
    gpus: list[GpuSample] | None = None
    sample_cpu_ms: float = 0.0


class GpuInfoRecord(Record):
    """Whether GPUs could be sampled in a session, and why not (`metrics.jsonl`, type `gpu_info`)."""

    type: Literal["gpu_info"] = "gpu_info"
    session: int
    available: bool
    reason: str | None = None
    devices: int = 0


class PhaseRecord(Record):
    """A timed phase of a run (`metrics.jsonl`, type `phase`), with this process's RSS around it."""

    type: Literal["phase"] = "phase"
    session: int
    name: str
    start_s: float
    duration_ms: float
    rss_before_mb: float
    rss_after_mb: float
    flow_index: int | None = None
    workflows: int | None = None


class MonitorErrorRecord(Record):
    """Why resource sampling stopped early (`metrics.jsonl`, type `monitor_error`): from that moment the
    session has no samples, and a summary must say so rather than look complete."""

    type: Literal["monitor_error"] = "monitor_error"
    session: int
    error: str


MetricRecord = ResourceSample | GpuInfoRecord | PhaseRecord | MonitorErrorRecord
"""Any record of metrics.jsonl; its `type` field tells which."""
METRIC_RECORD = TypeAdapter(Annotated[MetricRecord, Field(discriminator="type")])


def metric_line(record: MetricRecord) -> str:
    return record.model_dump_json(exclude_none=True) + "\n"


def _scalar_kind(annotation: Any) -> str | None:
    """`int`, `float`, `bool` or `str` for a scalar field type (optional or constrained), else None."""
    if get_origin(annotation) in (Union, UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _scalar_kind(present[0]) if len(present) == 1 else None
    if get_origin(annotation) is Annotated:
        return _scalar_kind(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return "str"
    return annotation.__name__ if annotation in (int, float, bool, str) else None


def column_kinds(model: type[Record]) -> dict[str, str]:
    """Each scalar field of `model` and its kind: the dtypes of the table its records are read into."""
    kinds = {name: _scalar_kind(field.annotation) for name, field in model.model_fields.items()}
    return {name: kind for name, kind in kinds.items() if kind is not None}


def check_schema_version(document: dict[str, Any], where: str) -> int:
    """The run-directory schema `document` (a config.json) was written with; a UserError if this
    flowperf cannot read it."""
    version = document.get("schema_version", FIRST_RUN_SCHEMA_VERSION)
    if not isinstance(version, int) or not FIRST_RUN_SCHEMA_VERSION <= version <= RUN_SCHEMA_VERSION:
        raise UserError(
            f"{where}: run-directory schema {version!r} is not one this flowperf reads "
            f"({FIRST_RUN_SCHEMA_VERSION} to {RUN_SCHEMA_VERSION}); use the flowperf that wrote it"
        )
    return version


class HistogramDelta(Record):
    """What one histogram observed in one scrape interval: cumulative bucket counts (`counts[i]`
    observations <= `le[i]`; the +Inf bucket is `count`), and the sum of the observed values."""

    le: list[float]
    counts: list[float]
    count: float
    sum: float


class EngineSample(Record):
    """One scrape of one server's metrics (`engine_metrics.jsonl`, type `sample`).

    `t_ms`: when the page was read (the response complete), as an offset from the session's
    measured-window start on the harness perf_counter clock, like a step's start_offset_ms.
    `interval_ms` is the time since this server's previous sample (None for the first, which only
    sets the baseline). Gauges are values at `t_ms`; counters and histograms are what accrued during
    the interval (a counter that went down restarted: its delta is its new value). Series are keyed
    by metric family name (a counter without `_total`), summed over label sets (vLLM's engine index
    and model name); a histogram with no observations in the interval is left out."""

    type: Literal["sample"] = "sample"
    session: int
    server: str
    t_ms: float
    interval_ms: float | None = None
    gauges: dict[str, float] = Field(default_factory=dict)
    counters: dict[str, float] = Field(default_factory=dict)
    histograms: dict[str, HistogramDelta] = Field(default_factory=dict)
    resets: list[str] | None = Field(default=None, description="counters found lower than before")


class ScrapeGap(Record):
    """A scrape that failed or timed out (`engine_metrics.jsonl`, type `gap`): the series has a hole
    here, and the next good sample's deltas span the hole."""

    type: Literal["gap"] = "gap"
    session: int
    server: str
    t_ms: float
    error: str

    @field_validator("error")
    @classmethod
    def _fold_error(cls, value: str) -> str:
        return one_line(value)


class ServerSeries(Record):
    """What a server exposed, said once per session (`engine_metrics.jsonl`, type `server`): whether
    it looked like vLLM, and which of the vLLM series flowperf reads it lacked."""

    type: Literal["server"] = "server"
    session: int
    server: str
    vllm: bool
    families: int
    missing: list[str] = Field(default_factory=list)
    endpoint: int | None = Field(
        default=None, ge=0, description="its position among the engine's servers (steps' `endpoint`)"
    )


EngineMetricRecord = EngineSample | ScrapeGap | ServerSeries
"""Any record of engine_metrics.jsonl; its `type` field tells which."""
ENGINE_METRIC_RECORD = TypeAdapter(Annotated[EngineMetricRecord, Field(discriminator="type")])


def engine_metric_line(record: EngineMetricRecord) -> str:
    return record.model_dump_json(exclude_none=True) + "\n"
