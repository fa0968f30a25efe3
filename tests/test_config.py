"""Settings: defaults < config file < flags, validated once, errors naming the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

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
