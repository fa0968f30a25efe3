"""The in-process vLLM engine, measured against itself: token counts, cache accounting, TTFT fidelity."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from flowperf.config import EngineConfig
from flowperf.engines.base import GenerationParams
from flowperf.engines.vllm_local import cuda_graph_settings, engine_arguments, get_vllm_engine
from flowperf.errors import UserError

pytestmark = pytest.mark.engine

PROMPT = "You are reviewing a design note titled flowperf. It measures multi-step workflows on vLLM. " * 4


def test_info_reports_what_is_really_running(engine, tiny_model: Path) -> None:
    info = engine.info()
    assert info.engine == "vllm"
    assert info.engine_version
    assert info.device == "cpu"
    assert info.cuda_graph_mode == "none"
    assert "CPU" in info.cuda_graph_note
    assert info.init_count == 1
    assert info.details["block_size"] == 32
    assert info.model == str(tiny_model)


def test_token_counts_come_from_token_ids(engine, engine_loop, tiny_model: Path) -> None:
    result = engine_loop.run(engine.generate(PROMPT, GenerationParams(max_tokens=24), "count"))
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert result.prompt_tokens == len(tokenizer.encode(PROMPT).ids)
    assert result.output_tokens == 24
    assert result.finish_reason == "length"
    assert len(result.itl_ms) == 23
    assert 0 < result.ttft_ms < result.e2e_ms


def test_repeated_prefix_is_served_from_the_prefix_cache(engine, engine_loop) -> None:
    prompt = PROMPT + " unique tail for the cache test."
    engine_loop.run(engine.generate(prompt, GenerationParams(max_tokens=4), "warm"))
    again = engine_loop.run(engine.generate(prompt + " more", GenerationParams(max_tokens=4), "hit"))
    assert again.cached_prompt_tokens >= 32
    assert again.cached_prompt_tokens % 32 == 0


def test_harness_ttft_agrees_with_engine_ttft(engine, engine_loop) -> None:
    """Within 5 ms or 5% per request; one outlier in eight is tolerated because three engine processes
    share two cores here and the OS can preempt the harness for a scheduler tick at any moment."""
    engine_loop.run(engine.generate(PROMPT, GenerationParams(max_tokens=2), "warmup"))
    disagreements = []
    for index in range(8):
        request = engine.generate(f"{index} {PROMPT}", GenerationParams(max_tokens=8), f"t{index}")
        result = engine_loop.run(request)
        assert result.engine_ttft_ms is not None
        if abs(result.ttft_ms - result.engine_ttft_ms) > max(5.0, 0.05 * result.engine_ttft_ms):
            disagreements.append((round(result.ttft_ms, 2), round(result.engine_ttft_ms, 2)))
    assert len(disagreements) <= 1, disagreements


def test_concurrent_requests_each_get_their_own_measurement(engine, engine_loop) -> None:
    async def burst():
        params = GenerationParams(max_tokens=16)
        return await asyncio.gather(*(engine.generate(f"{i} {PROMPT}", params, f"c{i}") for i in range(8)))

    results = engine_loop.run(burst())
    assert all(r.output_tokens == 16 and len(r.itl_ms) == 15 for r in results)
    assert all(r.ttft_ms is not None and r.ttft_ms < r.e2e_ms for r in results)


def test_one_engine_per_process(engine, tiny_model: Path, tmp_path: Path) -> None:
    assert get_vllm_engine(EngineConfig(), tiny_model, None) is engine
    with pytest.raises(UserError, match="already running in this process"):
        get_vllm_engine(EngineConfig(), tmp_path, None)


def test_cuda_graph_configuration_on_gpu_and_cpu() -> None:
    gpu_args, note = cuda_graph_settings(EngineConfig(cudagraph_capture_sizes=[8, 1, 4, 4]), on_gpu=True)
    assert gpu_args == {
        "enforce_eager": False,
        "compilation_config": {"cudagraph_mode": "FULL_AND_PIECEWISE", "cudagraph_capture_sizes": [1, 4, 8]},
    }
    assert note == "enabled"
    assert cuda_graph_settings(EngineConfig(cuda_graphs=False), on_gpu=True) == (
        {"enforce_eager": True},
        "disabled by --no-cuda-graphs (eager execution)",
    )
    cpu_args, cpu_note = cuda_graph_settings(EngineConfig(), on_gpu=False)
    assert cpu_args == {"enforce_eager": True} and "CPU" in cpu_note
    compiled, _ = cuda_graph_settings(EngineConfig(enforce_eager=False), on_gpu=False)
    assert compiled == {"enforce_eager": False}


def test_engine_arguments_per_device(tmp_path: Path) -> None:
    cpu, _ = engine_arguments(EngineConfig(kv_cache_gib=0.5), tmp_path, on_gpu=False)
    assert cpu["block_size"] == 32 and cpu["kv_cache_memory_bytes"] == 512 * 1024**2
    gpu, _ = engine_arguments(EngineConfig(gpu_memory_utilization=0.8), tmp_path, on_gpu=True)
    assert "block_size" not in gpu and gpu["gpu_memory_utilization"] == 0.8
    extra, _ = engine_arguments(
        EngineConfig(extra_engine_args={"max_num_batched_tokens": 4096}), tmp_path, False
    )
    assert extra["max_num_batched_tokens"] == 4096
