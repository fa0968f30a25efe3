"""Command-line options, declared once and shared by every command that takes them.

A config option names the RunConfig field it sets by its dotted path; its type, bounds and the default
shown in `--help` are read from that field, so the model states them once and the help cannot drift from
it. `with_options` adds groups of them to a Typer command and hands the command the ones given as one
flat mapping of dotted paths, which `RunConfig.overrides_from_flags` nests for `load_run_config`.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, cast, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from typer.core import TyperCommand

from flowperf.config import HTTP_URL, RunConfig, replicas_problem
from flowperf.errors import UserError
from flowperf.validation import describe_validation_error

ENGINE_PANEL = "Engine"
MEASUREMENT_PANEL = "Measurement"
RESULTS_PANEL = "Results and crash safety"

ConfigFlags = dict[str, Any]
"""The config options given on the command line: dotted RunConfig path -> value; absent ones left out."""

Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class ConfigOption:
    """One command-line option and the RunConfig field(s) it sets.

    The first path's field gives the option its type, bounds and default; `unset` says in words what that
    field's None default means (e.g. "a free one"), since None itself says nothing to a user. `parse`
    turns the command-line text into the field's type where the two differ (a comma-separated list).
    """

    decls: tuple[str, ...]
    paths: tuple[str, ...]
    help: str
    panel: str | None = None
    unset: str | None = None
    parse: Callable[[Any], Any] | None = None
    repeatable: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return self.decls[0].split("/")[0]

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def field(self) -> FieldInfo:
        return RunConfig.field_at(self.paths[0])


def option(
    path: str,
    *decls: str,
    help: str,
    panel: str | None = None,
    unset: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    also: tuple[str, ...] = (),
    repeatable: bool = False,
    metavar: str | None = None,
) -> ConfigOption:
    """A config option setting `path` (and the paths in `also`, to the same value)."""
    return ConfigOption(decls, (path, *also), help, panel, unset, parse, repeatable, metavar)


def positive_whole_numbers(text: str) -> list[int]:
    """`1,2,4,8` as a list, so a list setting is one flag rather than one flag per value."""
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError("expected comma-separated whole numbers, e.g. 1,2,4,8") from None
    if not numbers or any(number < 1 for number in numbers):
        raise ValueError("expected positive whole numbers")
    return numbers


def base_urls(items: list[str]) -> str | list[str]:
    """One `--base-url` is the server (a string, as it always was); several are replicas of one
    deployment (a list). Each is checked here so the error names the URL at fault."""
    for url in items:
        if not re.match(HTTP_URL, url):
            raise UserError(f"--base-url {url}: not an http:// or https:// URL")
    problem = replicas_problem(items)
    if problem is not None:
        raise UserError(f"--base-url: {problem}")
    return items[0] if len(items) == 1 else items


def engine_args(items: list[str]) -> dict[str, Any]:
    """Repeated `KEY=VALUE` items, checked against vLLM's engine arguments (engines/engine_args.py)."""
    from flowperf.engines.engine_args import parse_engine_args

    return parse_engine_args(items)


