"""The in-process vLLM engine (AsyncLLM): created once per process, before the workflow loop.

vLLM cannot reliably free an engine and create another in the same process (leaks, OOMs upstream), so
the engine is process-global: asking again for the same settings returns the same engine, asking for a
different model is an error. `init_count` proves the engine was built exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from flowperf.config import CPU_DEFAULT_KV_CACHE_GIB, GIB, EngineConfig
from flowperf.engines.affinity import Placement, keep_harness_off_engine
from flowperf.engines.base import EngineError, EngineInfo, GenerationParams, Prompt, StepResult, TokenPrompt
from flowperf.engines.iteration_log import IterationLog, stat_logger_factory
from flowperf.engines.spawning import children_deaf_to_sigint, output_redirected_to
from flowperf.engines.streaming import StreamTimer
from flowperf.errors import UserError

CPU_DEFAULT_BLOCK_SIZE = 32  # the CPU backend's default (128) hides prefix-cache hits on short prompts
WATCHDOG_INTERVAL_S = 0.5
ABORT_VERDICT_S = 30.0  # a cleanly exiting core is seen dead some seconds after it aborted its requests

_active: VllmLocalEngine | None = None
_init_count = 0


def get_vllm_engine(settings: EngineConfig, model_path: Path, log_path: Path | None) -> VllmLocalEngine:
    """The process-wide engine for these settings, created (not started) on first request."""
    global _active
    if _active is not None:
        if _active.settings != settings or _active.model_path != model_path:
            raise UserError(
                f"an engine for {_active.model_path} is already running in this process; vLLM cannot "
                f"start a second one ({model_path}) reliably: run it in a new process"
            )
        return _active
    _active = VllmLocalEngine(settings, model_path, log_path)
    return _active


def cuda_graph_settings(settings: EngineConfig, on_gpu: bool) -> tuple[dict[str, Any], str]:
    """Engine arguments for CUDA graphs, and a note saying what the user should expect.

    CUDA graphs exist only on GPU; there they are on by default (vLLM's FULL_AND_PIECEWISE), and
    `--no-cuda-graphs` runs the model eagerly so the two can be compared.
    """
    if not on_gpu:
        eager = True if settings.enforce_eager is None else settings.enforce_eager
        return {"enforce_eager": eager}, "the CPU backend has no CUDA graphs"
    if not settings.cuda_graphs:
        return {"enforce_eager": True}, "disabled by --no-cuda-graphs (eager execution)"
    if settings.enforce_eager:
        return {"enforce_eager": True}, "disabled by enforce_eager"
    compilation: dict[str, Any] = {"cudagraph_mode": "FULL_AND_PIECEWISE"}
    if settings.cudagraph_capture_sizes:
        compilation["cudagraph_capture_sizes"] = sorted(set(settings.cudagraph_capture_sizes))
    return {"enforce_eager": False, "compilation_config": compilation}, "enabled"


def engine_arguments(settings: EngineConfig, model_path: Path, on_gpu: bool) -> tuple[dict[str, Any], str]:
    """AsyncEngineArgs keyword arguments for `settings` on this device, and the CUDA-graph note."""
    graph_args, graph_note = cuda_graph_settings(settings, on_gpu)
    block_size = settings.block_size or (None if on_gpu else CPU_DEFAULT_BLOCK_SIZE)
    arguments: dict[str, Any] = {
        "model": str(model_path),
        "dtype": settings.dtype,
        "max_model_len": settings.max_model_len,
        "seed": settings.seed,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "disable_log_stats": False,
        **graph_args,
    }
    if block_size is not None:
        arguments["block_size"] = block_size
    if settings.max_num_seqs is not None:
        arguments["max_num_seqs"] = settings.max_num_seqs
    if settings.model_preset is not None:
        arguments["load_format"] = "dummy"  # a preset's directory holds no weights (engines/presets.py)
    arguments |= kv_cache_arguments(settings, on_gpu)
    for key, value in settings.extra_engine_args.items():
        ours = arguments.get(key)
        # compilation options given through add to the CUDA-graph settings rather than dropping them
        arguments[key] = ours | value if isinstance(ours, dict) and isinstance(value, dict) else value
    return arguments, graph_note


def kv_cache_arguments(settings: EngineConfig, on_gpu: bool) -> dict[str, Any]:
    """How much memory the KV cache gets: what the user set, else each device's sensible default.

    On GPU that default is vLLM's own (a fraction of GPU memory), so nothing is passed: a fixed size
    would silently cap the cache far below what the card holds. On CPU vLLM's fraction applies to
    the machine's RAM and would starve everything else, so a fixed `CPU_DEFAULT_KV_CACHE_GIB` is
    passed. EngineConfig has already refused more than one sizing setting.
    """
    if settings.kv_cache_gib is not None:
        return {"kv_cache_memory_bytes": int(settings.kv_cache_gib * GIB)}
    if settings.gpu_memory_utilization is not None:
        return {"gpu_memory_utilization": settings.gpu_memory_utilization}
    if on_gpu or settings.kv_cache_sized_by_extra_args:
        return {}
    return {"kv_cache_memory_bytes": int(CPU_DEFAULT_KV_CACHE_GIB * GIB)}


def engine_timings(metrics: Any) -> tuple[float | None, float | None]:
    """`engine_queue_ms` and `engine_ttft_ms` (docs/ARCHITECTURE.md) from vLLM's per-request stats.

    Both are measured from the request's arrival in the engine core's queue, on the core's own
    monotonic clock: queueing ends when it is first scheduled, TTFT when its first token is made,
    so TTFT includes the queueing. vLLM's `first_token_latency` is not used: it starts at the
    front end's wall-clock arrival and ends when the front end processed the token, another interval.
    """
    if metrics is None or not metrics.queued_ts:
        return None, None
    queue_ms = (metrics.scheduled_ts - metrics.queued_ts) * 1000.0 if metrics.scheduled_ts else None
    ttft_ms = (metrics.first_token_ts - metrics.queued_ts) * 1000.0 if metrics.first_token_ts else None
    return queue_ms, ttft_ms


def engine_last_token_ms(metrics: Any) -> float | None:
    """Arrival in the engine core's queue to the request's last token (vLLM's queued_ts to last_token_ts,
    the core's monotonic clock, as `engine_ttft_ms`): the engine's share of the step's end-to-end time."""
    if metrics is None or not metrics.queued_ts or not getattr(metrics, "last_token_ts", 0.0):
        return None
    return (metrics.last_token_ts - metrics.queued_ts) * 1000.0


class VllmLocalEngine:
    """AsyncLLM in this process (its engine core runs in a child process vLLM manages).

    If the engine core dies, a watchdog notices that vLLM marked the engine dead and fails every request
    still waiting (and every later one) with EngineError, so a run records the failures and ends rather
    than hanging. A core that exits cleanly first finishes its running requests as "aborted" with the
    tokens made so far; those fail too, with the watchdog's verdict as the reason.
    """

    metrics_in_process = True
    """vLLM's Prometheus stat logger keeps its series in this process's registry (telemetry/ reads it)."""

    def __init__(self, settings: EngineConfig, model_path: Path, log_path: Path | None) -> None:
        self.settings = settings
        self.model_path = model_path
        self.log_path = log_path
        self._llm: Any = None
        self._shut_down = False
        self._dead = False
        self._died = asyncio.Event()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._graph_note = ""
        self._device = "unknown"
        self._version = "unknown"
        self._iterations = IterationLog()
        self.init_ms: float | None = None
        self._placement: Placement | None = None

    @property
    def started(self) -> bool:
        return self._llm is not None

    async def start(self) -> None:
        global _init_count
        if self._llm is not None:
            return
        if self._shut_down:
            raise EngineError("this process's engine was shut down; vLLM cannot start another one here")
        started = time.perf_counter()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        with output_redirected_to(self.log_path), children_deaf_to_sigint():
            import vllm
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM

            on_gpu = current_platform.is_cuda_alike()
            arguments, self._graph_note = engine_arguments(self.settings, self.model_path, on_gpu)
            # each step's composition for iterations.jsonl; in process only (a server would log every step)
            arguments.setdefault("enable_logging_iteration_details", True)
            try:
                self._llm = AsyncLLM.from_engine_args(
                    AsyncEngineArgs(**arguments), stat_loggers=[stat_logger_factory(self._iterations)]
                )
            except Exception as error:
                where = f" (engine log: {self.log_path})" if self.log_path else ""
                raise EngineError(f"the vLLM engine failed to start: {error}{where}") from error
        _init_count += 1
        if self.settings.pin_harness and not on_gpu:
            self._placement = keep_harness_off_engine()
        logging.getLogger("vllm").setLevel(logging.ERROR)
        self._version = vllm.__version__
        self._device = current_platform.device_type
        self.init_ms = (time.perf_counter() - started) * 1000.0
        self._watchdog = asyncio.create_task(self._watch_engine_core())

    async def _watch_engine_core(self) -> None:
        while self._llm is not None:
            if self._llm.errored:
                self._dead = True
                self._died.set()
                for task in list(self._inflight):
                    task.cancel()
                return
            await asyncio.sleep(WATCHDOG_INTERVAL_S)

    async def _abort_error(self, tokens: int, wanted: int) -> EngineError:
        """Why a request ended as aborted: flowperf never aborts one it still awaits, but a core that shuts
        down (exits cleanly) finishes every running request so, with the tokens made so far. Such a step
        failed and must not count as a short success; the watchdog's verdict on the core says why."""
        try:
            await asyncio.wait_for(self._died.wait(), ABORT_VERDICT_S)
        except TimeoutError:
            return EngineError(f"the vLLM engine aborted the request after {tokens} of {wanted} tokens")
        return self._death_error()

    def _death_error(self) -> EngineError:
        where = f" (see {self.log_path})" if self.log_path else ""
        return EngineError(f"EngineDeadError: the vLLM engine core process has died{where}")

    def _engine_prompt(self, prompt: Prompt) -> str | dict[str, list[int]]:
        """A transcript as token ids of the model's own chat template, no special tokens added: what
        vLLM's chat endpoint sends its engine, so in process and over HTTP the same turn is the same
        prompt (a completion-style prompt would gain a BOS token)."""
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, TokenPrompt):
            return {"prompt_token_ids": list(prompt.ids)}
        tokenizer = self._llm.get_tokenizer()
        rendered = tokenizer.apply_chat_template(list(prompt), tokenize=True, add_generation_prompt=True)
        ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
        return {"prompt_token_ids": list(ids)}

    async def generate(self, prompt: Prompt, params: GenerationParams, request_id: str) -> StepResult:
        from vllm import SamplingParams
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._llm
        if self._dead:
            raise self._death_error()
        if llm is None:
            raise EngineError("the engine was not started")
        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            ignore_eos=params.ignore_eos,
            seed=params.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        timer = StreamTimer()
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            (engine_input,) = await llm.renderer.render_cmpl_async(
                [parse_model_prompt(llm.model_config, self._engine_prompt(prompt))]
            )
            pieces: list[str] = []
            final = None
            async for output in llm.generate(
                engine_input, sampling, request_id=f"{request_id}-{uuid.uuid4().hex[:8]}"
            ):
                completion = output.outputs[0]
                timer.tokens_arrived(len(completion.token_ids))
                pieces.append(completion.text)
                final = output
        except asyncio.CancelledError:
            if not self._dead:
                raise
            task.uncancel()
            raise self._death_error() from None
        except EngineDeadError:
            self._dead = True
            raise self._death_error() from None
        except Exception as error:
            raise EngineError(f"{type(error).__name__}: {error}") from error
        finally:
            self._inflight.discard(task)
        if final is None:
            raise EngineError("the engine returned no output")
        if final.outputs[0].finish_reason == "abort":
            raise await self._abort_error(timer.output_tokens, params.max_tokens)
        queue_ms, ttft_ms = engine_timings(final.metrics)
        result = timer.result(
            text="".join(pieces),
            prompt_tokens=len(engine_input["prompt_token_ids"]),
            cached_prompt_tokens=final.num_cached_tokens,
            finish_reason=final.outputs[0].finish_reason,
            engine_queue_ms=queue_ms,
            engine_ttft_ms=ttft_ms,
        )
        result.engine_last_token_ms = engine_last_token_ms(final.metrics)
        return result

    def record_iterations(self, path: Path | None) -> None:
        """Append a line per engine step to `path` from now on (engines/iteration_log.py); None stops. The
        engine outlives a run, so each run points the records at its own directory and unsets them."""
        self._iterations.open(path)

    async def reset_prefix_cache(self) -> bool:
        if self._llm is None:
            return False
        return bool(await self._llm.reset_prefix_cache())

    def info(self) -> EngineInfo:
        details: dict[str, Any] = {}
        mode = "none"
        if self._llm is not None:
            config = self._llm.vllm_config
            mode = str(config.compilation_config.cudagraph_mode.name).lower()
            blocks, block_size = config.cache_config.num_gpu_blocks, config.cache_config.block_size
            details = {
                "block_size": block_size,
                "num_kv_blocks": blocks,
                "kv_cache_tokens": blocks * block_size if blocks else None,
                "max_model_len": config.model_config.max_model_len,
                "dtype": str(config.model_config.dtype).removeprefix("torch."),
                "enforce_eager": config.model_config.enforce_eager,
                "prefix_caching": config.cache_config.enable_prefix_caching,
                "cudagraph_capture_sizes": list(config.compilation_config.cudagraph_capture_sizes or []),
                "max_num_seqs": config.scheduler_config.max_num_seqs,
            }
            if self._placement is not None:
                details["harness_placement"] = self._placement.describe()
        return EngineInfo(
            engine="vllm",
            engine_version=self._version,
            model=str(self.model_path),
            device=self._device,
            cuda_graph_mode=mode,
            cuda_graph_note=self._graph_note,
            init_count=_init_count,
            details=details,
        )

    async def shutdown(self) -> None:
        """Stop the engine core; drop the reference now so no finalizer runs at interpreter exit."""
        llm, self._llm = self._llm, None
        self._iterations.open(None)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if llm is not None:
            self._shut_down = True
            with output_redirected_to(self.log_path):
                llm.shutdown()
            del llm
