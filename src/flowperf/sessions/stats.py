"""What a session trace asks of a server, as numbers: `bench trace stats`.

Pure functions over per-request arrays (`Columns`, in trace order: sessions by first start, each
session's requests by start), so each figure can be checked by hand:
- turns: the main agent's requests (agent ''), per session; requests counts sub-agents' too.
- prompt growth: prompt tokens a request adds over the agent's previous request in the same session
  (negative when an agent compacts its context).
- think time: `think_ms` of requests that need another (a session's first request has none by definition).
- sub-agents: distinct non-empty agent paths per session. One runs beside its parent (the parallel share)
  when one of its requests is ordered neither before nor after (through needs) some request of its parent
  agent, so replay may run them at once (an `async_launched` sub-agent); it is concurrent when that holds
  for a request of any agent outside it (parallel fan-out of sub-agents the parent waits for, too).
- block reuse: of a request's prompt blocks (hash ids), the share an earlier request of the same session
  had (within), and of the rest the share another session has at any time (across; 0 in local scope,
  where ids mean nothing outside their session). Block-weighted over all requests with hash ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flowperf.sessions.format import SessionTrace
from flowperf.stats import describe


@dataclass(frozen=True)
class Columns:
    session: np.ndarray  # session index of each request
    agent: list[str]
    think_ms: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    has_needs: np.ndarray
    hash_offsets: np.ndarray  # request i's hash ids: hash_ids[hash_offsets[i]:hash_offsets[i + 1]]
    hash_ids: np.ndarray
    ids: list[str]
    needs: list[list[str]]


def columns(trace: SessionTrace) -> Columns:
    requests = list(trace.requests())
    counts = [len(r.hash_ids) for r in requests]
    return Columns(
        session=np.repeat(np.arange(len(trace.sessions)), [len(s.requests) for s in trace.sessions]),
        agent=[r.agent for r in requests],
        think_ms=np.array([r.think_ms for r in requests], dtype=float),
        prompt_tokens=np.array([r.prompt_tokens for r in requests], dtype=np.int64),
        output_tokens=np.array([r.output_tokens for r in requests], dtype=np.int64),
        has_needs=np.array([bool(r.needs) for r in requests]),
        hash_offsets=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64),
        hash_ids=np.array([h for r in requests for h in r.hash_ids], dtype=np.int64),
        ids=[r.id for r in requests],
        needs=[r.needs for r in requests],
    )


def turns_per_session(session: np.ndarray, agent: list[str], sessions: int) -> np.ndarray:
    """How many requests of the main agent (agent '') each session has."""
    main = np.array([name == "" for name in agent], dtype=bool)
    return np.bincount(session[main], minlength=sessions)


def prompt_growth(session: np.ndarray, agent: list[str], prompt_tokens: np.ndarray) -> np.ndarray:
    """Prompt tokens each request adds over the previous request of the same agent in the same session."""
    previous: dict[tuple[int, str], int] = {}
    growth = []
    for index, key in enumerate(zip(session.tolist(), agent, strict=True)):
        if key in previous:
            growth.append(int(prompt_tokens[index]) - int(prompt_tokens[previous[key]]))
        previous[key] = index
    return np.array(growth, dtype=np.int64)


def subagents(ids: list[str], needs: list[list[str]], agent: list[str]) -> tuple[int, int, int]:
    """(sub-agents, of which beside their parent, of which concurrent with anything) in one session's
    requests; see the module docstring."""
    index = {request_id: i for i, request_id in enumerate(ids)}
    ancestors = [0] * len(ids)
    for i in _topological(ids, needs, index):
        for need in needs[i]:
            ancestors[i] |= ancestors[index[need]] | (1 << index[need])
    descendants = [0] * len(ids)
    for i, bits in enumerate(ancestors):
        for j in range(len(ids)):
            if bits >> j & 1:
                descendants[j] |= 1 << i
    paths = sorted({name for name in agent if name})
    beside = concurrent = 0
    for path in paths:
        parent = path.rpartition("/")[0]
        members = _mask(agent, lambda name, p=path: name == p or name.startswith(p + "/"))
        unordered = 0
        for i in range(len(ids)):
            if members >> i & 1:
                unordered |= ~members & ~ancestors[i] & ~descendants[i] & ((1 << len(ids)) - 1)
        concurrent += unordered != 0
        beside += unordered & _mask(agent, lambda name, p=parent: name == p) != 0
    return len(paths), beside, concurrent


def _mask(agent: list[str], chosen) -> int:
    return sum(1 << i for i, name in enumerate(agent) if chosen(name))


def _topological(ids: list[str], needs: list[list[str]], index: dict[str, int]) -> list[int]:
    """Request indices with every request after the ones it needs (the trace is acyclic)."""
    order: list[int] = []
    placed = [False] * len(ids)
    for root in range(len(ids)):
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if placed[node]:
                continue
            if expanded:
                placed[node] = True
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((index[need], False) for need in needs[node] if not placed[index[need]])
    return order


def block_reuse(
    session: np.ndarray, hash_offsets: np.ndarray, hash_ids: np.ndarray, shared_across: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per request: blocks an earlier request of its session had, and of the others, blocks some other
    session has (always 0 when ids are not `shared_across` sessions)."""
    owners = np.repeat(session, np.diff(hash_offsets))
    pairs = np.unique(np.stack([hash_ids, owners]), axis=1) if hash_ids.size else np.zeros((2, 0), np.int64)
    ids, session_counts = np.unique(pairs[0], return_counts=True)
    in_many = set(ids[session_counts > 1].tolist()) if shared_across else set()
    within = np.zeros(session.size, dtype=np.int64)
    across = np.zeros(session.size, dtype=np.int64)
    seen: set[int] = set()
    for i in range(session.size):
        if i and session[i] != session[i - 1]:
            seen = set()
        blocks = hash_ids[hash_offsets[i] : hash_offsets[i + 1]].tolist()
        within[i] = sum(block in seen for block in blocks)
        across[i] = sum(block not in seen and block in in_many for block in blocks)
        seen.update(blocks)
    return within, across