FLOW = (
    option("flow", "--flow", help="Flow name in --flows-dir, or a path to a flow template YAML."),
    option("flows_dir", "--flows-dir", help="Where flow templates live."),
    option("num_flows", "--num-flows", "-n", help="How many workflows to run."),
)
MODEL = (
    option(
        "engine.model",
        "--model",
        panel=ENGINE_PANEL,
        help="Local model directory (for --engine openai: the served model name).",
        unset="the embedded tiny model, built on first use",
    ),
    option(
        "engine.model_preset",
        "--model-preset",
        panel=ENGINE_PANEL,
        help="A published architecture with dummy weights, nothing downloaded (see bench doctor).",
    ),
    option("fixtures_dir", "--fixtures-dir", help="Corpus for the tiny model's tokenizer."),
)
ENDPOINT = (
    option(
        "engine.kind",
        "--engine",
        panel=ENGINE_PANEL,
        help="vllm: in-process engine; server: a persistent local vLLM server, started once and reused "
        "across runs; openai: any OpenAI-compatible server at --base-url.",
    ),
    option(
        "engine.base_url",
        "--base-url",
        panel=ENGINE_PANEL,
        help="OpenAI-compatible server for --engine openai; repeat it for replicas of one deployment.",
        parse=base_urls,
        repeatable=True,
        metavar="URL",
    ),
    option(
        "engine.routing",
        "--routing",
        panel=ENGINE_PANEL,
        help="With several --base-url: session sends each workflow to one replica (index mod N, its "
        "prefix cache reused); round-robin sends each request to the next.",
    ),
    option(
        "engine.api",
        "--api",
        panel=ENGINE_PANEL,
        help="completions, or chat for models with a chat template.",
    ),
    option(
        "engine.api_key_env",
        "--api-key-env",
        panel=ENGINE_PANEL,
        help="Environment variable holding the API key (never written anywhere).",
    ),
)
ENGINE = (
    option(
        "engine.cuda_graphs",
        "--cuda-graphs/--no-cuda-graphs",
        panel=ENGINE_PANEL,
        help="CUDA graphs on GPU; --no-cuda-graphs runs eagerly for A/B.",
    ),
    option(
        "engine.cudagraph_capture_sizes",
        "--cuda-graph-sizes",
        panel=ENGINE_PANEL,
        help="Batch sizes to capture CUDA graphs for, e.g. 1,2,4,8.",
        parse=positive_whole_numbers,
    ),
    option(
        "engine.enforce_eager",
        "--eager/--compiled",
        panel=ENGINE_PANEL,
        help="Eager execution or torch.compile.",
        unset="eager on CPU, compiled on GPU",
    ),
    option(
        "engine.pin_harness",
        "--pin-harness/--no-pin-harness",
        panel=ENGINE_PANEL,
        help="In-process engine on CPU: keep the harness's threads off the cores vLLM computes on (one "
        "engine speed from run to run).",
    ),
    option("engine.max_model_len", "--max-model-len", panel=ENGINE_PANEL, help="Context length."),
    option(
        "engine.block_size",
        "--block-size",
        panel=ENGINE_PANEL,
        help="KV-cache block size.",
        unset="32 on CPU",
    ),
    option(
        "engine.kv_cache_gib",
        "--kv-cache-gib",
        panel=ENGINE_PANEL,
        help="KV-cache memory in GiB.",
        unset="1 on CPU; on GPU vLLM's own share of GPU memory (0.9)",
    ),
    option(
        "engine.extra_engine_args",
        "--engine-arg",
        panel=ENGINE_PANEL,
        help="A vLLM engine argument KEY=VALUE (VALUE as JSON where it parses), e.g. "
        "tensor_parallel_size=2; repeatable. One flowperf sets itself (max_num_seqs, max_model_len, "
        "block_size, ...) is applied to that setting.",
        parse=engine_args,
        repeatable=True,
        metavar="KEY=VALUE",
    ),
    option(
        "seed",
        "--seed",
        also=("engine.seed",),
        panel=MEASUREMENT_PANEL,
        help="Seed for sampling and the engine.",
    ),
    option(
        "engine.server_port",
        "--server-port",
        panel=ENGINE_PANEL,
        help="Port for a managed server.",
        unset="a free one",
    ),
    option(
        "engine.max_servers",
        "--max-servers",
        panel=ENGINE_PANEL,
        help="Managed servers kept alive; the least recently used goes.",
    ),
)
MEASUREMENT = (
    option(
        "max_tokens",
        "--max-tokens",
        panel=MEASUREMENT_PANEL,
        help="Output tokens per step for every step (overrides the template).",
    ),
    option(
        "concurrency",
        "--concurrency",
        panel=MEASUREMENT_PANEL,
        help="Workflows (sessions) in flight at once; a session keeps its slot while it pauses for a tool.",
        unset="1, or no cap with --rate",
    ),
    option(
        "rate",
        "--rate",
        panel=MEASUREMENT_PANEL,
        help="Open loop: workflows arrive as a Poisson process at this many per second (seeded).",
    ),
    option(
        "step_timeout_s",
        "--step-timeout-s",
        panel=MEASUREMENT_PANEL,
        help="Fail a step that takes longer than this.",
    ),
    option(
        "warmup",
        "--warmup",
        panel=MEASUREMENT_PANEL,
        help="Extra workflows run first and left out of every statistic.",
    ),
    option(
        "reset_prefix_cache",
        "--reset-prefix-cache/--keep-prefix-cache",
        panel=MEASUREMENT_PANEL,
        help="Empty the prefix cache before the measured window (after warm-up).",
    ),
)
MONITOR = (
    option(
        "monitor.sample_interval_s",
        "--sample-interval",
        panel=MEASUREMENT_PANEL,
        help="Resource sampling period in seconds; 0 = off.",
    ),
    option(
        "monitor.leak_threshold_mb",
        "--leak-threshold-mb",
        panel=MEASUREMENT_PANEL,
        help="Warn when RSS grows faster, MB per 100 steps.",
    ),
    option(
        "monitor.server_metrics",
        "--with-server-metrics/--no-server-metrics",
        panel=MEASUREMENT_PANEL,
        help="Read the engines' own Prometheus metrics (queue, KV cache, preemptions) during the window.",
    ),
    option(
        "monitor.server_metrics_interval_s",
        "--server-metrics-interval",
        panel=MEASUREMENT_PANEL,
        help="How often each engine's metrics page is read, in seconds.",
    ),
    option(
        "monitor.server_metrics_urls",
        "--server-metrics",
        panel=MEASUREMENT_PANEL,
        help="An extra Prometheus endpoint to read (e.g. a router); repeat for several.",
        repeatable=True,
        metavar="URL",
    ),
)
TRACE_PANEL = "Trace"
TRACE = (
    option(
        "trace.time_scale",
        "--time-scale",
        panel=TRACE_PANEL,
        help="Replay the trace's own arrival times this many times faster (--rate: Poisson instead).",
    ),
    option(
        "trace.token_scale",
        "--token-scale",
        panel=TRACE_PANEL,
        help="Multiply every prompt and output length (and prefix block), e.g. 0.05 for a small machine.",
    ),
    option(
        "trace.max_requests",
        "--max-requests",
        panel=TRACE_PANEL,
        help="Replay at most this many.",
        unset="all",
    ),
    option("trace.start_s", "--start", panel=TRACE_PANEL, help="Window start, s into the trace.", unset="0"),
    option("trace.duration_s", "--duration", panel=TRACE_PANEL, help="Window length, s.", unset="to the end"),
)
SESSIONS_PANEL = "Session trace"
SESSIONS = (
    option(
        "trace.sessions",
        "--sessions",
        panel=SESSIONS_PANEL,
        help="Closed loop: this many sessions in flight, the next starting as one ends (with "
        "--session-rate: a cap on sessions in flight).",
        unset="the sessions' recorded start times (--time-scale)",
    ),
    option(
        "rate",
        "--session-rate",
        panel=SESSIONS_PANEL,
        help="Open loop: Poisson session arrivals per second; latency counts from the scheduled arrival.",
    ),
    option(
        "trace.think_time",
        "--think-time",
        panel=SESSIONS_PANEL,
        help="Pause before each request: recorded, zero, or scale:F (recorded times F); --time-scale "
        "divides it too.",
    ),
    option(
        "trace.max_sessions",
        "--max-sessions",
        panel=SESSIONS_PANEL,
        help="Replay at most this many.",
        unset="all",
    ),
    option(
        "output.slo",
        "--slo",
        panel=SESSIONS_PANEL,
        help="Objectives each session is judged against for goodput, e.g. session_p95_ms=60000,"
        "ttft_p99_ms=2000 (metrics: session, workflow, ttft, itl, tpot, step).",
    ),
)

