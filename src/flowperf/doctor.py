"""`bench doctor`: what the harness sees on this machine, so a surprise shows before a run, not during."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from typing import Any

import psutil

import flowperf
from flowperf.engines.tiny import MARKER_FILE, default_model_dir
from flowperf.paths import flowperf_home

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
