"""`bench doctor`: what the harness sees on this machine, so a surprise shows before a run, not during.

Besides versions and devices it answers "how many workflows can run at once?": the KV-cache capacity the
engine reports (a running flowperf server for the same model is asked; otherwise it is computed from the
model's config and --kv-cache-gib, and said to be an estimate) against the tokens one workflow holds at
its largest step (its prompt, with earlier outputs at their full length, plus the step's output).

And "how many concurrent streams can this client time truthfully?": a few seconds of the HTTP engine
against the mock server (flowperf.diagnostics.ceiling), measured here rather than read from an old
cache because a new machine, Python or load changes it; the result is cached per host so that `bench
run` can warn from it without measuring.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

import flowperf
from flowperf.config import CPU_DEFAULT_KV_CACHE_GIB, GIB, RunConfig
from flowperf.diagnostics import ceiling
from flowperf.engines.presets import PRESETS, Preset
from flowperf.engines.tiny import MARKER_FILE, default_model_dir
from flowperf.engines.vllm_local import CPU_DEFAULT_BLOCK_SIZE
from flowperf.flows import resolve_flow
from flowperf.flows.cache import expand_with_cache
from flowperf.flows.expand import ExpandedFlowSet
from flowperf.paths import flowperf_home

BYTES_PER_KV_ELEMENT = 2  # bf16/fp16 KV cache
VLLM_GPU_SHARE = 0.9  # vLLM's default gpu_memory_utilization: the part of a GPU it plans to use

FIXTURES_DIR = "fixtures"


def gpu_findings() -> dict[str, Any]:
    """GPUs through NVML (nvidia-ml-py); says why when NVML is not available instead of reporting zero."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": "not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return {"nvml": f"unavailable ({error})"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        devices = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(f"{index}: {pynvml.nvmlDeviceGetName(handle)} ({memory.total / 2**30:.1f} GiB)")
        return {"nvml": f"{count} GPU(s)", "gpus": "; ".join(devices) or "none"}
    finally:
        pynvml.nvmlShutdown()


