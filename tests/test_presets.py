"""Model presets: published architectures as local model directories (config and the tiny model's
tokenizer, no weights) that vLLM runs with dummy weights; their memory as `bench doctor` states it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flowperf.config import GIB
from flowperf.diagnostics.doctor import preset_findings, preset_fit
from flowperf.engines.presets import PRESETS, build_preset_model
from helpers import ROOT, run_bench

FIXTURES = ROOT / "fixtures"

# Each checkpoint's total parameter count as published (its safetensors index / model card).
PUBLISHED_PARAMETERS = {
    "qwen2.5-0.5b": 494_032_768,
    "llama-3.2-1b": 1_235_814_400,
    "qwen2.5-1.5b": 1_543_714_304,
    "llama-3.2-3b": 3_212_749_824,
    "qwen2.5-7b": 7_615_616_512,
    "llama-3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", PRESETS)
def test_a_presets_shape_has_the_published_parameter_count(name: str) -> None:
    assert PRESETS[name].parameter_count() == PUBLISHED_PARAMETERS[name]


def test_weight_and_kv_memory() -> None:
    qwen, llama = PRESETS["qwen2.5-0.5b"], PRESETS["llama-3.1-8b"]
    assert qwen.weight_bytes() == 2 * 494_032_768
    assert qwen.kv_bytes_per_token() == 2 * 24 * 2 * 64 * 2  # K and V, layers, KV heads, head dim, bf16
    assert llama.kv_bytes_per_token() == 128 * 1024


def test_a_preset_directory_is_a_model_transformers_reads(flowperf_home: Path) -> None:
    from transformers import AutoConfig

    built = build_preset_model("llama-3.2-1b", FIXTURES)
    again = build_preset_model("llama-3.2-1b", FIXTURES)
    assert built.path == again.path and not again.built
    assert built.path.is_relative_to(flowperf_home / "models")
    assert sorted(p.name for p in built.path.iterdir()) == [
        "config.json", "flowperf-preset.json", "generation_config.json",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    config = AutoConfig.from_pretrained(built.path)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (16, 2048, 32)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (8, 8192, 128256)
    assert config.tie_word_embeddings and config.max_position_embeddings == 131072
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == 32.0
    qwen = json.loads((build_preset_model("qwen2.5-7b", FIXTURES).path / "config.json").read_text())
    assert qwen["architectures"] == ["Qwen2ForCausalLM"] and qwen["tie_word_embeddings"] is False


def test_fit_on_cpu_and_gpu() -> None:
    small, large = PRESETS["qwen2.5-0.5b"], PRESETS["llama-3.1-8b"]
    assert preset_fit(small, 4096, [], 4 * GIB).startswith("fits in RAM (1.0 of 4.0 GiB")
    assert preset_fit(large, 4096, [], 4 * GIB).startswith("does NOT fit in RAM")
    assert preset_fit(large, 4096, [80 * GIB], 0).startswith("fits one GPU")
    assert preset_fit(large, 131072, [24 * GIB] * 4, 0) == (
        "needs about 2 GPUs (--engine-arg tensor_parallel_size=2 or more)"
    )
    assert preset_fit(large, 131072, [16 * GIB], 0).startswith("does NOT fit 1 GPU(s)")


def test_doctor_states_every_presets_memory() -> None:
    findings = preset_findings(10240)
    assert list(findings) == [f"preset {name}" for name in PRESETS]
    line = findings["preset qwen2.5-0.5b"]
    assert line.startswith(
        "0.49 B params, weights 0.92 GiB; KV 12 KiB/token, 0.12 GiB per 10,240-token sequence"
    )
    assert "32,768-token" not in line and "131,072-token" in preset_findings(10**6)["preset llama-3.1-8b"]


@pytest.mark.engine
@pytest.mark.slow
def test_the_smallest_preset_runs_end_to_end(tmp_path: Path) -> None:
    """Qwen2.5-0.5B's real shape (24 layers, 151,936-token vocabulary) with dummy weights, on the real
    engine; sampled ids beyond the 512-token tokenizer detokenize to nothing, and are counted from ids."""
    done = run_bench(
        "run", "--model-preset", "qwen2.5-0.5b", "-n", "1", "--max-tokens", "2", "--max-model-len", "2048",
        "--warmup", "0", "--out", str(tmp_path), "--run-id", "preset", "--no-progress", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "preset"
    document = json.loads((run_dir / "config.json").read_text())
    assert document["config"]["engine"]["model_preset"] == "qwen2.5-0.5b"
    assert Path(document["model"]["path"]).name.startswith("preset-qwen2.5-0.5b-")
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [step["output_tokens"] for step in steps] == [2, 2, 2]
    assert "load_format=dummy" in (run_dir / "engine.log").read_text()


def fake_gpu_run(run_dir: Path, mode: str, **changes: object) -> Path:
    """A run directory as a GPU run writes it, with `changes` to the engine info."""
    run_dir.mkdir(parents=True)
    graphs = mode == "graphs"
    details = {"cudagraph_capture_sizes": [1, 2, 4, 8] if graphs else [], "enforce_eager": not graphs}
    engine = {
        "device": "cuda",
        "cuda_graph_mode": "full_and_piecewise" if graphs else "none",
        "details": details,
    }
    for key, value in changes.items():
        (details if key in details else engine)[key] = value
    (run_dir / "config.json").write_text(json.dumps({"engine": engine}))
    summary = {
        "status": "complete",
        "counts": {"workflows_ok": 8, "workflows_failed": 0},
        "latency": {"tpot_ms": {"p50": 1.5 if graphs else 4.0}},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    sample = {
        "type": "sample",
        "gpus": [{"index": 0, "mem_used_mb": 1.0, "mem_total_mb": 2.0, "util_percent": 50}],
    }
    (run_dir / "metrics.jsonl").write_text(json.dumps(sample) + "\n")
    return run_dir


def gpu_check(run_dir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--check", str(run_dir), mode],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["graphs", "eager"])
def test_gpu_check_accepts_a_run_that_did_what_it_asked(tmp_path: Path, mode: str) -> None:
    done = gpu_check(fake_gpu_run(tmp_path / mode, mode), mode)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().endswith(f"tpot_p50_ms={1.5 if mode == 'graphs' else 4.0}")


@pytest.mark.parametrize(
    ("mode", "changes", "mismatch"),
    [
        ("graphs", {"cuda_graph_mode": "none"}, "CUDA graphs asked for but the mode in effect is 'none'"),
        ("graphs", {"cudagraph_capture_sizes": [1, 2, 4]}, "capture sizes [1, 2, 4] in effect, [1, 2, 4, 8]"),
        ("graphs", {"device": "cpu"}, "device is 'cpu', not 'cuda'"),
        ("eager", {"cuda_graph_mode": "piecewise"}, "--no-cuda-graphs but mode 'piecewise'"),
    ],
)
def test_gpu_check_fails_on_each_mismatch(tmp_path: Path, mode: str, changes: dict, mismatch: str) -> None:
    done = gpu_check(fake_gpu_run(tmp_path / mode, mode, **changes), mode)
    assert done.returncode == 1 and mismatch in done.stdout, done.stdout


def test_gpu_check_wants_nvml_samples_and_a_complete_run(tmp_path: Path) -> None:
    run_dir = fake_gpu_run(tmp_path / "run", "graphs")
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"type": "gpu_info", "reason": "NVML not found"}) + "\n"
    )
    (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted", "counts": {}}))
    done = gpu_check(run_dir, "graphs")
    assert done.returncode == 1
    assert "no NVML GPU samples in metrics.jsonl (gpu_info: ['NVML not found'])" in done.stdout
    assert "run 'interrupted'" in done.stdout


def test_gpu_check_without_a_gpu_says_so_and_installs_nothing(tmp_path: Path) -> None:
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "no NVIDIA GPU here" in done.stderr
    assert not (tmp_path / "out").exists()
