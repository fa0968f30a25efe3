"""The embedded default model: a tiny Llama checkpoint built locally, offline and deterministically.

It lets `bench run` exercise the real engine end to end on any machine without downloading weights. The
weights are random (seeded numpy PCG64, stable across platforms and versions) and the tokenizer is a
byte-level BPE trained on the project's own fixtures, so prompts tokenize to realistic lengths. The model
directory's name carries a digest of everything that shapes it, so a changed corpus gives a new model and
an unchanged one is never rebuilt. It is built in a temporary directory and renamed into place, so a
crash mid-build never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowperf.errors import UserError
from flowperf.paths import flowperf_home

BUILDER_VERSION = 2
WEIGHT_SEED = 20261122
INIT_STD = 0.02
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")

ARCHITECTURE: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 16384,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
    "dtype": "bfloat16",
}

# A minimal chat template so OpenAI chat-completions work against the tiny model too.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

MARKER_FILE = "flowperf-tiny.json"


@dataclass(frozen=True)
class TinyModel:
    """A built tiny model and whether this call built it (and how long that took)."""

    path: Path
    built: bool
    build_ms: float


def corpus_texts(fixtures_dir: Path) -> Iterator[str]:
    """Every string value of every record of every fixture file, in a fixed order."""
    for fixture_file in sorted(Path(fixtures_dir).glob("*.jsonl")):
        for line in fixture_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield from _strings_in(json.loads(line))


def _strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _strings_in(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in(item)


def model_digest(fixtures_dir: Path) -> str:
    """A digest of the architecture, seed, builder version and training corpus."""
    digest = hashlib.sha256()
    digest.update(json.dumps([BUILDER_VERSION, WEIGHT_SEED, INIT_STD, ARCHITECTURE], sort_keys=True).encode())
    for text in corpus_texts(fixtures_dir):
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def default_model_dir(fixtures_dir: Path) -> Path:
    return flowperf_home() / "models" / f"tiny-llama-{model_digest(fixtures_dir)}"


def build_tiny_model(fixtures_dir: Path, *, force: bool = False) -> TinyModel:
    """Build the tiny model from `fixtures_dir` unless an identical build exists already."""
    fixtures_dir = Path(fixtures_dir)
    if not any(fixtures_dir.glob("*.jsonl")):
        raise UserError(f"{fixtures_dir}: no *.jsonl fixtures to train the tiny model's tokenizer on")
    target = default_model_dir(fixtures_dir)
    if (target / MARKER_FILE).is_file() and not force:
        return TinyModel(path=target, built=False, build_ms=0.0)
    started = time.perf_counter()
    publish_directory(target, lambda staging: write_model_files(staging, fixtures_dir))
    return TinyModel(path=target, built=True, build_ms=(time.perf_counter() - started) * 1000)


def publish_directory(target: Path, fill: Callable[[Path], None]) -> None:
    """Make `target` by filling a temporary sibling and renaming it into place, so a crash mid-build
    never leaves a half-written model where a later run would take it for a whole one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o755)
        fill(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_files(directory: Path, fixtures_dir: Path) -> None:
    """Write config, tokenizer and weights into `directory`; the same inputs give the same bytes."""
    _write_json(directory / "config.json", ARCHITECTURE)
    _write_json(
        directory / "generation_config.json",
        {"bos_token_id": ARCHITECTURE["bos_token_id"], "eos_token_id": ARCHITECTURE["eos_token_id"]},
    )
    _train_tokenizer(directory, fixtures_dir)
    _write_weights(directory / "model.safetensors")
    _write_json(
        directory / MARKER_FILE,
        {"builder_version": BUILDER_VERSION, "digest": model_digest(fixtures_dir), "seed": WEIGHT_SEED},
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _train_tokenizer(directory: Path, fixtures_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=ARCHITECTURE["vocab_size"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(fixtures_dir), trainer)
    if tokenizer.get_vocab_size() != ARCHITECTURE["vocab_size"]:
        raise UserError(
            f"{fixtures_dir}: the fixtures are too small to train a {ARCHITECTURE['vocab_size']}-token "
            f"vocabulary (got {tokenizer.get_vocab_size()})"
        )
    tokenizer.save(str(directory / "tokenizer.json"), pretty=True)
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": SPECIAL_TOKENS[0],
            "eos_token": SPECIAL_TOKENS[1],
            "pad_token": SPECIAL_TOKENS[2],
            "model_max_length": ARCHITECTURE["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )


def _weight_shapes() -> dict[str, tuple[int, ...]]:
    a = ARCHITECTURE
    hidden, inter, vocab, head = a["hidden_size"], a["intermediate_size"], a["vocab_size"], a["head_dim"]
    q_out, kv_out = a["num_attention_heads"] * head, a["num_key_value_heads"] * head
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for layer in range(a["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        shapes |= {
            f"{prefix}.input_layernorm.weight": (hidden,),
            f"{prefix}.post_attention_layernorm.weight": (hidden,),
            f"{prefix}.self_attn.q_proj.weight": (q_out, hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv_out, hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv_out, hidden),
            f"{prefix}.self_attn.o_proj.weight": (hidden, q_out),
            f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
            f"{prefix}.mlp.up_proj.weight": (inter, hidden),
            f"{prefix}.mlp.down_proj.weight": (hidden, inter),
        }
    return shapes


def _write_weights(path: Path) -> None:
    """Seeded float32 draws rounded to bfloat16 (numpy has no bfloat16; torch is there with vLLM)."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(WEIGHT_SEED)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in sorted(_weight_shapes().items()):
        if name.endswith("norm.weight"):
            values = np.ones(shape, dtype=np.float32)
        else:
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
        tensors[name] = torch.from_numpy(values).to(torch.bfloat16)
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)