def gpu_memory_bytes() -> list[int]:
    """Each GPU's total memory through NVML; empty where there is no NVML or no GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [
            pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total for i in range(count)
        ]
    finally:
        pynvml.nvmlShutdown()


def preset_fit(preset: Preset, sequence_tokens: int, gpus: list[int], ram_available: int) -> str:
    """Whether the preset's weights and one full sequence's KV cache fit: in one GPU's share vLLM uses
    (else on how many GPUs with tensor parallelism), or in the RAM available now on a CPU machine."""
    need = preset.weight_bytes() + preset.kv_bytes_per_token() * sequence_tokens
    if not gpus:
        verdict = "fits" if need <= ram_available else "does NOT fit"
        return f"{verdict} in RAM ({need / GIB:.1f} of {ram_available / GIB:.1f} GiB available)"
    budget = VLLM_GPU_SHARE * min(gpus)
    if need <= budget:
        return f"fits one GPU ({need / GIB:.1f} of {budget / GIB:.1f} GiB at utilization {VLLM_GPU_SHARE})"
    shards = math.ceil(need / budget)
    if shards <= len(gpus):
        return f"needs about {shards} GPUs (--engine-arg tensor_parallel_size={shards} or more)"
    return f"does NOT fit {len(gpus)} GPU(s) ({need / GIB:.1f} GiB needed)"


def preset_findings(max_model_len: int) -> dict[str, Any]:
    """Per preset: weight memory (parameters x bf16), KV cache per token and per sequence of
    max_model_len tokens (capped at the model's context), and whether that fits this machine."""
    gpus = gpu_memory_bytes()
    ram_available = psutil.virtual_memory().available
    findings: dict[str, Any] = {}
    for name, preset in PRESETS.items():
        tokens = min(max_model_len, preset.max_positions)
        kv_token = preset.kv_bytes_per_token()
        findings[f"preset {name}"] = (
            f"{preset.parameter_count() / 1e9:.2f} B params, weights {preset.weight_bytes() / GIB:.2f} GiB; "
            f"KV {kv_token / 1024:.0f} KiB/token, {kv_token * tokens / GIB:.2f} GiB per {tokens:,}-token "
            f"sequence; {preset_fit(preset, tokens, gpus, ram_available)}"
        )
    return findings


def engine_findings() -> dict[str, Any]:
    """Import the engine (the slow part of every start-up) and report what it finds."""
    started = time.perf_counter()
    try:
        import torch
        import vllm
        from vllm.platforms import current_platform
    except Exception as error:
        return {"vllm": f"not importable: {type(error).__name__}: {error}"}
    return {
        "vllm": vllm.__version__,
        "vllm import": f"{time.perf_counter() - started:.1f} s",
        "torch": torch.__version__,
        "device": current_platform.device_type,
        "cuda graphs": "available (on by default)"
        if current_platform.is_cuda_alike()
        else "none on this device",
    }


def client_ceiling_findings() -> dict[str, Any]:
    """This host's client ceiling, measured now (one request per worker per level) and cached."""
    try:
        results = ceiling.measure(ceiling.LEVELS, rounds=1)
    except (OSError, RuntimeError) as error:
        return {"client ceiling": f"not measured ({type(error).__name__}: {error})"}
    ceiling.save(results)
    limit = ceiling.ceiling(results)
    errors = ", ".join(
        f"{level.concurrency}: {max(level.ttft_error_p50_ms, level.itl_error_p50_ms):.1f} ms"
        for level in results
    )
    verdict = (
        f"{limit} concurrent streams"
        if limit is not None
        else "below 1 concurrent stream (machine too busy?)"
    )
    return {
        "client ceiling": f"{verdict} (p50 timing error within {ceiling.ERROR_LIMIT_MS:g} ms; "
        "bench run warns past it)",
        "client timing error p50": errors,
    }


BURST_DELIVERY = (
    "a step is flagged burst_delivered when more than half of its tokens arrive in one network read "
    "after the first; seen with vLLM's OpenAI server on CPU after a few dozen requests (engine's first "
    "token at 4-15 ms, the client's at 150-225 ms). Such steps' TTFT and gaps measure the front end's "
    "delivery, not the engine: compare ttft_ms with engine_ttft_ms, and the summary's engine_state "
    "burst_steps per server; a restarted server delivers steadily again"
)


def collect_findings() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    tiny_dir = default_model_dir(FIXTURES_DIR) if os.path.isdir(FIXTURES_DIR) else None
    findings: dict[str, Any] = {
        "flowperf": flowperf.__version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu cores": f"{psutil.cpu_count(logical=True)} logical, {psutil.cpu_count(logical=False)} physical",
        "memory": f"{memory.total / 2**30:.1f} GiB total, {memory.available / 2**30:.1f} GiB available",
        "nvidia-smi": shutil.which("nvidia-smi") or "not found",
        **gpu_findings(),
        **engine_findings(),
        **client_ceiling_findings(),
        "stream delivery": BURST_DELIVERY,
        "FLOWPERF_HOME": str(flowperf_home()),
        "tiny model": (
            f"{tiny_dir} ({'built' if (tiny_dir / MARKER_FILE).is_file() else 'not built yet'})"
            if tiny_dir
            else f"no {FIXTURES_DIR}/ here to build it from"
        ),
    }
    if shutil.which("nvidia-smi"):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        findings["nvidia driver"] = done.stdout.strip() or done.stderr.strip()
    return findings


def workflow_peak_tokens(flows: ExpandedFlowSet, tokenizer_path: Path, max_tokens: int | None) -> int:
    """The most KV-cache tokens any single workflow holds at once (its largest step), over all records."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    lengths = {step.id: max_tokens or step.max_tokens for step in flows.steps}
    peak = 0
    for record_index in range(len(flows.records)):
        flow = flows[record_index]
        for node in flows.plan(flow, seed=0):
            step = node.step
            if step.kind != "llm":
                continue
            prompt = flows.render(flow, node, {used: [""] for used in step.uses_steps})
            tokens = len(tokenizer.encode(prompt).ids) + sum(lengths[used] for used in step.uses_steps)
            peak = max(peak, tokens + lengths[step.id])
    return peak


def reported_capacity(model_path: Path) -> tuple[int, int] | None:
    """(KV-cache tokens, block size) from a running flowperf server for this model, if there is one."""
    from flowperf.engines.server import ServerRegistry

    for record in ServerRegistry().servers():
        if record.model != str(model_path):
            continue
        try:
            metrics = httpx.get(f"{record.base_url}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        match = re.search(r"^vllm:cache_config_info\{(.*)\}", metrics, flags=re.MULTILINE)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            return int(labels["kv_cache_size_tokens"]), int(labels["block_size"])
    return None


def estimated_capacity(model_path: Path, kv_cache_gib: float) -> int:
    """KV-cache tokens that fit in `kv_cache_gib`: keys and values, per layer and KV head, 2-byte dtype."""
    config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    bytes_per_token = 2 * config["num_hidden_layers"] * kv_heads * head_dim * BYTES_PER_KV_ELEMENT
    return int(kv_cache_gib * GIB // bytes_per_token)


def capacity_findings(config: RunConfig, model_path: Path) -> dict[str, Any]:
    expansion = expand_with_cache(
        resolve_flow(config.flow, config.flows_dir), config.num_flows, force=False, warn=lambda message: None
    )
    peak = workflow_peak_tokens(expansion.flows, model_path / "tokenizer.json", config.max_tokens)
    reported = reported_capacity(model_path)
    if reported is not None:
        capacity, block = reported
        source = "reported by the running flowperf server"
    else:
        gib = config.engine.kv_cache_gib or CPU_DEFAULT_KV_CACHE_GIB
        capacity = estimated_capacity(model_path, gib)
        block = config.engine.block_size or CPU_DEFAULT_BLOCK_SIZE
        source = f"estimated from the model config and --kv-cache-gib {gib:g}"
    per_workflow = math.ceil(peak / block) * block
    fits = capacity // per_workflow
    recommended = max(1, min(fits, len(expansion.flows)))
    return {
        "kv cache": f"{capacity:,} tokens ({source})",
        "tokens per workflow": f"{peak:,} at its largest step ({per_workflow:,} in {block}-token blocks), "
        f"flow {expansion.flows.name}",
        "concurrent workflows that fit": f"{fits:,}",
        "recommended --concurrency": f"{recommended} (capped at --num-flows {len(expansion.flows)}; "
        "throughput may flatten earlier on CPU: measure with bench run --concurrency)",
        **preset_findings(config.engine.max_model_len),
    }