def _pick(values: np.ndarray, keys: tuple[str, ...]) -> dict[str, Any]:
    figures = describe(values.astype(float))
    return {key: figures[key] for key in keys}


def trace_stats(trace: SessionTrace) -> dict[str, Any]:
    """Every figure of `bench trace stats`, as a JSON-ready mapping."""
    c = columns(trace)
    n_sessions = len(trace.sessions)
    turns = turns_per_session(c.session, c.agent, n_sessions)
    per_session = np.bincount(c.session, minlength=n_sessions)
    counted = [
        subagents(c.ids[a:b], c.needs[a:b], c.agent[a:b])
        for a, b in zip(np.cumsum([0, *per_session[:-1]]), np.cumsum(per_session), strict=True)
    ]
    agents = np.array([count for count, _, _ in counted], dtype=np.int64)
    beside = sum(b for _, b, _ in counted)
    within, across = block_reuse(c.session, c.hash_offsets, c.hash_ids, trace.header.hash_scope == "global")
    blocks = np.diff(c.hash_offsets)
    first = np.flatnonzero(np.r_[True, c.session[1:] != c.session[:-1]])
    shape = ("count", "mean", "p50", "p90", "max")
    return {
        "source": trace.header.source,
        "synthetic": trace.header.synthetic,
        "block_size": trace.header.block_size,
        "hash_scope": trace.header.hash_scope,
        "sessions": n_sessions,
        "requests": int(c.session.size),
        "requests_per_session": _pick(per_session, shape),
        "turns_per_session": _pick(turns, shape),
        "prompt_tokens": _pick(c.prompt_tokens, shape),
        "output_tokens": _pick(c.output_tokens, shape),
        "prompt_growth_tokens": _pick(
            prompt_growth(c.session, c.agent, c.prompt_tokens), ("count", "mean", "min", "p50", "p90", "max")
        ),
        "think_ms": _pick(c.think_ms[c.has_needs], ("count", "mean", "p50", "p90", "p99", "max")),
        "subagents": {
            "count": int(agents.sum()),
            "beside_parent": beside,
            "parallel_share": _share(beside, agents.sum()),
            "concurrent": sum(c for _, _, c in counted),
            "sessions_with_subagents": int((agents > 0).sum()),
            "requests": sum(1 for name in c.agent if name),
        },
        "block_reuse": {
            "requests_with_hash_ids": int((blocks > 0).sum()),
            "blocks": int(blocks.sum()),
            "within_session_share": _share(within.sum(), blocks.sum()),
            "across_sessions_share": _share(across.sum(), blocks.sum()),
            "first_request_across_share": _share(across[first].sum(), blocks[first].sum()),
        },
    }


def _share(part: int, whole: int) -> float | None:
    return float(part) / float(whole) if whole else None
