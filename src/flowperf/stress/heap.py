"""An indexed binary min-heap over GPU ids, compiled with numba for the simulator's event loops.

The event loops need the GPU whose next event comes first, and the continuous scheduler also moves a
GPU's event earlier when it plans to admit a request at its next iteration boundary. An indexed heap does
both in O(log N) without stale entries. Ties on time go to the lower GPU id so every run, serial or
parallel, orders simultaneous events the same way.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _before(keys: np.ndarray, first: int, second: int) -> bool:
    return keys[first] < keys[second] or (keys[first] == keys[second] and first < second)


@njit(cache=True)
def _sift_up(heap: np.ndarray, pos: np.ndarray, keys: np.ndarray, index: int) -> None:
    item = heap[index]
    while index > 0:
        parent = (index - 1) >> 1
        above = heap[parent]
        if not _before(keys, item, above):
            break
        heap[index] = above
        pos[above] = index
        index = parent
    heap[index] = item
    pos[item] = index


@njit(cache=True)
def _sift_down(heap: np.ndarray, pos: np.ndarray, keys: np.ndarray, index: int, size: int) -> None:
    item = heap[index]
    while True:
        child = 2 * index + 1
        if child >= size:
            break
        if child + 1 < size and _before(keys, heap[child + 1], heap[child]):
            child += 1
        below = heap[child]
        if not _before(keys, below, item):
            break
        heap[index] = below
        pos[below] = index
        index = child
    heap[index] = item
    pos[item] = index


@njit(cache=True)
def heap_set(heap: np.ndarray, pos: np.ndarray, keys: np.ndarray, size: int, item: int, key: float) -> int:
    """Insert `item` with `key`, or move it to `key` if present; return the new size."""
    keys[item] = key
    index = pos[item]
    if index < 0:
        heap[size] = item
        _sift_up(heap, pos, keys, size)
        return size + 1
    _sift_up(heap, pos, keys, index)
    _sift_down(heap, pos, keys, pos[item], size)
    return size


@njit(cache=True)
def heap_remove(heap: np.ndarray, pos: np.ndarray, keys: np.ndarray, size: int, item: int) -> int:
    """Remove `item` if present; return the new size."""
    index = pos[item]
    if index < 0:
        return size
    pos[item] = -1
    size -= 1
    if index < size:
        moved = heap[size]
        heap[index] = moved
        _sift_up(heap, pos, keys, index)
        _sift_down(heap, pos, keys, pos[moved], size)
    return size
