"""`bench compare BASE NEW`: did a change help, hurt, or do nothing that the noise cannot explain?

Per metric, the samples of both runs are compared through a seeded bootstrap confidence interval of the
difference of their medians: a change counts only when the interval excludes zero *and* the medians differ
by more than the threshold. Two means are never compared. A metric with one value per run (peak RSS) has
no test; its verdict uses the threshold alone and says so, and it is gated only when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flowperf import plots
from flowperf.errors import UserError
from flowperf.report import data_uri, fmt, metric_samples, render_page
from flowperf.rundata import RunData
from flowperf.summary import resource_summary

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_CHUNK = 200
RELIABLE_SAMPLES = 10
DEFAULT_GATE = ("workflow_ms", "step_ms", "ttft_ms", "itl_ms", "tokens_per_s")
ALL_METRICS = (*DEFAULT_GATE, "peak_rss_mb")


def bootstrap_median_difference(
    base: np.ndarray, new: np.ndarray, *, alpha: float, seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval (1 - alpha) of median(new) - median(base)."""
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        count = min(BOOTSTRAP_CHUNK, resamples - start)
        base_medians = np.median(base[rng.integers(0, len(base), (count, len(base)))], axis=1)
        new_medians = np.median(new[rng.integers(0, len(new), (count, len(new)))], axis=1)
        differences[start : start + count] = new_medians - base_medians
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def smallest_detectable_p(n_base: int, n_new: int) -> float:
    """The smallest two-sided p-value any rank test can reach with these sample sizes."""
    log_arrangements = math.lgamma(n_base + n_new + 1) - math.lgamma(n_base + 1) - math.lgamma(n_new + 1)
    return min(1.0, 2.0 * math.exp(-log_arrangements))


@dataclass(frozen=True)
class Comparison:
    metric: str
    n_base: int
    n_new: int
    base: float | None
    new: float | None
    delta_pct: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    gated: bool
    note: str = ""

    @property
    def regressed(self) -> bool:
        return self.gated and self.verdict == "regression"


def judge(
    metric: str,
    base: np.ndarray,
    new: np.ndarray,
    *,
    higher_is_better: bool,
    alpha: float,
    threshold_pct: float,
    seed: int,
    gated: bool,
) -> Comparison:
    """Compare one metric's samples; `verdict` is regression, improvement or no significant change."""
    base, new = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    if len(base) == 0 or len(new) == 0:
        return Comparison(metric, len(base), len(new), None, None, None, None, None, "no data", gated)
    base_median, new_median = float(np.median(base)), float(np.median(new))
    delta = (new_median / base_median - 1.0) * 100.0 if base_median else math.inf
    worse = delta < 0 if higher_is_better else delta > 0
    beyond_threshold = abs(delta) >= threshold_pct
    if len(base) == 1 and len(new) == 1:
        verdict = ("regression" if worse else "improvement") if beyond_threshold else "no significant change"
        note = "one value per run: threshold only, no significance test"
        return Comparison(metric, 1, 1, base_median, new_median, delta, None, None, verdict, gated, note)
    low, high = bootstrap_median_difference(base, new, alpha=alpha, seed=seed)
    significant = low > 0 or high < 0
    note = ""
    if smallest_detectable_p(len(base), len(new)) > alpha:
        significant = False
        note = f"too few samples to reach alpha {alpha:g}"
    elif min(len(base), len(new)) < RELIABLE_SAMPLES:
        note = f"fewer than {RELIABLE_SAMPLES} samples: the interval is rough"
    if significant and beyond_threshold:
        verdict = "regression" if worse else "improvement"
    else:
        verdict = "no significant change"
    return Comparison(
        metric, len(base), len(new), base_median, new_median, delta, low, high, verdict, gated, note
    )


def _step_samples(step_id: str) -> Callable[[RunData], np.ndarray]:
    def samples(run: RunData) -> np.ndarray:
        steps = run.ok_steps
        return steps.loc[steps["step_id"] == step_id, "step_ms"].to_numpy(float)

    return samples


def _per_request_itl(run: RunData) -> np.ndarray:
    steps = run.ok_steps
    if steps.empty:
        return np.array([])
    means = [float(np.mean(gaps)) for gaps in steps["itl_ms"] if len(gaps)]
    return np.asarray(means)


def _tokens_per_s(run: RunData) -> np.ndarray:
    steps = run.ok_steps
    if steps.empty:
        return np.array([])
    return (steps["output_tokens"] / (steps["step_ms"] / 1000.0)).to_numpy(float)


def _peak_rss(run: RunData) -> np.ndarray:
    peak = resource_summary(run.metrics).peak_rss_mb
    return np.array([] if peak is None else [peak])