CLIENT_PANEL = "Load generation"
CLIENT = (
    option(
        "client.workers",
        "--workers",
        panel=CLIENT_PANEL,
        help="Client processes sending the load (HTTP engines), each with its own event loop and "
        "connection pool; sessions are shared out by index, at most one worker per session slot.",
    ),
    option(
        "client.executor",
        "--executor",
        panel=CLIENT_PANEL,
        help="Workers as processes on this host, or as Ray actors (records streamed back here).",
    ),
    option(
        "client.ray_address",
        "--ray-address",
        panel=CLIENT_PANEL,
        help="Ray cluster (HOST:PORT) for --executor ray.",
        unset="a local one, started and stopped",
    ),
)

RESULTS = (
    option("output.out_dir", "--out", panel=RESULTS_PANEL, help="Root directory for run directories."),
    option(
        "output.run_id",
        "--run-id",
        panel=RESULTS_PANEL,
        help="Name of the run directory.",
        unset="time-flow-random",
    ),
    option(
        "output.save_text",
        "--save-text",
        panel=RESULTS_PANEL,
        help="Also store each step's prompt and output text in steps.jsonl.",
    ),
    option("fail_fast", "--fail-fast", panel=RESULTS_PANEL, help="Stop at the first failed workflow."),
    option(
        "grace_s", "--grace-s", panel=RESULTS_PANEL, help="On Ctrl-C, how long in-flight steps may finish."
    ),
)
SESSION_TRACE = (
    option(
        "trace.source",
        "--trace",
        panel=SESSIONS_PANEL,
        help="Replay a session trace (a file or a shipped sample's name) instead of the --flow, one "
        "workflow per session: bench sweep's --concurrency levels are sessions in flight, --rates "
        "sessions per second; bench ab's blocks are the next --block-workflows sessions.",
        unset="none: the --flow's workflows",
    ),
)

