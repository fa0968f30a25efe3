"""Benchmark: agentic workflows on the default model (issue 11).

    .venv/bin/python benchmarks/agentic.py [--sessions 24] [--levels 1,8,24] [--map-reduce 12]

In one process, with a private FLOWPERF_HOME:
1. `coding_agent`, `--sessions` sessions at each concurrency level, on one in-process engine: TTFT p50/p95
   by turn depth, the cached share of prompt tokens from turn 2 on (pooled over those turns, from the
   records, with vLLM's default block size on CPU), and this process's CPU time per LLM turn (the
   harness plus vLLM's in-process front end: tokenising, detokenising);
2. the same sessions against the deterministic mock server (`flowperf.diagnostics.mockserver`, 20 ms
   to the first token): the harness's own CPU per turn, with no engine in the process;
3. `map_reduce` at concurrency 1, in process and against a managed server: the makespan of a workflow
   against the sum of its steps (the speed-up its parallel branches give), per workflow.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def settings(flow: str, sessions: int, concurrency: int, out_dir: Path, run_id: str, **extra: Any) -> Any:
    from flowperf.config import RunConfig

    return RunConfig.model_validate(
        {
            "flow": flow,
            "flows_dir": str(ROOT / "flows"),
            "fixtures_dir": str(ROOT / "fixtures"),
            "num_flows": sessions,
            "concurrency": concurrency,
            "warmup": 1,
            "output": {"out_dir": str(out_dir), "run_id": run_id},
        }
        | extra
    )


async def timed_run(config: Any, engine: Any) -> tuple[Any, float]:
    """The run's result and this process's CPU seconds while it ran."""
    from flowperf.run.benchmark import RunHooks, run_benchmark

    before = time.process_time()
    hooks = RunHooks(echo=lambda _: None)
    result = await run_benchmark(config, hooks, engine=engine, shutdown_engine=engine is None)
    return result, time.process_time() - before


def llm_steps(run_dir: Path) -> pd.DataFrame:
    from flowperf.rundir.rundata import load_run

    steps = load_run(run_dir).steps
    return steps[(steps["status"] == "ok") & (steps["kind"] == "llm")]


def by_depth(run_dir: Path) -> pd.DataFrame:
    steps = llm_steps(run_dir)
    grouped = steps.groupby("depth")
    return pd.DataFrame(
        {
            "turns": grouped.size(),
            "prompt": grouped["prompt_tokens"].mean(),
            "ttft_p50": grouped["ttft_ms"].quantile(0.5),
            "ttft_p95": grouped["ttft_ms"].quantile(0.95),
            "cached": grouped["cached_prompt_tokens"].sum() / grouped["prompt_tokens"].sum(),
        }
    )


def cached_from_turn_2(run_dir: Path) -> float:
    later = llm_steps(run_dir)
    later = later[later["depth"] >= 2]
    return float(later["cached_prompt_tokens"].sum() / later["prompt_tokens"].sum())


async def coding_agent(engine: Any, sessions: int, levels: list[int], out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        config = settings("coding_agent", sessions, level, out_dir, f"coding-c{level}")
        result, cpu_s = await timed_run(config, engine)
        turns = len(llm_steps(result.run_dir))
        rows.append(
            {
                "label": f"in-process c={level}",
                "run_dir": result.run_dir,
                "cpu_s": cpu_s,
                "turns": turns,
                "summary": result.summary,
            }
        )
        window_s = result.summary.timing.measured_window_ms / 1000
        console.print(f"coding_agent c={level}: {turns} turns, window {window_s:.1f} s")
    return rows


async def coding_agent_on_mock(sessions: int, level: int, out_dir: Path) -> dict[str, Any]:
    from flowperf.diagnostics.mockserver import MockConfig, spawn

    with spawn(MockConfig(ttft_ms=20, itl_ms=2)) as server:
        engine = {"kind": "openai", "base_url": server.base_url, "model": "mock"}
        config = settings("coding_agent", sessions, level, out_dir, f"mock-c{level}", engine=engine)
        result, cpu_s = await timed_run(config, None)
    return {
        "label": f"mock server c={level}",
        "run_dir": result.run_dir,
        "cpu_s": cpu_s,
        "turns": len(llm_steps(result.run_dir)),
        "summary": result.summary,
    }


async def map_reduce(engine: Any, workflows: int, out_dir: Path) -> dict[str, pd.DataFrame]:
    """The in-process engine's runs first, then (that engine shut down, so the two do not share the
    cores) a managed server's."""
    from flowperf.engines.server import ServerRegistry
    from flowperf.rundir.rundata import load_run

    frames = {}
    try:
        result, _ = await timed_run(settings("map_reduce", workflows, 1, out_dir, "mr-local"), engine)
        frames["in-process"] = load_run(result.run_dir).workflows
    finally:
        await engine.shutdown()
    try:
        config = settings("map_reduce", workflows, 1, out_dir, "mr-server", engine={"kind": "server"})
        result, _ = await timed_run(config, None)
        frames["managed server"] = load_run(result.run_dir).workflows
    finally:
        ServerRegistry().stop(None, everything=True)
    return frames


