"""Run configuration: one validated RunConfig built from a TOML file and command-line flags.

Precedence is flags > config file > defaults, merged once here so no other module ever looks at flags or
files. Flags name the field they set by its dotted path (`engine.kv_cache_gib`); the model resolves those
paths, so the command line never restates the model's shape.

The fingerprint covers everything that changes what a run measures (not where it is written), so
a resumed run can prove it continues the same experiment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from flowperf.engines.engine_args import check_engine_args, own_engine_arg_problem
from flowperf.engines.presets import PRESETS
from flowperf.errors import UserError
from flowperf.validation import describe_validation_error, load_toml_mapping

GIB = 1024**3
CPU_DEFAULT_KV_CACHE_GIB = 1.0  # vLLM-CPU would otherwise reserve most of the machine's RAM
KV_SIZING_ENGINE_ARGS = ("kv_cache_memory_bytes", "gpu_memory_utilization")
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
HTTP_URL = r"^https?://"
HttpUrl = Annotated[str, StringConstraints(pattern=HTTP_URL)]


def replicas_problem(urls: list[str]) -> str | None:
    """Why these base URLs cannot be the replicas of one deployment, if they cannot: none at all, or one
    listed twice (which would silently give that replica a double share)."""
    if not urls:
        return "an empty list names no server"
    seen = [url.rstrip("/") for url in urls]
    twice = next((url for index, url in enumerate(seen) if url in seen[:index]), None)
    return None if twice is None else f"{twice} is listed twice"


class EngineConfig(BaseModel):
    """Which engine to drive and how to start it. `None` means: the right default for this device.

    kind: `vllm` in process; `openai` any OpenAI-compatible server at `base_url` (or a list of replicas of
    one deployment, shared out by `routing`); `server` a persistent local vLLM server flowperf starts once
    and reuses across runs.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["vllm", "openai", "server"] = "vllm"
    model: str | None = Field(
        default=None, description="model directory (for openai: the served model name); None: tiny model"
    )
    model_preset: PresetName | None = Field(
        default=None, description="a published architecture, loaded with dummy weights (engines/presets.py)"
    )
    dtype: str = "auto"
    max_model_len: int = Field(default=10240, ge=16)
    block_size: int | None = Field(default=None, ge=1, description="KV block size; CPU default 32")
    kv_cache_gib: float | None = Field(
        default=None, gt=0, description="KV-cache memory; None: 1 GiB on CPU, vLLM's default on GPU"
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="fraction of device memory (on CPU: of RAM) vLLM may use"
    )
    enforce_eager: bool | None = Field(default=None, description="None: eager on CPU, compiled on GPU")
    cuda_graphs: bool = True
    cudagraph_capture_sizes: list[int] | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    enable_prefix_caching: bool = True
    seed: int = 0
    pin_harness: bool = Field(
        default=True,
        description="in-process engine: move this process's threads off the cores vLLM binds its CPU compute "
        "threads to (nothing moves on GPU)",
    )
    extra_engine_args: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments passed through (--engine-arg KEY=VALUE)"
    )
    base_url: HttpUrl | list[HttpUrl] | None = Field(
        default=None, description="the server, or a list of replicas of one deployment (--base-url repeated)"
    )
    routing: Literal["session", "round-robin"] = Field(
        default="session",
        description="with several base URLs: each workflow to one replica (its prefix cache reused), or "
        "each request to the next replica",
    )
    api: Literal["completions", "chat"] = "completions"
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)
    server_port: int | None = Field(default=None, ge=1, le=65535)
    max_servers: int = Field(default=3, ge=1)
    server_start_timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _replicas_are_distinct(cls, value: str | list[str] | None) -> str | list[str] | None:
        """A list of one is that one server, so it has the config and fingerprint a single URL always had."""
        if not isinstance(value, list):
            return value
        problem = replicas_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value[0] if len(value) == 1 else value

    @property
    def base_urls(self) -> list[str]:
        """Every base URL given, in order (empty when none is)."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    @model_validator(mode="after")
    def _openai_needs_a_server(self) -> EngineConfig:
        if self.kind == "openai" and self.base_url is None:
            raise ValueError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000)")
        return self

    @model_validator(mode="after")
    def _engine_flowperf_starts(self) -> EngineConfig:
        """A preset or pass-through engine arguments shape an engine flowperf starts; a server at
        --base-url was started by someone else, so asking for them there would silently do nothing."""
        if self.model is not None and self.model_preset is not None:
            raise ValueError("--model and --model-preset both name the model; give one")
        if self.kind == "openai" and (self.model_preset is not None or self.extra_engine_args):
            given = "--model-preset" if self.model_preset is not None else "--engine-arg"
            raise ValueError(f"{given} needs an engine flowperf starts (--engine vllm or server)")
        for key in self.extra_engine_args:
            problem = own_engine_arg_problem(key, self.model_preset)
            if problem is not None:
                raise ValueError(f"extra_engine_args.{problem}")
        return self

    @model_validator(mode="after")
    def _kv_cache_sized_once(self) -> EngineConfig:
        """vLLM lets an explicit KV-cache size silently override the memory fraction; someone who set
        both meant one of them, so say so rather than guess."""
        given = [
            label
            for name, label in (
                ("kv_cache_gib", "kv_cache_gib (--kv-cache-gib)"),
                ("gpu_memory_utilization", "gpu_memory_utilization"),
            )
            if getattr(self, name) is not None
        ]
        given += [
            f"extra_engine_args.{key}" for key in KV_SIZING_ENGINE_ARGS if key in self.extra_engine_args
        ]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} both size the KV cache; set only one")
        return self

    @property
    def kv_cache_sized_by_extra_args(self) -> bool:
        return any(key in self.extra_engine_args for key in KV_SIZING_ENGINE_ARGS)


class OutputConfig(BaseModel):
    """Where results go; not part of the fingerprint."""

    model_config = ConfigDict(extra="forbid")

    out_dir: Path = Path("runs")
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    save_text: bool = False
    summary_every: int = Field(default=10, ge=1, description="rewrite summary.json every this many workflows")
    summary_interval_s: float = Field(default=15.0, ge=0, description="...and at most this often")
    slo: str | None = Field(
        default=None,
        description="objectives the summary judges sessions (workflows) against, e.g. "
        "session_p95_ms=60000,ttft_p99_ms=2000 (rundir/slo.py)",
    )

    @field_validator("slo")
    @classmethod
    def _objectives_parse(cls, value: str | None) -> str | None:
        """Checked when the run is configured, never first when its summary is written."""
        from flowperf.rundir.slo import parse_slos

        if value is not None:
            try:
                parse_slos(value, "slo")
            except UserError as error:
                raise ValueError(str(error)) from None
        return value


NOT_FINGERPRINTED: dict[str, Any] = {
    "output": True,
    "monitor": True,
    "grace_s": True,
    "client": True,
    "engine": {"connect_timeout_s", "server_port", "max_servers", "server_start_timeout_s"},
}


class MonitorConfig(BaseModel):
    """The resource monitor; watching does not change what is measured, so not in the fingerprint."""

    model_config = ConfigDict(extra="forbid")

    sample_interval_s: float = Field(default=0.25, ge=0, description="0 turns sampling off")
    leak_threshold_mb: float = Field(
        default=2.0, gt=0, description="warn above this RSS growth per 100 steps"
    )
    server_metrics: bool = Field(
        default=True, description="read the engines' Prometheus metrics during the measured window"
    )
    server_metrics_interval_s: float = Field(
        default=0.25, gt=0, le=60, description="how often each metrics page is read, s"
    )
    server_metrics_urls: list[HttpUrl] = Field(
        default_factory=list, description="extra Prometheus endpoints to read (a router, another server)"
    )


class ClientConfig(BaseModel):
    """How the load is generated: the client processes sending it. Not part of the fingerprint: two
    workers sending a schedule measure the same experiment as one that keeps up with it."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(default=1, ge=1, le=256, description="client processes sending the load")
    executor: Literal["process", "ray"] = Field(
        default="process", description="workers as processes on this host, or as Ray actors"
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster to run the actors on; None: a local one, started and stopped"
    )


