"""RunConfig: defaults < config file < flags, validated once, errors naming the file and field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flowperf.config import RunConfig, load_run_config
from flowperf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load() -> None:
    cpu = load_run_config(ROOT / "configs" / "default.toml", {})
    gpu = load_run_config(ROOT / "configs" / "gpu.toml", {})
    assert cpu.engine.enforce_eager is True and cpu.engine.block_size == 32
    assert gpu.engine.cuda_graphs and gpu.engine.cudagraph_capture_sizes == [1, 2, 4, 8, 16, 32, 64]


def test_flags_override_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('num_flows = 7\nflow = "plan_draft_check"\n[engine]\nmax_model_len = 1024\n')
    merged = load_run_config(path, {"num_flows": 3, "engine": {"max_model_len": None, "seed": 5}})
    assert merged.num_flows == 3
    assert merged.flow == "plan_draft_check"
    assert merged.engine.max_model_len == 1024
    assert merged.engine.seed == 5
    assert merged.concurrency == RunConfig().concurrency


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("num_flows = 0\n", r"c.toml: num_flows: Input should be greater than or equal to 1"),
        ("[engine]\nblock_size = -1\n", r"c.toml: engine.block_size"),
        ("colour = 'red'\n", r"c.toml: colour: Extra inputs are not permitted"),
        ("num_flows = \n", r"c.toml: invalid TOML"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_run_config(path, {})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_run_config(tmp_path / "absent.toml", {})


def test_fingerprint_ignores_where_results_go() -> None:
    base = RunConfig()
    moved = RunConfig.model_validate({"output": {"out_dir": "elsewhere", "run_id": "x"}})
    changed = RunConfig.model_validate({"num_flows": 26})
    assert base.fingerprint() == moved.fingerprint()
    assert base.fingerprint() != changed.fingerprint()


def test_flags_by_dotted_path_nest_into_overrides() -> None:
    flags = {"num_flows": 3, "engine.seed": 5, "engine.kv_cache_gib": 0.5, "monitor.sample_interval_s": 0}
    assert RunConfig.overrides_from_flags(flags) == {
        "num_flows": 3,
        "engine": {"seed": 5, "kv_cache_gib": 0.5},
        "monitor": {"sample_interval_s": 0},
    }
    merged = load_run_config(None, RunConfig.overrides_from_flags(flags))
    assert (merged.num_flows, merged.engine.seed, merged.monitor.sample_interval_s) == (3, 5, 0)


def test_one_value_is_checked_against_its_own_field() -> None:
    RunConfig.check_value("engine.kv_cache_gib", 0.5)
    RunConfig.check_value("output.run_id", "r-1")
    with pytest.raises(ValidationError, match="greater than 0"):
        RunConfig.check_value("engine.kv_cache_gib", 0)
    with pytest.raises(ValidationError, match="pattern"):
        RunConfig.check_value("output.run_id", "no spaces")


PERSISTED_SHAPE = {
    "flow", "flows_dir", "fixtures_dir", "num_flows", "max_tokens", "concurrency", "rate", "seed",
    "step_timeout_s", "fail_fast", "grace_s", "warmup", "reset_prefix_cache", "trace",
    "engine.kind", "engine.model", "engine.model_preset", "engine.dtype", "engine.max_model_len",
    "engine.block_size", "engine.kv_cache_gib", "engine.gpu_memory_utilization", "engine.enforce_eager",
    "engine.cuda_graphs",
    "engine.cudagraph_capture_sizes", "engine.max_num_seqs", "engine.enable_prefix_caching", "engine.seed",
    "engine.pin_harness",
    "engine.extra_engine_args", "engine.base_url", "engine.routing", "engine.api", "engine.api_key_env",
    "engine.connect_timeout_s", "engine.read_timeout_s", "engine.server_port", "engine.max_servers",
    "engine.server_start_timeout_s",
    "output.out_dir", "output.run_id", "output.save_text", "output.summary_every",
    "output.summary_interval_s", "output.slo",
    "monitor.sample_interval_s", "monitor.leak_threshold_mb", "monitor.server_metrics",
    "monitor.server_metrics_interval_s", "monitor.server_metrics_urls",
    "client.workers", "client.executor", "client.ray_address",
}  # fmt: skip


def dotted_keys(document: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in document.items():
        if isinstance(value, dict) and value:
            keys |= dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_persisted_field_names_and_nesting_are_unchanged() -> None:
    """config.json and the fingerprint `--resume` checks are built from these names: renaming or moving
    one would make every earlier run directory impossible to resume."""
    assert dotted_keys(RunConfig().model_dump(mode="json")) == PERSISTED_SHAPE


@pytest.mark.parametrize(
    ("engine", "named"),
    [
        (
            {"kv_cache_gib": 2.0, "gpu_memory_utilization": 0.5},
            "kv_cache_gib (--kv-cache-gib) and gpu_memory",
        ),
        (
            {"kv_cache_gib": 2.0, "extra_engine_args": {"kv_cache_memory_bytes": 1}},
            "kv_cache_gib (--kv-cache-gib) and extra_engine_args.kv_cache_memory_bytes",
        ),
    ],
)
def test_the_kv_cache_is_sized_by_one_setting_only(engine: dict[str, Any], named: str) -> None:
    """vLLM would let an explicit size silently override the memory fraction."""
    with pytest.raises(
        UserError, match=rf"engine: {re.escape(named)}.* both size the KV cache; set only one"
    ):
        load_run_config(None, {"engine": engine})
    assert load_run_config(None, {"engine": {"gpu_memory_utilization": 0.5}}).engine.kv_cache_gib is None


def test_a_run_recorded_with_the_old_kv_default_still_has_its_fingerprint() -> None:
    """Runs made when kv_cache_gib defaulted to 1.0 recorded it explicitly, so --resume rebuilds the same
    settings and fingerprint from their config.json."""
    recorded = json.loads((ROOT / "tests" / "data" / "run_v1" / "config.json").read_text())
    assert recorded["config"]["engine"]["kv_cache_gib"] == 1.0
    resumed = load_run_config(None, {}, base=recorded["config"])
    assert resumed.engine.kv_cache_gib == 1.0
    assert resumed.fingerprint() == recorded["config_sha256"]
    assert RunConfig().engine.kv_cache_gib is None