def metric_extractors(
    base: RunData, new: RunData
) -> list[tuple[str, str, Callable[[RunData], np.ndarray], bool]]:
    """(name, gate family, samples of a run, higher is better) for every metric both runs can have."""
    metrics: list[tuple[str, str, Callable[[RunData], np.ndarray], bool]] = [
        ("workflow_ms", "workflow_ms", lambda run: metric_samples(run)["workflow_ms"], False),
    ]
    step_ids = [
        s
        for s in dict.fromkeys(base.ok_steps.get("step_id", []))
        if s in set(new.ok_steps.get("step_id", []))
    ]
    for step_id in step_ids:
        metrics.append((f"step_ms[{step_id}]", "step_ms", _step_samples(step_id), False))
    metrics += [
        ("ttft_ms", "ttft_ms", lambda run: metric_samples(run)["ttft_ms"], False),
        ("itl_ms (per-request mean)", "itl_ms", _per_request_itl, False),
        ("tokens_per_s (per step)", "tokens_per_s", _tokens_per_s, True),
        ("peak_rss_mb", "peak_rss_mb", _peak_rss, False),
    ]
    return metrics


def parse_gate(gate: str | None) -> tuple[str, ...]:
    if gate is None:
        return DEFAULT_GATE
    names = tuple(name.strip() for name in gate.split(",") if name.strip())
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown or not names:
        named = ", ".join(unknown) or "(none)"
        raise UserError(f"--gate {gate}: unknown metric(s) {named}; choose from {', '.join(ALL_METRICS)}")
    return names


def comparability_problems(base: RunData, new: RunData) -> list[str]:
    """Why two runs do not measure the same workload (different flows or model), if they do not."""
    problems = []
    base_flow, new_flow = base.config.get("flow", {}), new.config.get("flow", {})
    for key, what in (("name", "flow"), ("template_sha256", "flow template"), ("fixture_sha256", "fixtures")):
        if base_flow.get(key) != new_flow.get(key):
            problems.append(f"different {what} ({base_flow.get(key)} vs {new_flow.get(key)})")
    base_model, new_model = base.config.get("model", {}), new.config.get("model", {})
    if (base_model.get("name") or base_model.get("path")) != (new_model.get("name") or new_model.get("path")):
        problems.append(f"different model ({base_model.get('name')} vs {new_model.get('name')})")
    return problems


def compare_runs(
    base: RunData, new: RunData, *, alpha: float, threshold_pct: float, gate: tuple[str, ...], seed: int
) -> list[Comparison]:
    return [
        judge(
            name,
            samples(base),
            samples(new),
            higher_is_better=higher,
            alpha=alpha,
            threshold_pct=threshold_pct,
            seed=seed,
            gated=family in gate,
        )
        for name, family, samples, higher in metric_extractors(base, new)
    ]


def comparison_rows(results: list[Comparison], alpha: float) -> tuple[list[str], list[list[str]]]:
    """The verdict table, as the terminal and the HTML page both show it."""
    header = [
        "metric",
        "n",
        "base p50",
        "new p50",
        "delta",
        f"{1 - alpha:.0%} CI of diff",
        "verdict",
        "gated",
        "note",
    ]
    rows = [
        [
            r.metric,
            f"{r.n_base}/{r.n_new}",
            fmt(r.base, 2),
            fmt(r.new, 2),
            "-" if r.delta_pct is None else f"{r.delta_pct:+.1f}%",
            "-" if r.ci_low is None else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
            r.verdict,
            "yes" if r.gated else "",
            r.note,
        ]
        for r in results
    ]
    return header, rows


def compare_html(
    base: RunData, new: RunData, results: list[Comparison], *, alpha: float, threshold: float
) -> str:
    """The verdict table and both runs' distributions overlaid, per latency metric."""
    header, rows = comparison_rows(results, alpha)
    base_samples, new_samples = metric_samples(base), metric_samples(new)
    figures = []
    for metric, title in (
        ("workflow_ms", "workflow latency"),
        ("step_ms", "step latency"),
        ("ttft_ms", "TTFT"),
        ("itl_ms", "ITL"),
    ):
        png = plots.distribution({"base": base_samples[metric], "new": new_samples[metric]}, title)
        if (uri := data_uri(png)) is not None:
            figures.append((f"{title}: base vs new", uri))
    sections = [
        {"title": "Runs", "rows": [("base", str(base.run_dir)), ("new", str(new.run_dir))]},
        {"title": f"Verdicts (alpha {alpha:g}, threshold {threshold:g}%)", "header": header, "rows": rows},
    ]
    return render_page(f"flowperf compare: {base.run_dir.name} -> {new.run_dir.name}", sections, figures)


def sample_warnings(comparisons: list[Comparison]) -> list[str]:
    return [
        f"{c.metric}: {c.note} (n = {c.n_base} vs {c.n_new})"
        for c in comparisons
        if c.note.startswith(("too few", "fewer"))
    ]
