"""Token ids for a session trace's prompts, from its hash ids: token-exact and block-exact, vectorised.

Each hash id stands for one KV block of `block_size` token ids. A block's ids are a pure function of its
key (a counter-based generator: splitmix64 of key and position), so equal keys give equal blocks in any
request, any process and any run, with no per-block generator to seed: a million blocks are a few numpy
passes. The key is the hash id itself when the trace's scope is global (blocks shared across sessions),
the hash id mixed with the session when it is local (shared only within one), and a request's own
(request, block) pair when it has no hash ids (nothing shared). A prompt is its blocks end to end, cut to
its exact length: the last block is partial, and a partial block is a prefix of the full one, which is
what a prefix cache sees when a later turn completes it.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
UNIQUE_DOMAIN = np.uint64(0xD1B54A32D192ED03)  # keys of requests without hash ids, apart from any hash id


def splitmix64(values: np.ndarray, copy: bool = True) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic is the point), in place
    unless `copy`."""
    z = values.astype(np.uint64, copy=copy)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def mix(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """One uint64 key from two (order matters), so (session, hash id) pairs never collide in practice."""
    with np.errstate(over="ignore"):
        left = splitmix64(np.asarray(a, dtype=np.uint64) + GOLDEN)
        return splitmix64(left ^ np.asarray(b, dtype=np.uint64))


def block_tokens(keys: np.ndarray, block_size: int, ids: tuple[int, int]) -> np.ndarray:
    """The token ids of each block key: shape (len(keys), block_size), every id in [ids[0], ids[1])."""
    positions = np.arange(block_size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        counters = keys.astype(np.uint64)[:, None] * GOLDEN + positions[None, :]
    mixed = splitmix64(counters, copy=False)
    mixed >>= np.uint64(32)
    mixed *= np.uint64(ids[1] - ids[0])  # the top 32 bits scaled to the range: no modulo, no bias to speak of
    mixed >>= np.uint64(32)
    tokens = mixed.view(np.int64)
    tokens += ids[0]
    return tokens


def block_keys(hash_ids: list[int], scope_key: int | None) -> np.ndarray:
    """Keys of a request's hash ids: the ids themselves (global scope) or mixed with `scope_key` (local)."""
    hashes = np.asarray(hash_ids, dtype=np.int64).astype(np.uint64)
    return hashes if scope_key is None else mix(scope_key, hashes)


def unique_keys(request_key: int, blocks: int) -> np.ndarray:
    """Keys no other request has: for a request without hash ids."""
    return mix(mix(UNIQUE_DOMAIN, request_key), np.arange(blocks, dtype=np.uint64))


def prompt_tokens(keys: np.ndarray, block_size: int, length: int, ids: tuple[int, int]) -> np.ndarray:
    """A prompt of exactly `length` ids: the blocks of `keys` end to end, the last one cut short."""
    assert keys.size * block_size >= length > (keys.size - 1) * block_size, "blocks do not cover the prompt"
    return block_tokens(keys, block_size, ids).reshape(-1)[:length]