class TraceConfig(BaseModel):
    """`bench replay`: which trace, which window of it, at what speed (the loader's flags, see
    `flowperf.stress.traces.load_trace`)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="a shipped trace's name or a trace file")
    token_scale: float = Field(default=1.0, gt=0, description="multiply every prompt and output length")
    max_requests: int | None = Field(default=None, ge=1, description="replay at most this many requests")
    start_s: float | None = Field(default=None, ge=0, description="window start, s into the trace")
    duration_s: float | None = Field(default=None, gt=0, description="window length, s")
    time_scale: float = Field(default=1.0, gt=0, description="replay this many times faster than recorded")
    think_time: str = Field(
        default="recorded",
        pattern=r"^(recorded|zero|scale:[0-9]*\.?[0-9]+)$",
        description="a session trace's pauses: as recorded, none, or recorded times F (scale:F)",
    )
    sessions: int | None = Field(
        default=None, ge=1, le=4096, description="a session trace closed loop: this many sessions in flight"
    )
    max_sessions: int | None = Field(default=None, ge=1, description="replay at most this many sessions")


SESSION_DEFAULTS: dict[str, Any] = {"think_time": "recorded", "sessions": None, "max_sessions": None}


class RunConfig(BaseModel):
    """Everything `bench run` (and, with `trace`, `bench replay`) needs, validated once."""

    model_config = ConfigDict(extra="forbid")

    flow: str = "summarize_critique_refine"
    flows_dir: Path = Path("flows")
    fixtures_dir: Path = Field(default=Path("fixtures"), description="corpus for the tiny model")
    num_flows: int = Field(default=25, ge=1, le=10_000_000)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    concurrency: int | None = Field(
        default=None, ge=1, le=4096, description="workflows in flight: default 1, or no cap with `rate`"
    )
    rate: float | None = Field(
        default=None, gt=0, description="open loop: Poisson workflow arrivals per second"
    )
    seed: int = 0
    step_timeout_s: float | None = Field(default=None, gt=0, description="fail a step that takes longer")
    fail_fast: bool = False
    grace_s: float = Field(default=30.0, ge=0, description="how long in-flight steps may finish on Ctrl-C")
    warmup: int = Field(default=1, ge=0, description="extra workflows first, left out of every statistic")
    reset_prefix_cache: bool = Field(default=True, description="empty the prefix cache before measuring")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    trace: TraceConfig | None = None
    client: ClientConfig = Field(default_factory=ClientConfig)

    @model_validator(mode="after")
    def _workers_need_http(self) -> RunConfig:
        """Client workers send over HTTP: an in-process engine serves only the process that holds it."""
        client = self.client
        if (client.workers > 1 or client.executor == "ray") and self.engine.kind == "vllm":
            raise ValueError(
                f"--workers {client.workers} / --executor {client.executor}: an in-process engine serves "
                "only its own process; use --engine server or --engine openai"
            )
        return self

    @property
    def open_loop(self) -> bool:
        """Arrivals on a schedule (Poisson at `rate`, or a replayed trace's timestamps) rather than as
        soon as a slot frees."""
        return self.rate is not None or (self.trace is not None and self.trace.sessions is None)

    @property
    def effective_concurrency(self) -> int | None:
        """Workflows in flight at most: 1 by default closed loop; no cap (None) open loop unless given."""
        if self.trace is not None and self.trace.sessions is not None:
            return self.trace.sessions
        return self.concurrency if self.open_loop else (self.concurrency or 1)

    @classmethod
    def field_at(cls, path: str) -> FieldInfo:
        """The leaf field a dotted path names; KeyError for anything else, so a mistyped path fails loudly
        where options are declared instead of silently setting nothing."""
        model: type[BaseModel] = cls
        *parents, leaf = path.split(".")
        for name in parents:
            parent = model.model_fields.get(name)
            section = None if parent is None else _model_of(parent.annotation)
            if section is None:
                raise KeyError(f"RunConfig has no section {name!r} (in {path!r})")
            model = section
        field = model.model_fields.get(leaf)
        if field is None or _model_of(field.annotation) is not None:
            raise KeyError(f"RunConfig has no field {path!r}")
        return field

    @classmethod
    def check_value(cls, path: str, value: Any) -> None:
        """Validate one value against its field alone (ValidationError if it does not fit), so a bad flag
        can be reported under its own name rather than as a field of the merged config."""
        field = cls.field_at(path)
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        TypeAdapter(annotation).validate_python(value)

    @classmethod
    def overrides_from_flags(cls, flags: Mapping[str, Any]) -> dict[str, Any]:
        """Nest `{"engine.seed": 1}` into `{"engine": {"seed": 1}}`, the shape `load_run_config` merges."""
        overrides: dict[str, Any] = {}
        for path, value in flags.items():
            cls.field_at(path)
            *parents, leaf = path.split(".")
            section = overrides
            for name in parents:
                section = section.setdefault(name, {})
            section[leaf] = value
        return overrides

    def shaping_config(self) -> dict[str, Any]:
        """The settings that shape what a run measures (not where results go or how it stops); a run
        without a trace, a model preset or replicas, and with the default harness placement, has the shape
        (and fingerprint) it had before those existed."""
        shaping = self.model_dump(mode="json", exclude=NOT_FINGERPRINTED)
        if shaping["trace"] is None:
            del shaping["trace"]
        else:
            for name in SESSION_DEFAULTS:  # a request trace's replay keeps the shape it had before sessions
                if shaping["trace"][name] == SESSION_DEFAULTS[name]:
                    del shaping["trace"][name]
        if shaping["engine"]["model_preset"] is None:
            del shaping["engine"]["model_preset"]
        if shaping["engine"]["pin_harness"]:
            del shaping["engine"]["pin_harness"]
        if len(self.engine.base_urls) < 2:  # routing means nothing with one server
            del shaping["engine"]["routing"]
        return shaping

    def fingerprint(self) -> str:
        """sha256 of the shaping settings: equal fingerprints measure the same experiment."""
        return hashlib.sha256(json.dumps(self.shaping_config(), sort_keys=True).encode()).hexdigest()


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings section an annotation holds (`Section` or `Section | None`), else None."""
    candidates = [arg for arg in get_args(annotation) if arg is not type(None)] or [annotation]
    if len(candidates) == 1 and isinstance(candidates[0], type) and issubclass(candidates[0], BaseModel):
        return candidates[0]
    return None


def differences(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """`field (old -> new)` for every leaf that differs between two settings documents."""
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key} ({old!r} -> {new!r})")
    return changed


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict):
            existing = merged.get(key)
            merged[key] = _deep_merge(existing if isinstance(existing, dict) else {}, value)
        elif value is not None:
            merged[key] = value
    return merged


def load_run_config(
    config_path: Path | None, overrides: dict[str, Any], base: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults (or `base`, a resumed run's settings), then the TOML file, then the flags in `overrides`.

    `overrides` mirrors RunConfig's shape (see `RunConfig.overrides_from_flags`); None values mean "flag not
    given".
    """
    from_file = load_toml_mapping(config_path) if config_path is not None else {}
    file_engine_args = (from_file.get("engine") or {}).get("extra_engine_args")
    if file_engine_args and isinstance(file_engine_args, dict):
        check_engine_args(file_engine_args, f"{config_path}: engine.extra_engine_args")
    try:
        return RunConfig.model_validate(_deep_merge(_deep_merge(base or {}, from_file), overrides))
    except ValidationError as error:
        source = (
            str(config_path)
            if config_path is not None
            else "settings (flags or the resumed run's config.json)"
        )
        raise UserError(f"{source}: {describe_validation_error(error)}") from None
