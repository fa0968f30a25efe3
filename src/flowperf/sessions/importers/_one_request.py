"""What the Mooncake and Azure importers share: request traces flowperf already replays, as sessions.

They have no sessions: each request becomes a one-request session, started at its recorded arrival. They
are read by `flowperf.stress.traces.read_trace`, the one loader of these files, so the simulator, the
request replay and session replay see the same rows in the same order. Mooncake keeps its hash ids (512
prompt tokens each, global: equal ids are equal prefixes across requests); Azure and BurstGPT have none,
so every block is unique.
"""

from __future__ import annotations

from pathlib import Path

from flowperf.errors import UserError
from flowperf.sessions.format import TraceHeader, TraceRequest
from flowperf.sessions.importers._common import FreshIds, covering


def one_request_sessions(path: Path, layout_name: str) -> tuple[TraceHeader, list[TraceRequest]]:
    """Each request of a Mooncake, Azure or BurstGPT trace as a session of its own."""
    from flowperf.stress import traces

    layout = {"mooncake": traces.MOONCAKE, "azure": traces.AZURE, "burstgpt": traces.BURSTGPT}[layout_name]
    trace = traces.read_trace(path, layout)
    block = trace.block_tokens or traces.MOONCAKE_BLOCK_TOKENS
    fresh = FreshIds(int(trace.hash_ids.max()) if trace.hash_ids.size else -1)
    width = len(str(trace.size))
    requests = []
    for index in range(trace.size):
        prompt = int(trace.prompt_tokens[index])
        if prompt < 1:
            raise UserError(
                f"{path}: request {index + 1} in arrival order has {prompt} prompt tokens (need >= 1)"
            )
        ids = covering([int(h) for h in trace.hashes(index)], prompt, block, fresh)
        if isinstance(ids, str):
            raise UserError(f"{path}: request {index + 1} in arrival order: hash_ids: {ids}")
        name = f"{layout_name}-{index:0{width}d}"
        requests.append(
            TraceRequest(
                session=name,
                id=name,
                start_ms=float(trace.arrival_s[index]) * 1000.0,
                prompt_tokens=prompt,
                output_tokens=int(trace.output_tokens[index]),
                hash_ids=ids,
            )
        )
    header = TraceHeader(block_size=block, hash_scope="global", source=layout_name,
                         notes=f"imported from {path.name}: one request per session")  # fmt: skip
    return header, requests
