"""Model presets: the shapes of widely used models, with no weights to download.

The embedded tiny model exercises every code path, but its compute and memory look nothing like a
production model's. A preset is the published architecture of a real model (layers, hidden size, heads,
KV heads, intermediate size, vocabulary, context, RoPE, tied embeddings) written as a model directory
next to the tiny model: its `config.json` and the tiny model's tokenizer, no weights. vLLM loads it with
`load_format="dummy"` (random weights made on the device), so a GPU benchmark gets the real model's
FLOPs, weight memory and KV-cache footprint with nothing fetched. The outputs are gibberish, as with
the tiny model; every timing is real.

The vocabulary keeps its real size (it sets the embedding and LM-head cost); the tokenizer has only
512 tokens, so prompts use a corner of it, which changes no shape.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowperf.engines.tiny import ARCHITECTURE as TINY
from flowperf.engines.tiny import TinyModel, build_tiny_model, publish_directory
from flowperf.paths import flowperf_home

BUILDER_VERSION = 1
MARKER_FILE = "flowperf-preset.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DTYPE_BYTES = 2  # presets are bf16, like the published checkpoints


@dataclass(frozen=True)
class Preset:
    """A published architecture; `source` is the checkpoint whose config.json these values are from."""

    name: str
    source: str
    model_type: str  # "llama" or "qwen2"
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int
    rope_theta: float
    tie_embeddings: bool
    rms_norm_eps: float
    head_dim: int | None = None  # None: hidden // heads
    llama3_rope_factor: float | None = None  # Llama 3.1/3.2 long-context RoPE scaling

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2"

    def parameter_count(self) -> int:
        """Every weight the checkpoint holds (the tied LM head once); Qwen2.5-0.5B gives 494,032,768."""
        q, kv = self.heads * self.head_size, self.kv_heads * self.head_size
        attention = self.hidden * (q + 2 * kv) + q * self.hidden + ((q + 2 * kv) if self.qkv_bias else 0)
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        return self.layers * layer + embeddings + self.hidden

    def weight_bytes(self) -> int:
        return self.parameter_count() * DTYPE_BYTES

    def kv_bytes_per_token(self) -> int:
        """Keys and values, every layer and KV head, at the bf16 KV-cache dtype."""
        return 2 * self.layers * self.kv_heads * self.head_size * DTYPE_BYTES

    def hf_config(self) -> dict[str, Any]:
        """config.json as transformers and vLLM read it; special token ids are the tokenizer's."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.llama3_rope_factor is not None:
            rope |= {
                "rope_type": "llama3",
                "factor": self.llama3_rope_factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
        config = {
            "architectures": ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_size,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_embeddings,
            "dtype": "bfloat16",
            **{key: TINY[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")},
        }
        if self.model_type == "qwen2":
            config |= {"use_sliding_window": False, "max_window_layers": self.layers}
        else:
            config |= {"attention_bias": False, "mlp_bias": False}
        return config


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "qwen2", 24, 896, 14, 2, 4864, 151936, 32768,
               1_000_000.0, True, 1e-6),
        Preset("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llama", 16, 2048, 32, 8, 8192, 128256, 131072,
               500_000.0, True, 1e-5, head_dim=64, llama3_rope_factor=32.0),
        Preset("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", "qwen2", 28, 1536, 12, 2, 8960, 151936, 131072,
               1_000_000.0, True, 1e-6),
        Preset("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "llama", 28, 3072, 24, 8, 8192, 128256, 131072,
               500_000.0, True, 1e-5, head_dim=128, llama3_rope_factor=32.0),
        Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B", "qwen2", 28, 3584, 28, 4, 18944, 152064, 131072,
               1_000_000.0, False, 1e-6),
        Preset("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "llama", 32, 4096, 32, 8, 14336, 128256, 131072,
               500_000.0, False, 1e-5, head_dim=128, llama3_rope_factor=8.0),
    )
}  # fmt: skip


def preset_dir(preset: Preset, tiny_dir: Path) -> Path:
    """Named by a digest of the architecture, the builder and the tokenizer's model, like the tiny model."""
    digest = hashlib.sha256(
        json.dumps([BUILDER_VERSION, preset.hf_config(), tiny_dir.name], sort_keys=True).encode()
    ).hexdigest()[:12]
    return flowperf_home() / "models" / f"preset-{preset.name}-{digest}"


def build_preset_model(name: str, fixtures_dir: Path) -> TinyModel:
    """The preset's model directory, built (config, generation config, tokenizer) unless it exists.

    Built in a temporary directory and renamed into place, so a crash never leaves half a model."""
    preset = PRESETS[name]
    tiny = build_tiny_model(fixtures_dir)
    target = preset_dir(preset, tiny.path)
    if (target / MARKER_FILE).is_file():
        return TinyModel(path=target, built=False, build_ms=tiny.build_ms)
    started = time.perf_counter()

    def fill(staging: Path) -> None:
        _write_json(staging / "config.json", preset.hf_config())
        _write_json(
            staging / "generation_config.json",
            {"bos_token_id": TINY["bos_token_id"], "eos_token_id": TINY["eos_token_id"]},
        )
        for file_name in TOKENIZER_FILES:
            shutil.copyfile(tiny.path / file_name, staging / file_name)
        _write_json(staging / MARKER_FILE, {"builder_version": BUILDER_VERSION, "preset": name})

    publish_directory(target, fill)
    return TinyModel(path=target, built=True, build_ms=tiny.build_ms + (time.perf_counter() - started) * 1000)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