GROUPS = {
    "flow": FLOW,
    "model": MODEL,
    "endpoint": ENDPOINT,
    "engine": ENGINE,
    "measurement": MEASUREMENT,
    "monitor": MONITOR,
    "client": CLIENT,
    "results": RESULTS,
}


def only(group: tuple[ConfigOption, ...], *flags: str) -> tuple[ConfigOption, ...]:
    """The named options of a group, for a command that takes part of it."""
    chosen = tuple(entry for entry in group if entry.flag in flags)
    missing = set(flags) - {entry.flag for entry in chosen}
    if missing:
        raise KeyError(f"no such option in the group: {', '.join(sorted(missing))}")
    return chosen


def without(group: tuple[ConfigOption, ...], *flags: str) -> tuple[ConfigOption, ...]:
    """A group less the named options, for a command to which they do not apply."""
    unknown = set(flags) - {entry.flag for entry in group}
    if unknown:
        raise KeyError(f"no such option in the group: {', '.join(sorted(unknown))}")
    return tuple(entry for entry in group if entry.flag not in flags)


def default_text(entry: ConfigOption) -> str | None:
    """The field's default as `--help` shows it: a bool by the flag that selects it, None in words."""
    if entry.field.is_required():  # a section's required field (trace.source): what leaving it out means
        return entry.unset
    default = entry.field.get_default(call_default_factory=True)
    if default is None or default == {}:
        return entry.unset
    if isinstance(default, bool):
        on, _, off = entry.decls[0].partition("/")
        return (on if default else off).lstrip("-") or None
    return f"{default:g}" if isinstance(default, float) else str(default)


def help_text(entry: ConfigOption) -> str:
    shown = default_text(entry)
    return entry.help if shown is None else f"{entry.help} [default: {shown}]"


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        (kind,) = (arg for arg in get_args(annotation) if arg is not type(None))
        return kind
    return annotation


def _bounds(field: FieldInfo) -> dict[str, float]:
    """The field's closed bounds, which Typer checks and shows in --help; open ones (gt, lt) and other
    constraints are checked by `_flag_value` against the field itself."""
    bounds: dict[str, float] = {}
    for constraint in field.metadata:
        if getattr(constraint, "ge", None) is not None:
            bounds["min"] = constraint.ge
        if getattr(constraint, "le", None) is not None:
            bounds["max"] = constraint.le
    return bounds


def _parameter(entry: ConfigOption) -> inspect.Parameter:
    field = entry.field
    cli_type = list[str] if entry.repeatable else str if entry.parse else _without_none(field.annotation)
    declaration = typer.Option(
        *entry.decls,
        help=help_text(entry),
        rich_help_panel=entry.panel,
        metavar=entry.metavar,
        **_bounds(field),
    )
    return inspect.Parameter(
        entry.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[cli_type | None, declaration],
    )


def _flag_value(entry: ConfigOption, given: Any) -> Any:
    """The value as the field takes it, or a UserError naming the flag (not the merged config's field)
    worded like Typer's own range errors."""
    try:
        value = entry.parse(given) if entry.parse is not None else given
    except ValueError as error:
        raise UserError(f"{entry.flag} {given}: {error}") from None
    try:
        RunConfig.check_value(entry.paths[0], value)
    except ValidationError as error:
        raise UserError(f"Invalid value for '{entry.flag}': {describe_validation_error(error)}") from None
    return value


