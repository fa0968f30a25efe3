"""Benchmark: hash-id -> token synthesis for session-trace replay (issue 21), vectorised vs per-block.

    .venv/bin/python benchmarks/session_synthesis.py [--blocks 1000000] [--block-size 64] [--chunk 65536]

Synthesizes the token ids of `--blocks` KV blocks (random 63-bit hash ids, global scope) with
`sessions.synthesis.block_tokens` in chunks of `--chunk` blocks, and, side by side in the same run, the
per-block generator `flows.trace_source.block_ids` (one seeded numpy Generator per hash id, as `bench
replay mooncake` does) on a sample of blocks, scaled to the same count. Reports blocks/s, tokens/s and the
time for all the blocks, one CPU core.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

console = Console()


def vectorised_s(hashes: np.ndarray, block_size: int, chunk: int) -> float:
    from flowperf.sessions.synthesis import block_keys, block_tokens

    ids = (1000, 24000)
    started = time.perf_counter()
    checksum = 0
    for at in range(0, hashes.size, chunk):
        checksum ^= int(
            block_tokens(block_keys(hashes[at : at + chunk].tolist(), None), block_size, ids)[:, 0].sum()
        )
    return time.perf_counter() - started


def per_block_s(hashes: np.ndarray, block_size: int, sample: int) -> float:
    from flowperf.flows.trace_source import block_ids

    started = time.perf_counter()
    for value in hashes[:sample].tolist():
        block_ids(value, block_size, (1000, 24000))
    return (time.perf_counter() - started) * hashes.size / sample


def main(
    blocks: Annotated[int, typer.Option(help="KV blocks to synthesize.")] = 1_000_000,
    block_size: Annotated[int, typer.Option(help="Tokens per block.")] = 64,
    chunk: Annotated[int, typer.Option(help="Blocks per vectorised call.")] = 65_536,
    sample: Annotated[int, typer.Option(help="Blocks timed for the per-block generator.")] = 20_000,
) -> None:
    hashes = np.random.default_rng(0).integers(0, 2**63 - 1, size=blocks, dtype=np.int64)
    vector = vectorised_s(hashes, block_size, chunk)
    single = per_block_s(hashes, block_size, min(sample, blocks))
    table = Table(title=f"{blocks:,} blocks of {block_size} tokens ({blocks * block_size:,} tokens)")
    for column in ("method", "total s", "blocks/s", "tokens/s"):
        table.add_column(column, justify="right")
    for name, seconds in (("vectorised (sessions.synthesis)", vector), ("per-block Generator", single)):
        table.add_row(
            name, f"{seconds:.2f}", f"{blocks / seconds:,.0f}", f"{blocks * block_size / seconds:,.0f}"
        )
    console.print(table)
    console.print(f"speed-up: {single / vector:.1f}x")


if __name__ == "__main__":
    typer.run(main)