async def measure(
    sessions: int, levels: list[int], map_reduce_workflows: int, out_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """Everything on one in-process engine (vLLM allows one per process), then the mock and the server."""
    from flowperf.config import EngineConfig
    from flowperf.engines.tiny import build_tiny_model
    from flowperf.engines.vllm_local import get_vllm_engine

    engine = get_vllm_engine(EngineConfig(), build_tiny_model(ROOT / "fixtures").path, out_dir / "engine.log")
    try:
        rows = await coding_agent(engine, sessions, levels, out_dir)
    except BaseException:
        await engine.shutdown()
        raise
    frames = await map_reduce(engine, map_reduce_workflows, out_dir)
    rows.append(await coding_agent_on_mock(sessions, max(levels), out_dir))
    return rows, frames


def print_depth_tables(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        table = Table(title=f"coding_agent, {row['label']}: TTFT by turn depth")
        depths = by_depth(row["run_dir"])
        for column in ("depth", "turns", "prompt tokens", "TTFT p50 ms", "TTFT p95 ms", "cached"):
            table.add_column(column, justify="right")
        for depth, values in depths.iterrows():
            table.add_row(
                str(int(depth)),
                str(int(values["turns"])),
                f"{values['prompt']:.0f}",
                f"{values['ttft_p50']:.1f}",
                f"{values['ttft_p95']:.1f}",
                f"{values['cached']:.3f}",
            )
        console.print(table)


def print_overview(rows: list[dict[str, Any]]) -> None:
    table = Table(title="coding_agent: per level")
    for column in (
        "setup",
        "LLM turns",
        "window s",
        "TTFT p50",
        "TTFT p95",
        "cached from turn 2",
        "CPU ms per turn",
        "makespan p50 s",
        "LLM share",
        "tool share",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        summary = row["summary"]
        latency, breakdown = summary.latency, summary.workflow_breakdown
        llm_share = breakdown.llm_ms.mean / breakdown.makespan_ms.mean if breakdown else None
        tool_share = breakdown.tool_ms.mean / breakdown.makespan_ms.mean if breakdown else None
        table.add_row(
            row["label"],
            str(row["turns"]),
            f"{summary.timing.measured_window_ms / 1000:.1f}",
            f"{latency.ttft_ms.p50:.1f}",
            f"{latency.ttft_ms.p95:.1f}",
            f"{cached_from_turn_2(row['run_dir']):.3f}",
            f"{row['cpu_s'] * 1000 / row['turns']:.2f}",
            f"{summary.latency.workflow_ms.p50 / 1000:.2f}",
            "-" if llm_share is None else f"{llm_share:.2f}",
            "-" if tool_share is None else f"{tool_share:.2f}",
        )
    console.print(table)


def print_map_reduce(frames: dict[str, pd.DataFrame]) -> None:
    table = Table(title="map_reduce at concurrency 1: makespan vs the sum of its steps (per workflow)")
    for column in (
        "engine",
        "workflows",
        "makespan p50 ms",
        "sum of steps p50 ms",
        "speed-up p50",
        "min",
        "max",
    ):
        table.add_column(column, justify="right")
    for label, workflows in frames.items():
        ok = workflows[workflows["status"] == "ok"]
        speedup = ok["step_ms_sum"] / ok["workflow_ms"]
        table.add_row(
            label,
            str(len(ok)),
            f"{ok['workflow_ms'].median():.0f}",
            f"{ok['step_ms_sum'].median():.0f}",
            f"{speedup.median():.2f}x",
            f"{speedup.min():.2f}x",
            f"{speedup.max():.2f}x",
        )
    console.print(table)


def main(
    sessions: Annotated[int, typer.Option(help="coding_agent sessions per level.")] = 24,
    levels: Annotated[str, typer.Option(help="Concurrency levels, comma-separated.")] = "1,8,24",
    map_reduce_workflows: Annotated[int, typer.Option("--map-reduce", help="map_reduce workflows.")] = 12,
) -> None:
    concurrency = [int(level) for level in levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="flowperf-agentic-") as scratch:
        os.environ["FLOWPERF_HOME"] = str(Path(scratch) / "home")
        out_dir = Path(scratch) / "runs"
        out_dir.mkdir()
        rows, frames = asyncio.run(measure(sessions, concurrency, map_reduce_workflows, out_dir))
        print_overview(rows)
        print_depth_tables(rows[:-1])
        print_map_reduce(frames)


if __name__ == "__main__":
    typer.run(main)