def config_flags(entries: Iterable[ConfigOption], values: dict[str, Any]) -> ConfigFlags:
    """The given options (None: not given, so a file's or a resumed run's value stands) by field path."""
    flags: ConfigFlags = {}
    for entry in entries:
        given = values.get(entry.name)
        if given is not None and given != []:
            flags |= dict.fromkeys(entry.paths, _flag_value(entry, given))
    return engine_settings_applied(flags, entries)


def with_options(*groups: tuple[ConfigOption, ...]) -> Callable[[Command], Command]:
    """Add the groups' options to a Typer command where it declares `flags`, and pass it them as one
    `ConfigFlags` mapping; the command keeps its own few non-config parameters. Typer reads the
    parameters from `__signature__` and their types from `__annotations__`, so both are replaced."""
    entries = [entry for group in groups for entry in group]

    def decorate(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True).parameters
        at = list(own).index("flags")
        kept = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in own.values()]
        parameters = [*kept[:at], *map(_parameter, entries), *kept[at + 1 :]]

        @functools.wraps(command)
        def with_flags(**values: Any) -> Any:
            given = {entry.name: values.pop(entry.name) for entry in entries}
            return command(**values, flags=config_flags(entries, given))

        with_flags.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        with_flags.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return cast(Command, with_flags)

    return decorate


ConfigFileOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (e.g. configs/default.toml); flags override it."),
]

HTML_DEFAULT = "<default>"
HtmlOption = Annotated[
    str | None,
    typer.Option("--html", help="Also write a self-contained HTML page: --html alone, or --html PATH."),
]


def html_path(value: str | None, default: Path) -> Path | None:
    """Where `--html` asked for the page: nowhere, the command's default path, or the path given."""
    return None if value is None else (default if value == HTML_DEFAULT else Path(value))


class HtmlCommand(TyperCommand):
    """A command whose `--html` may be given without a value, meaning its default page.

    Typer's parser has no options with an optional value, so a bare `--html` (last, or before another
    option) gets the sentinel value here, just before this command parses its own arguments.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _complete_bare_html(args))


def _complete_bare_html(args: list[str]) -> list[str]:
    end = args.index("--") if "--" in args else len(args)
    return [
        f"--html={HTML_DEFAULT}"
        if arg == "--html" and index < end and (index + 1 == end or args[index + 1].startswith("-"))
        else arg
        for index, arg in enumerate(args)
    ]


# Options several commands share that set no RunConfig field.
ResumeOption = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        rich_help_panel=RESULTS_PANEL,
        help="Continue an interrupted or crashed run directory: completed workflows are kept, the rest "
        "run. Uses the run's own settings; flags given must not change them.",
    ),
]

AlphaOption = Annotated[
    float, typer.Option("--alpha", min=0.0001, max=0.5, help="Significance level of a verdict.")
]
ThresholdOption = Annotated[
    float, typer.Option("--threshold", min=0, help="Smallest change (%) that counts, if significant.")
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")
]


def engine_settings_applied(flags: ConfigFlags, entries: Iterable[ConfigOption]) -> ConfigFlags:
    """`--engine-arg max_num_seqs=7` and the like applied to the flowperf setting they name (one value,
    recorded once); a flag that sets the same setting to another value is a one-line error naming both."""
    from flowperf.engines.engine_args import settings_from_engine_args

    if not flags.get("engine.extra_engine_args"):
        return flags
    passed, settings = settings_from_engine_args(flags["engine.extra_engine_args"])
    flag_of = {path: entry.decls[0].split("/")[0] for entry in entries for path in entry.paths}
    for path, value in settings.items():
        if path in flags and flags[path] != value:
            key = path.rpartition(".")[2]
            raise UserError(
                f"--engine-arg {key}={json.dumps(value)} and {flag_of.get(path, path)} "
                f"{json.dumps(flags[path])} both set {path}; give one"
            )
    applied = {path: value for path, value in flags.items() if path != "engine.extra_engine_args"}
    return applied | settings | ({"engine.extra_engine_args": passed} if passed else {})
