"""Per-test figures from one simulation outcome: SLA attainment, latency percentiles, throughput, usage.

The horizon for rates and utilisation runs from the first arrival to the last completion, so a cluster
that falls behind is charged for draining its backlog rather than credited with an arrival-limited rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flowperf.stats import describe
from flowperf.stress.sim import Outcome
from flowperf.stress.workload import Workload


def outcome_metrics(workload: Workload, outcome: Outcome, n_gpus: int, d_sla: float) -> dict[str, Any]:
    """SLA attainment (time to first token <= `d_sla`), TTFT and end-to-end statistics, rates, usage."""
    ttft = outcome.first_token - workload.arrival_s
    e2e = outcome.finish - workload.arrival_s
    horizon = float(outcome.finish.max() - workload.arrival_s[0])
    ttft_stats, e2e_stats = describe(ttft), describe(e2e)
    per_second = 1.0 / horizon if horizon > 0 else float("nan")
    return {
        "sla_attainment": float(np.mean(ttft <= d_sla)),
        **{f"ttft_{name}_s": ttft_stats[name] for name in ("mean", "p50", "p95", "p99")},
        **{f"e2e_{name}_s": e2e_stats[name] for name in ("mean", "p50", "p95", "p99")},
        "wait_mean_s": float(np.mean(outcome.start - workload.arrival_s)),
        "throughput_rps": workload.arrival_s.size * per_second,
        "throughput_tokens_s": float(workload.output_tokens.sum()) * per_second,
        "gpu_utilisation": outcome.busy_gpu_s * per_second / n_gpus,
        "batch_fill": outcome.mean_fill if outcome.batches else None,
        "batches": outcome.batches,
        "iterations": outcome.iterations,
        "events": outcome.events,
        "preemptions": outcome.preemptions,
    }
