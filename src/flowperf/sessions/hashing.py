"""KV-block hash ids of a prompt: what lets a replay reproduce the prefix reuse a recording saw.

A prompt's token ids are cut into blocks of `block_size` (the last one may be partial) and each block's id
is the hash of (the previous block's id, this block's tokens). The chain makes an id name the whole prefix
up to the end of its block, as a prefix cache does: two prompts share their first k ids exactly when they
share their first k blocks of tokens, wherever they came from. blake2b, not Python's `hash()`, so the
same tokens give the same ids in every process and on every run (recordings made apart can be merged);
ids are cut to 63 bits so they fit a signed 64-bit integer in any JSON reader.
"""

from __future__ import annotations

import hashlib
import struct

_MASK_63 = (1 << 63) - 1
_ROOT = 0


def block_hash(previous: int, block: list[int] | tuple[int, ...]) -> int:
    """The id of one block after the block whose id is `previous` (0 before the first)."""
    data = struct.pack(f"<Q{len(block)}q", previous, *block)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _MASK_63


def chained_block_hashes(token_ids: list[int] | tuple[int, ...], block_size: int) -> list[int]:
    """One id per block of `block_size` tokens, each chained on the one before it."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    hashes: list[int] = []
    previous = _ROOT
    for start in range(0, len(token_ids), block_size):
        previous = block_hash(previous, token_ids[start : start + block_size])
        hashes.append(previous)
    return hashes
