"""`--engine-arg KEY=VALUE`: vLLM engine arguments passed through, checked against vLLM's own fields
without importing vLLM, recorded in the settings (and so the fingerprint), and applied in process and
on a managed server's command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flowperf.config import EngineConfig, RunConfig, load_run_config
from flowperf.engines.engine_args import engine_arg_fields, parse_engine_args
from flowperf.engines.server import server_arguments
from flowperf.engines.vllm_local import engine_arguments
from flowperf.errors import UserError
from helpers import run_bench


def test_values_are_json_where_they_parse_and_keys_may_use_dashes() -> None:
    parsed = parse_engine_args(
        [
            "tensor-parallel-size=2",
            "enable_chunked_prefill=false",
            "kv_cache_dtype=fp8",
            "max_num_batched_tokens=4096",
            'compilation_config={"mode": 0}',
            "distributed_executor_backend=mp",
        ]
    )
    assert parsed == {
        "tensor_parallel_size": 2,
        "enable_chunked_prefill": False,
        "kv_cache_dtype": "fp8",
        "max_num_batched_tokens": 4096,
        "compilation_config": {"mode": 0},
        "distributed_executor_backend": "mp",
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["tensor_parallel_sise=2"], "tensor_parallel_sise is not a vLLM engine argument"),
        (["tensor_parallel_size=two"], 'tensor_parallel_size takes int, got "two"'),
        (["tensor_parallel_size=true"], "tensor_parallel_size takes int, got true"),
        (["enable_chunked_prefill=1"], "enable_chunked_prefill takes bool/null, got 1"),
        (["gpu_memory_utilization=[1]"], "gpu_memory_utilization takes float/int, got [1]"),
        (["model=/x"], "use --model or --model-preset"),
        (["disable_log_stats=true"], "flowperf needs the engine's per-request statistics"),
        (["tensor_parallel_size"], "tensor_parallel_size: expected KEY=VALUE"),
        (["=2"], "expected KEY=VALUE"),
        (["pipeline_parallel_size=2", "pipeline-parallel-size=2"], "pipeline_parallel_size: given twice"),
    ],
)
def test_bad_engine_args_name_the_flag_and_the_key(items: list[str], message: str) -> None:
    with pytest.raises(UserError, match=r"^--engine-arg.*" + re.escape(message)):
        parse_engine_args(items)


@pytest.mark.slow
def test_the_fields_read_from_vllm_source_are_the_dataclass_fields() -> None:
    """The source is parsed instead of imported (seconds saved on every flag error); both must agree."""
    from dataclasses import fields

    from vllm.engine.arg_utils import AsyncEngineArgs

    assert set(engine_arg_fields()) == {field.name for field in fields(AsyncEngineArgs)}
    assert engine_arg_fields()["tensor_parallel_size"] == (int,)
    assert engine_arg_fields()["compilation_config"] is None  # a config class: left to vLLM


def test_a_mistyped_engine_arg_is_refused_without_importing_vllm() -> None:
    probe = (
        "import sys; from flowperf.engines.engine_args import parse_engine_args\n"
        "try:\n    parse_engine_args(['tensor_parallel_sise=2'])\nexcept Exception as e:\n    print(e)\n"
        "print(sorted(m for m in ('vllm', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        "--engine-arg: tensor_parallel_sise is not a vLLM engine argument (see `vllm serve --help`)",
        "[]",
    ]


def test_the_cli_refuses_a_bad_engine_arg_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    done = run_bench("run", "--engine-arg", "tensor_parallel_sise=2", "--out", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --engine-arg: tensor_parallel_sise is not a vLLM engine argument (see `vllm serve --help`)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_engine_args_are_settings_recorded_and_fingerprinted() -> None:
    plain = load_run_config(None, {})
    passed = load_run_config(None, {"engine": {"extra_engine_args": {"tensor_parallel_size": 2}}})
    assert passed.model_dump(mode="json")["engine"]["extra_engine_args"] == {"tensor_parallel_size": 2}
    assert passed.fingerprint() != plain.fingerprint()


def test_engine_args_in_a_config_file_are_checked_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[engine.extra_engine_args]\ntensor_parallel_sise = 2\n")
    with pytest.raises(UserError, match=rf"^{path}: engine.extra_engine_args: tensor_parallel_sise is not"):
        load_run_config(path, {})
    path.write_text("[engine.extra_engine_args]\ntensor_parallel_size = 1\nmax_num_batched_tokens = 512\n")
    merged = load_run_config(path, {"engine": {"extra_engine_args": {"max_num_batched_tokens": 1024}}})
    assert merged.engine.extra_engine_args == {"tensor_parallel_size": 1, "max_num_batched_tokens": 1024}


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"kind": "openai", "base_url": "http://h:1", "extra_engine_args": {"x": 1}}, "--engine-arg needs"),
        (
            {"kind": "openai", "base_url": "http://h:1", "model_preset": "qwen2.5-0.5b"},
            "--model-preset needs",
        ),
        ({"model": "/m", "model_preset": "qwen2.5-0.5b"}, "--model and --model-preset both name the model"),
        ({"extra_engine_args": {"block_size": 16}}, "extra_engine_args.block_size is set by flowperf"),
        (
            {"model_preset": "qwen2.5-0.5b", "extra_engine_args": {"load_format": "auto"}},
            "always loads dummy ones",
        ),
    ],
)
def test_settings_that_cannot_go_together(engine: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_run_config(None, {"engine": engine})


def test_engine_args_apply_in_process_and_merge_compilation_options(tmp_path: Path) -> None:
    settings = EngineConfig(
        cudagraph_capture_sizes=[1, 2],
        extra_engine_args={"tensor_parallel_size": 2, "compilation_config": {"mode": 0}},
    )
    gpu, _ = engine_arguments(settings, tmp_path, on_gpu=True)
    assert gpu["tensor_parallel_size"] == 2
    assert gpu["compilation_config"] == {
        "cudagraph_mode": "FULL_AND_PIECEWISE",
        "cudagraph_capture_sizes": [1, 2],
        "mode": 0,
    }
    preset, _ = engine_arguments(EngineConfig(model_preset="qwen2.5-0.5b"), tmp_path, on_gpu=False)
    assert preset["load_format"] == "dummy"
    assert "load_format" not in engine_arguments(EngineConfig(), tmp_path, on_gpu=False)[0]


def test_engine_args_become_vllm_serve_flags(tmp_path: Path) -> None:
    settings = EngineConfig(
        extra_engine_args={
            "tensor_parallel_size": 2,
            "enable_chunked_prefill": False,
            "enable_expert_parallel": True,
            "allowed_media_domains": ["a", "b"],
            "max_num_batched_tokens": None,
        }
    )
    argv = server_arguments(settings, tmp_path, 8123, on_gpu=True)
    joined = " ".join(argv)
    assert "--tensor-parallel-size 2" in joined
    assert "--no-enable-chunked-prefill" in argv and "--enable-expert-parallel" in argv
    assert "--allowed-media-domains a b" in joined
    assert "--max-num-batched-tokens" not in argv  # null: vLLM's own default
    compiled = json.loads(argv[argv.index("--compilation-config") + 1])
    assert compiled["cudagraph_mode"] == "FULL_AND_PIECEWISE"


@pytest.mark.slow
def test_vllm_serve_parses_the_flags_flowperf_writes(tmp_path: Path) -> None:
    """Every flag flowperf writes, ours and passed through, is one vLLM's own server parser takes."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    settings = EngineConfig(
        model_preset="qwen2.5-0.5b",
        cudagraph_capture_sizes=[1, 4],
        enable_prefix_caching=False,
        extra_engine_args={
            "tensor_parallel_size": 2,
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": 512,
        },
    )
    argv = server_arguments(settings, tmp_path, 8123, on_gpu=True)
    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[3:])
    assert (parsed.tensor_parallel_size, parsed.enable_chunked_prefill) == (2, False)
    assert (parsed.load_format, parsed.max_num_batched_tokens, parsed.enforce_eager) == ("dummy", 512, False)
    assert parsed.enable_prefix_caching is False
    assert parsed.compilation_config.cudagraph_capture_sizes == [1, 4]


def test_a_resumed_run_keeps_its_engine_args() -> None:
    recorded = RunConfig.model_validate({"engine": {"extra_engine_args": {"max_num_batched_tokens": 512}}})
    base = recorded.model_dump(mode="json")
    again = load_run_config(
        None, {"engine": {"extra_engine_args": {"max_num_batched_tokens": 512}}}, base=base
    )
    assert again.fingerprint() == recorded.fingerprint()
    changed = load_run_config(
        None, {"engine": {"extra_engine_args": {"max_num_batched_tokens": 256}}}, base=base
    )
    assert changed.fingerprint() != recorded.fingerprint()
