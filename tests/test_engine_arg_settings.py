"""`--engine-arg` with a flowperf-owned engine argument (vLLM's own name for a setting flowperf sets): the
value is applied to that setting and recorded there once; a flag that says otherwise is a one-line error;
arguments with no flowperf setting are still refused, naming the flag to use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flowperf.cli import common as cli_common
from flowperf.cli.main import app
from flowperf.config import RunConfig, load_run_config
from flowperf.errors import UserError


class Stop(Exception):
    """Raised right after the merge, so no engine, model or file work happens."""


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    configs: list[RunConfig] = []

    def merge_then_stop(*args: Any, **kwargs: Any) -> RunConfig:
        configs.append(load_run_config(*args, **kwargs))
        raise Stop

    monkeypatch.setattr(cli_common, "load_run_config", merge_then_stop)
    return configs


def invoke(*args: str) -> BaseException | None:
    return CliRunner().invoke(app, ["run", "--no-progress", *args]).exception


@pytest.mark.parametrize(
    ("item", "field", "value"),
    [
        ("max_num_seqs=7", "max_num_seqs", 7),
        ("max-model-len=2048", "max_model_len", 2048),
        ("enable_prefix_caching=false", "enable_prefix_caching", False),
        ("block_size=16", "block_size", 16),
    ],
)
def test_an_owned_engine_arg_sets_its_setting_once(
    captured: list[RunConfig], item: str, field: str, value: object
) -> None:
    assert isinstance(invoke("--engine-arg", item, "--engine-arg", "max_num_batched_tokens=512"), Stop)
    (config,) = captured
    assert getattr(config.engine, field) == value
    assert config.engine.extra_engine_args == {"max_num_batched_tokens": 512}


def test_the_flag_and_the_engine_arg_agreeing_is_fine(captured: list[RunConfig]) -> None:
    assert isinstance(invoke("--max-model-len", "4096", "--engine-arg", "max_model_len=4096"), Stop)
    assert captured[0].engine.max_model_len == 4096


def test_the_flag_and_the_engine_arg_disagreeing_is_one_line_naming_both(captured: list[RunConfig]) -> None:
    error = invoke("--max-model-len", "4096", "--engine-arg", "max_model_len=2048")
    assert isinstance(error, UserError) and not captured
    assert str(error) == (
        "--engine-arg max_model_len=2048 and --max-model-len 4096 both set engine.max_model_len; give one"
    )


@pytest.mark.parametrize(
    ("item", "names"),
    [("model=/x", "use --model or --model-preset"), ("disable_log_stats=true", "per-request statistics")],
)
def test_an_engine_arg_with_no_setting_is_refused_naming_the_flag(
    captured: list[RunConfig], item: str, names: str
) -> None:
    error = invoke("--engine-arg", item)
    assert isinstance(error, UserError) and names in str(error) and not captured


def test_a_config_file_still_names_its_own_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[engine.extra_engine_args]\nmax_num_seqs = 7\n")
    with pytest.raises(UserError, match=r"use engine\.max_num_seqs"):
        load_run_config(path, {})
