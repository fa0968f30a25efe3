"""Command-line options declared once: each sets a real RunConfig field, shows that field's default, and
reaches the validated config the commands run with; `--html` takes an optional value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flowperf.cli import common as cli_common
from flowperf.cli import main as cli
from flowperf.cli.options import (
    ENGINE,
    FLOW,
    GROUPS,
    HTML_DEFAULT,
    ConfigFlags,
    ConfigOption,
    config_flags,
    default_text,
    help_text,
    html_path,
    option,
    with_options,
)
from flowperf.config import RunConfig, load_run_config

ALL_OPTIONS = [entry for group in GROUPS.values() for entry in group]
BY_FLAG = {entry.flag: entry for entry in ALL_OPTIONS}


class Stop(Exception):
    """Raised by a stand-in for the engine side, once the command has built its config."""


def command(*path: str) -> Any:
    found = typer.main.get_command(cli.app)
    for name in path:
        found = found.commands[name]
    return found


def option_help(*path: str) -> dict[str, str]:
    return {param.opts[0]: param.help or "" for param in command(*path).params if param.opts}


def model_default(path: str) -> Any:
    value: Any = RunConfig()
    for name in path.split("."):
        value = getattr(value, name)
    return value


# (a) every option sets a real field


def test_every_option_sets_a_leaf_field_of_run_config() -> None:
    paths = [path for entry in ALL_OPTIONS for path in entry.paths]
    for path in paths:
        RunConfig.field_at(path)
    assert len(paths) == len(set(paths)), "two options set the same field"
    assert len(BY_FLAG) == len(ALL_OPTIONS), "two options share a flag"
    assert RunConfig.overrides_from_flags(dict.fromkeys(paths, 1)).keys() >= {"engine", "output", "monitor"}


@pytest.mark.parametrize("path", ["engine.kv_cache_gb", "engin.kv_cache_gib", "engine", "seed.x", ""])
def test_a_path_that_names_no_field_fails(path: str) -> None:
    with pytest.raises(KeyError):
        RunConfig.field_at(path)
    with pytest.raises(KeyError):
        RunConfig.overrides_from_flags({path: 1})


def test_declaring_an_option_with_a_mistyped_path_fails() -> None:
    typo = (option("engine.kv_cache_gb", "--kv-cache-gib", help="KV-cache memory in GiB."),)

    def bench_something(*, flags: ConfigFlags) -> None:
        pass

    with pytest.raises(KeyError, match="kv_cache_gb"):
        with_options(typo)(bench_something)


# (b) --help shows the model's default, stated nowhere else


def shown(entry: ConfigOption, default: Any) -> str:
    if isinstance(default, bool):
        return entry.decls[0].split("/")[0 if default else 1].lstrip("-")
    return f"{default:g}" if isinstance(default, float) else str(default)


@pytest.mark.parametrize("entry", ALL_OPTIONS, ids=lambda entry: entry.flag)
def test_help_default_is_the_models_default(entry: ConfigOption) -> None:
    default = model_default(entry.paths[0])
    text = help_text(entry)
    assert "Default:" not in entry.help and "[default:" not in entry.help, "state defaults in the model"
    if default is None or default == {}:
        assert default_text(entry) == entry.unset
    elif isinstance(default, bool) and "/" not in entry.decls[0]:
        assert default is False and entry.unset is None and text == entry.help
    else:
        assert entry.unset is None, "unset describes a None default only"
        assert text == f"{entry.help} [default: {shown(entry, default)}]"


def test_run_help_shows_model_defaults() -> None:
    helps = option_help("run")
    assert helps["--num-flows"].endswith("[default: 25]")
    assert helps["--kv-cache-gib"].endswith(
        "[default: 1 on CPU; on GPU vLLM's own share of GPU memory (0.9)]"
    )
    assert helps["--sample-interval"].endswith("[default: 0.25]")
    assert helps["--out"].endswith("[default: runs]")
    assert helps["--reset-prefix-cache"].endswith("[default: reset-prefix-cache]")
    assert helps["--block-size"].endswith("[default: 32 on CPU]")
    assert "[default:" not in helps["--fail-fast"]


COMMAND_FLAGS = {
    ("run",): """--api --api-key-env --base-url --block-size --compiled --concurrency --config
        --cuda-graph-sizes --cuda-graphs --eager --engine --engine-arg --executor --fail-fast --fixtures-dir
        --flow --flows-dir --grace-s --keep-prefix-cache --kv-cache-gib --leak-threshold-mb --max-model-len
        --max-servers --max-tokens --model --model-preset --no-cuda-graphs --no-progress --num-flows --out
        --pin-harness --no-pin-harness
        --progress --rate --ray-address --reset-prefix-cache --resume --routing --run-id --sample-interval
        --save-text --seed --server-port --step-timeout-s --warmup --workers -c -n
        --no-server-metrics --server-metrics --server-metrics-interval --with-server-metrics""",
    ("doctor",): """--block-size --fixtures-dir --flow --flows-dir --json --kv-cache-gib --max-tokens --model
        --model-preset --num-flows -n""",
    ("serve", "start"): """--block-size --compiled --config --cuda-graph-sizes --cuda-graphs --eager
        --engine-arg --fixtures-dir --gpus-per-replica --kv-cache-gib --max-model-len --max-servers --model
        --model-preset --no-cuda-graphs --replicas --seed --server-port -c""",
    ("expand",): "--flow --flows-dir --force --num-flows -n",
}


@pytest.mark.parametrize("path", COMMAND_FLAGS, ids=" ".join)
def test_each_command_keeps_its_flags(path: tuple[str, ...]) -> None:
    """The flags and aliases each command had before its options were declared in groups."""
    params = command(*path).params
    flags = {flag for param in params for flag in [*param.opts, *getattr(param, "secondary_opts", [])]}
    assert flags == set(COMMAND_FLAGS[path].split())


# (c) flags reach the validated config


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """The configs the commands built, each command stopped right after the merge, before any engine,
    model or file work."""
    configs: list[RunConfig] = []

    def merge_then_stop(*args: Any, **kwargs: Any) -> RunConfig:
        configs.append(load_run_config(*args, **kwargs))
        raise Stop

    monkeypatch.setattr(cli_common, "load_run_config", merge_then_stop)
    return configs


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli.app, list(args))
    assert isinstance(result.exception, Stop), (result.exception, result.output)
    return result


def test_run_without_flags_is_the_default_config(captured: list[RunConfig]) -> None:
    invoke("run", "--no-progress")
    assert captured == [RunConfig()]


def test_run_flags_set_their_fields(captured: list[RunConfig]) -> None:
    invoke(
        "run", "-n", "7", "--flow", "plan_draft_check", "--max-tokens", "8", "--rate", "2.5",
        "--engine", "openai", "--base-url", "http://127.0.0.1:9", "--api", "chat", "--model", "m",
        "--no-cuda-graphs", "--cuda-graph-sizes", "1,2,4", "--compiled", "--kv-cache-gib", "0.5",
        "--seed", "11", "--keep-prefix-cache", "--sample-interval", "0", "--leak-threshold-mb", "5",
        "--out", "elsewhere", "--run-id", "r1", "--save-text", "--fail-fast", "--grace-s", "3",
        "--no-progress",
    )  # fmt: skip
    (config,) = captured
    assert (config.num_flows, config.flow, config.max_tokens, config.rate) == (7, "plan_draft_check", 8, 2.5)
    engine = config.engine
    assert (engine.kind, engine.base_url, engine.api, engine.model) == (
        "openai",
        "http://127.0.0.1:9",
        "chat",
        "m",
    )
    assert engine.cuda_graphs is False and engine.enforce_eager is False
    assert engine.cudagraph_capture_sizes == [1, 2, 4] and engine.kv_cache_gib == 0.5
    assert config.seed == engine.seed == 11
    assert config.reset_prefix_cache is False
    assert (config.monitor.sample_interval_s, config.monitor.leak_threshold_mb) == (0, 5)
    assert config.output.out_dir == Path("elsewhere") and config.output.run_id == "r1"
    assert config.output.save_text and config.fail_fast and config.grace_s == 3


def test_flags_override_the_file_which_overrides_defaults(captured: list[RunConfig], tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("num_flows = 9\nfail_fast = true\n[engine]\nmax_model_len = 1024\nkv_cache_gib = 2.0\n")
    invoke("run", "--config", str(path), "--kv-cache-gib", "3", "--no-progress")
    (config,) = captured
    assert (config.num_flows, config.fail_fast) == (9, True)
    assert (config.engine.max_model_len, config.engine.kv_cache_gib) == (1024, 3.0)
    assert config.engine.max_servers == RunConfig().engine.max_servers


def test_resume_starts_from_the_recorded_config(
    captured: list[RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = RunConfig.model_validate({"num_flows": 7, "fail_fast": True, "output": {"save_text": True}})
    monkeypatch.setattr(cli_common, "recorded_config", lambda run_dir: recorded.model_dump(mode="json"))
    invoke("run", "--resume", "runs/x", "--seed", "4", "--no-progress")
    (config,) = captured
    assert config.fail_fast and config.output.save_text, "an on-only flag left out must not turn it off"
    assert config.num_flows == 7 and config.seed == config.engine.seed == 4


def test_serve_start_is_always_a_server(captured: list[RunConfig]) -> None:
    invoke("serve", "start", "--server-port", "8123", "--max-servers", "2", "--seed", "3")
    (config,) = captured
    assert config.engine.kind == "server"
    assert (config.engine.server_port, config.engine.max_servers, config.engine.seed) == (8123, 2, 3)


def test_doctor_and_expand_take_their_flags(captured: list[RunConfig]) -> None:
    invoke("doctor", "-n", "5", "--max-tokens", "16", "--block-size", "64", "--kv-cache-gib", "0.25")
    invoke("expand", "--flow", "plan_draft_check", "-n", "3")
    doctor, expand = captured
    assert (doctor.num_flows, doctor.max_tokens) == (5, 16)
    assert (doctor.engine.block_size, doctor.engine.kv_cache_gib) == (64, 0.25)
    assert expand.flow == "plan_draft_check"


def test_only_given_options_become_flags() -> None:
    given = {"num_flows": 3, "seed": 0, "cuda_graphs": False, "cuda_graph_sizes": "8,16", "flow": None}
    assert config_flags([*FLOW, *ENGINE], given) == {
        "num_flows": 3,
        "seed": 0,
        "engine.seed": 0,
        "engine.cuda_graphs": False,
        "engine.cudagraph_capture_sizes": [8, 16],
    }


# (d) --html alone, with a path, or before another option


@pytest.mark.parametrize(
    ("args", "run_dir", "html", "as_json"),
    [
        (["RUN"], "RUN", None, False),
        (["RUN", "--html"], "RUN", HTML_DEFAULT, False),
        (["RUN", "--html", "page.html"], "RUN", "page.html", False),
        (["RUN", "--html=page.html"], "RUN", "page.html", False),
        (["RUN", "--html", "--json"], "RUN", HTML_DEFAULT, True),
        (["--html", "--json", "RUN"], "RUN", HTML_DEFAULT, True),
        (["--json", "--html", "--", "--html"], "--html", HTML_DEFAULT, True),
    ],
)
def test_report_html_forms(args: list[str], run_dir: str, html: str | None, as_json: bool) -> None:
    params = command("report").make_context("report", args).params
    assert (params["run_dir"], params["html"], params["as_json"]) == (Path(run_dir), html, as_json)


def test_compare_html_before_another_option() -> None:
    context = command("compare").make_context("compare", ["A", "B", "--html", "--force"])
    assert (context.params["html"], context.params["force"]) == (HTML_DEFAULT, True)


def test_html_path() -> None:
    default = Path("run/report.html")
    assert html_path(None, default) is None
    assert html_path(HTML_DEFAULT, default) == default
    assert html_path("x.html", default) == Path("x.html")
