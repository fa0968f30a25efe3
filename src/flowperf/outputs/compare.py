"""`bench compare BASE NEW`: did a change help, hurt, or do nothing that the noise cannot explain?

Per metric, the samples of both runs are compared through a seeded bootstrap of the difference of their
medians. The bootstrap resamples whole workflows (a block bootstrap): a workflow's steps and token gaps
share its prompts, its cache state and its moment on a shared machine, so they are not independent, and
resampling them one by one would make intervals too narrow and verdicts too eager.

Each metric gets a (1 - alpha) percentile interval and a two-sided bootstrap p-value (twice the smaller
share of resampled differences on either side of zero: the test the percentile interval inverts). With
several gated metrics the family is corrected by Holm's step-down method, so the chance that any gated
metric shows a regression by noise alone stays at alpha. A change counts only when it is significant
*and* the medians differ by more than the threshold. Two means are never compared. A metric with one
value per run (peak RSS) has no test; its verdict uses the threshold alone and says so, and it is gated
only when asked for.

Runs whose settings differ (load, tokens, engine) do not measure the same experiment; they are refused
with every difference listed, unless --force.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError
from rich.console import Console

from flowperf.config import NOT_FINGERPRINTED, RunConfig, differences
from flowperf.errors import UserError
from flowperf.modes.sweep.levels import LevelRow
from flowperf.modes.sweep.store import is_sweep_dir, read_rows, read_sweep
from flowperf.outputs import plots
from flowperf.outputs.report import data_uri, fmt, metric_samples, render_page
from flowperf.outputs.tables import TableSpec, print_table
from flowperf.rundir.rundata import RunData, load_run
from flowperf.rundir.session_summary import THINK_BUCKETS_MS
from flowperf.rundir.summary import llm_steps, resource_summary, start_delay, workflow_latency
from flowperf.stats import NO_CHANGE, holm_verdicts, percent_change, pooled_gaps, tokens_per_s

BOOTSTRAP_RESAMPLES = 2000
MAX_RESAMPLES = 20_000
CELLS_PER_CHUNK = 4_000_000  # resamples x values held at once: ~100 MB of work arrays at most
RELIABLE_SAMPLES = 10
DEFAULT_GATE = ("workflow_ms", "workflow_latency_ms", "step_ms", "ttft_ms", "itl_ms", "tokens_per_s")
SESSION_METRICS = ("session_llm_ms", "session_engine_queue_ms", "session_scheduling_gap_ms", "cached_share")
ALL_METRICS = (*DEFAULT_GATE, "start_delay_ms", "peak_rss_mb", *SESSION_METRICS)
NOT_COMPARED_SETTINGS = ("flows_dir", "fixtures_dir", "engine.model")  # compared by content and name


@dataclass(frozen=True)
class Samples:
    """A metric's values in one run and the workflow each came from (its block)."""

    values: np.ndarray
    blocks: np.ndarray

    @classmethod
    def of(cls, samples: Samples | Iterable[float]) -> Samples:
        """`samples` as they are, or plain values each its own block (one value per workflow)."""
        if isinstance(samples, Samples):
            return samples
        values = np.asarray(samples, dtype=float)
        return cls(values, np.arange(len(values)))

    @property
    def units(self) -> int:
        """How many workflows the values come from: the bootstrap's sample size."""
        return len(np.unique(self.blocks))


def block_bootstrap_medians(samples: Samples, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The median of the pooled values of each of `resamples` draws of whole workflows, with replacement.

    A draw is a count per workflow; the pooled median is then the weighted median of the values sorted
    once (the mean of the two middle ones when the pooled count is even, as np.median), so a resample
    costs O(values) and no copy of the pooled sample is ever made.
    """
    order = np.argsort(samples.values, kind="stable")
    values = samples.values[order]
    _, block_of = np.unique(samples.blocks[order], return_inverse=True)
    units = int(block_of.max()) + 1
    medians = np.empty(resamples)
    chunk = max(1, CELLS_PER_CHUNK // max(len(values), units))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        picks = rng.integers(0, units, (count, units)) + units * np.arange(count)[:, None]
        weights = np.bincount(picks.ravel(), minlength=count * units).astype(np.int32).reshape(count, units)
        cumulative = np.cumsum(weights[:, block_of], axis=1, dtype=np.int32)
        total = cumulative[:, -1:]
        low = np.sum(cumulative <= (total - 1) // 2, axis=1)
        high = np.sum(cumulative <= total // 2, axis=1)
        medians[start : start + count] = (values[low] + values[high]) / 2.0
    return medians


def bootstrap_differences(
    base: Samples | np.ndarray, new: Samples | np.ndarray, *, seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> np.ndarray:
    """Bootstrap distribution of median(new) - median(base), each run's workflows resampled."""
    rng = np.random.default_rng(seed)
    base_medians = block_bootstrap_medians(Samples.of(base), rng, resamples)
    return block_bootstrap_medians(Samples.of(new), rng, resamples) - base_medians


def bootstrap_median_difference(
    base: Samples | np.ndarray,
    new: Samples | np.ndarray,
    *,
    alpha: float,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float]:
    """Percentile bootstrap interval (1 - alpha) of median(new) - median(base)."""
    differences_ = bootstrap_differences(base, new, seed=seed, resamples=resamples)
    low, high = np.quantile(differences_, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_p_value(differences_: np.ndarray) -> float:
    """Two-sided p-value of "no difference": twice the smaller share of resampled differences at or
    beyond zero on either side, counted with the +1 that keeps it above zero. It is below alpha exactly
    when zero lies outside the (1 - alpha) percentile interval (up to that +1), so the interval shown and
    the test gated on agree."""
    below = int(np.count_nonzero(differences_ <= 0))
    above = int(np.count_nonzero(differences_ >= 0))
    return min(1.0, 2.0 * (min(below, above) + 1) / (len(differences_) + 1))


def resamples_for(alpha: float, tests: int) -> int:
    """Enough resamples that Holm's strictest level (alpha / tests) is above the smallest p-value."""
    return min(MAX_RESAMPLES, max(BOOTSTRAP_RESAMPLES, math.ceil(4 * max(tests, 1) / alpha)))


def smallest_detectable_p(n_base: int, n_new: int) -> float:
    """The smallest two-sided p-value any rank test can reach with these sample sizes."""
    log_arrangements = math.lgamma(n_base + n_new + 1) - math.lgamma(n_base + 1) - math.lgamma(n_new + 1)
    return min(1.0, 2.0 * math.exp(-log_arrangements))


@dataclass(frozen=True)
class Comparison:
    """One metric's verdict. `n_*` count workflows (the bootstrap's units; 1 for a per-run value);
    `change` is what the delta would be called were it significant (None within the threshold);
    `p_holm` is the p-value adjusted over the gated metrics (gated metrics only)."""

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
    p_value: float | None = None
    p_holm: float | None = None
    change: str | None = None
    testable: bool = False

    @property
    def regressed(self) -> bool:
        return self.gated and self.verdict == "regression"


def _verdict(change: str | None, significant: bool) -> str:
    return change if significant and change else NO_CHANGE


def judge(
    metric: str,
    base: Samples | np.ndarray,
    new: Samples | np.ndarray,
    *,
    higher_is_better: bool,
    alpha: float,
    threshold_pct: float,
    seed: int,
    gated: bool,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Comparison:
    """Compare one metric's samples on its own (p-value against alpha; `compare_runs` then applies Holm
    over the gated ones); `verdict` is regression, improvement or no significant change."""
    base, new = Samples.of(base), Samples.of(new)
    n_base, n_new = base.units, new.units
    if n_base == 0 or n_new == 0:
        return Comparison(metric, n_base, n_new, None, None, None, None, None, "no data", gated)
    base_median, new_median = float(np.median(base.values)), float(np.median(new.values))
    delta = percent_change(base_median, new_median)
    worse = delta < 0 if higher_is_better else delta > 0
    change = ("regression" if worse else "improvement") if abs(delta) >= threshold_pct else None
    common = {"metric": metric, "base": base_median, "new": new_median, "delta_pct": delta, "change": change}
    if len(base.values) == 1 and len(new.values) == 1:
        note = "one value per run: threshold only, no significance test"
        return Comparison(**common, n_base=1, n_new=1, ci_low=None, ci_high=None,
                          verdict=change or "no significant change", gated=gated, note=note)  # fmt: skip
    resampled = bootstrap_differences(base, new, seed=seed, resamples=resamples)
    low, high = (float(q) for q in np.quantile(resampled, [alpha / 2, 1 - alpha / 2]))
    p_value = bootstrap_p_value(resampled)
    testable, note = True, ""
    if smallest_detectable_p(n_base, n_new) > alpha:
        testable, note = False, f"too few samples to reach alpha {alpha:g}"
    elif min(n_base, n_new) < RELIABLE_SAMPLES:
        note = f"fewer than {RELIABLE_SAMPLES} workflows: the interval is rough"
    return Comparison(
        **common,
        n_base=n_base,
        n_new=n_new,
        ci_low=low,
        ci_high=high,
        verdict=_verdict(change, testable and p_value <= alpha),
        gated=gated,
        note=note,
        p_value=p_value,
        testable=testable,
    )


def _by_workflow(frame: pd.DataFrame, values: pd.Series | np.ndarray) -> Samples:
    return Samples(np.asarray(values, dtype=float), frame["flow_index"].to_numpy())


def _workflow_metric(column: Callable[[pd.DataFrame], pd.Series]) -> Callable[[RunData], Samples]:
    def samples(run: RunData) -> Samples:
        workflows = run.ok_workflows
        if workflows.empty:
            return Samples.of([])
        values = column(workflows)
        kept = workflows[values.notna()]
        return _by_workflow(kept, values[values.notna()])

    return samples


def _step_metric(
    value: Callable[[pd.DataFrame], pd.Series], step_id: str | None = None
) -> Callable[[RunData], Samples]:
    def samples(run: RunData) -> Samples:
        steps = run.ok_steps
        if steps.empty:
            return Samples.of([])
        # one step id: whatever its kind (a tool's step_ms is its pause); run-wide: LLM requests only
        steps = steps[steps["step_id"] == step_id] if step_id is not None else llm_steps(steps)
        values = value(steps)
        kept = values.notna()
        return _by_workflow(steps[kept], values[kept])

    return samples


def _pooled_itl(run: RunData) -> Samples:
    """ITL as the summary defines it (stats.pooled_gaps): every gap of every ok LLM step, each gap
    belonging to its workflow for the block bootstrap."""
    steps = llm_steps(run.ok_steps)
    if steps.empty:
        return Samples.of([])
    counts = steps["itl_ms"].map(len).to_numpy()
    return Samples(pooled_gaps(steps["itl_ms"]), np.repeat(steps["flow_index"].to_numpy(), counts))


def _tokens_per_s(steps: pd.DataFrame) -> pd.Series:
    return tokens_per_s(steps["output_tokens"], steps["step_ms"])


def _peak_rss(run: RunData) -> Samples:
    peak = resource_summary(run.metrics).peak_rss_mb
    return Samples.of([] if peak is None else [peak])


def _open_loop(run: RunData) -> bool:
    return not run.workflows.empty and bool(run.workflows["arrival_offset_ms"].notna().any())


Extractor = tuple[str, str, Callable[[RunData], Samples], bool]


def metric_extractors(base: RunData, new: RunData) -> list[Extractor]:
    """(name, gate family, samples of a run, higher is better) for every metric both runs can have.
    From-arrival latency and start delay only when both runs are open loop (closed loop the latency is
    workflow_ms, and would be counted twice)."""
    metrics: list[Extractor] = [
        ("workflow_ms", "workflow_ms", _workflow_metric(lambda w: w["workflow_ms"]), False)
    ]
    if _open_loop(base) and _open_loop(new):
        metrics += [
            (
                "workflow_latency_ms (from arrival)",
                "workflow_latency_ms",
                _workflow_metric(workflow_latency),
                False,
            ),
            ("start_delay_ms (slot wait)", "start_delay_ms", _workflow_metric(start_delay), False),
        ]
    new_ids = set(new.ok_steps.get("step_id", []))
    for step_id in (s for s in dict.fromkeys(base.ok_steps.get("step_id", [])) if s in new_ids):
        metrics.append(
            (f"step_ms[{step_id}]", "step_ms", _step_metric(lambda s: s["step_ms"], step_id), False)
        )
    return [
        *metrics,
        ("ttft_ms", "ttft_ms", _step_metric(lambda s: s["ttft_ms"]), False),
        ("itl_ms (every gap)", "itl_ms", _pooled_itl, False),
        ("tokens_per_s (per step)", "tokens_per_s", _step_metric(_tokens_per_s), True),
        *session_extractors(base, new),
        ("peak_rss_mb", "peak_rss_mb", _peak_rss, False),
    ]


def _session_replay(run: RunData) -> bool:
    steps = run.ok_steps
    return not steps.empty and "request_id" in steps and bool(steps["request_id"].notna().any())


def _ttft_after_think(low: float, below: float | None) -> Callable[[pd.DataFrame], pd.Series]:
    def values(steps: pd.DataFrame) -> pd.Series:
        think = steps["think_before_ms"]
        inside = (think >= low) & (think < below if below is not None else True)
        return steps["ttft_ms"].where(inside)

    return values


def session_extractors(base: RunData, new: RunData) -> list[Extractor]:
    """Where both runs replayed a session trace: each session's critical path split (LLM time, the engine
    queueing inside it, the harness's scheduling gap), each request's cached prompt share, and TTFT per
    bucket of the think pause before the request (how well the KV cache survives pauses)."""
    if not (_session_replay(base) and _session_replay(new)):
        return []
    extractors: list[Extractor] = [
        ("session llm_ms (critical path)", "session_llm_ms", _workflow_metric(lambda w: w["llm_ms"]), False),
        ("session engine_queue_ms (critical path)", "session_engine_queue_ms",
         _workflow_metric(lambda w: w["engine_queue_ms"]), False),
        ("session scheduling_gap_ms", "session_scheduling_gap_ms",
         _workflow_metric(lambda w: w["workflow_ms"] - w["critical_path_ms"]), False),
        ("cached prompt share (per request)", "cached_share",
         _step_metric(lambda s: s["cached_prompt_tokens"].fillna(0) / s["prompt_tokens"]), True),
    ]  # fmt: skip
    for low, below in zip(THINK_BUCKETS_MS, (*THINK_BUCKETS_MS[1:], None), strict=True):
        label = f"{low / 1000:g}-{below / 1000:g} s" if below is not None else f"{low / 1000:g}+ s"
        samples = _step_metric(_ttft_after_think(low, below))
        if samples(base).values.size and samples(new).values.size:  # only pauses both runs had
            extractors.append((f"ttft_ms after {label} think", "ttft_ms_by_think", samples, False))
    return extractors


def parse_gate(
    gate: str | None, default: tuple[str, ...] = DEFAULT_GATE, known: Sequence[str] = ALL_METRICS
) -> tuple[str, ...]:
    """`--gate a,b` as metric names among `known` (`default` when not given); a UserError naming any other."""
    if gate is None:
        return default
    names = tuple(name.strip() for name in gate.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        named = ", ".join(unknown) or "(none)"
        raise UserError(f"--gate {gate}: unknown metric(s) {named}; choose from {', '.join(known)}")
    return names


def _without(settings: dict[str, Any], excluded: dict[str, Any]) -> dict[str, Any]:
    """`settings` less the parts `excluded` names (True: a whole section; a set: keys of a section)."""
    kept = {}
    for key, value in settings.items():
        rule = excluded.get(key)
        if rule is True:
            continue
        kept[key] = (
            {k: v for k, v in value.items() if k not in rule} if rule and isinstance(value, dict) else value
        )
    return kept


def _with_defaults(defaults: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A recorded config over today's defaults: a field added since a run was made reads as its default,
    not as a difference."""
    merged = dict(defaults)
    for key, value in settings.items():
        old = merged.get(key)
        merged[key] = (
            _with_defaults(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return merged


def _shaping(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape a run, as the fingerprint sees them (a setting left out of it while unused,
    such as the routing of a single endpoint, is no difference); settings this flowperf cannot validate
    are compared as recorded."""
    try:
        return RunConfig.model_validate(settings).shaping_config()
    except ValidationError:
        return _without(settings, NOT_FINGERPRINTED)


def setting_differences(base: RunData, new: RunData) -> list[str]:
    """`field (base -> new)` for every setting in config.json that shapes what a run measures (those
    the fingerprint covers) and differs between the runs."""
    defaults = RunConfig().model_dump(mode="json")
    documents = [_shaping(_with_defaults(defaults, run.config.get("config", {}))) for run in (base, new)]
    return [
        change
        for change in differences(*documents)
        if not change.startswith(tuple(f"{name} " for name in NOT_COMPARED_SETTINGS))
    ]


def comparability_problems(base: RunData, new: RunData) -> list[str]:
    """Why two runs do not measure the same experiment (flows, model or settings differ), if they do not."""
    problems = []
    base_flow, new_flow = base.config.get("flow", {}), new.config.get("flow", {})
    for key, what in (("name", "flow"), ("template_sha256", "flow template"), ("fixture_sha256", "fixtures")):
        if base_flow.get(key) != new_flow.get(key):
            problems.append(f"different {what} ({base_flow.get(key)} vs {new_flow.get(key)})")
    base_model, new_model = base.config.get("model", {}), new.config.get("model", {})
    if (base_model.get("name") or base_model.get("path")) != (new_model.get("name") or new_model.get("path")):
        problems.append(f"different model ({base_model.get('name')} vs {new_model.get('name')})")
    settings = setting_differences(base, new)
    if settings:
        problems.append(f"different settings: {', '.join(settings)}")
    return problems


def compare_runs(
    base: RunData, new: RunData, *, alpha: float, threshold_pct: float, gate: tuple[str, ...], seed: int
) -> list[Comparison]:
    extractors = metric_extractors(base, new)
    tests = sum(family in gate for _, family, _, _ in extractors)
    resamples = resamples_for(alpha, tests)
    results = [
        judge(name, samples(base), samples(new), higher_is_better=higher, alpha=alpha,
              threshold_pct=threshold_pct, seed=seed, gated=family in gate, resamples=resamples)
        for name, family, samples, higher in extractors
    ]  # fmt: skip
    return holm_verdicts(results, alpha)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def comparison_rows(results: list[Comparison], alpha: float) -> tuple[list[str], list[list[str]]]:
    """The verdict table, as the terminal and the HTML page both show it."""
    header = ["metric", "n", "base p50", "new p50", "delta", f"{1 - alpha:.0%} CI of diff", "p", "p Holm",
              "verdict", "gated", "note"]  # fmt: skip
    rows = [
        [
            r.metric,
            f"{r.n_base}/{r.n_new}",
            fmt(r.base, 2),
            fmt(r.new, 2),
            "-" if r.delta_pct is None else f"{r.delta_pct:+.1f}%",
            "-" if r.ci_low is None else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
            _p(r.p_value),
            _p(r.p_holm),
            r.verdict,
            "yes" if r.gated else "",
            r.note,
        ]
        for r in results
    ]
    return header, rows


def comparison_title(base: str, new: str, results: list[Comparison], alpha: float, threshold: float) -> str:
    family = sum(result.p_holm is not None for result in results)
    return (
        f"{base} -> {new} (alpha {alpha:g}, Holm over {family} gated metric(s); threshold {threshold:g}%; "
        "n = workflows, resampled whole)"
    )


LEFT_COLUMNS = ("metric", "verdict", "note")
VERDICT_STYLES = {"regression": "bold red", "improvement": "bold green"}


def print_comparison(console: Console, title: str, header: list[str], rows: list[list[str]]) -> None:
    """The verdict table (outputs/tables.py: a Rich table on a terminal it fits, else plain columns as wide
    as their widest cell, so no cell is cut to some assumed terminal width)."""
    print_table(console, TableSpec(title, header, rows, left=LEFT_COLUMNS, styles=VERDICT_STYLES))


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
    title = comparison_title("base", "new", results, alpha, threshold)
    sections = [
        {"title": "Runs", "rows": [("base", str(base.run_dir)), ("new", str(new.run_dir))]},
        {"title": f"Verdicts ({title.removeprefix('base -> new (').removesuffix(')')})", "header": header,
         "rows": rows},
    ]  # fmt: skip
    engine_header, engine_rows = engine_state_rows(summary_engine_state(base), summary_engine_state(new))
    if engine_rows:
        sections.append({"title": "Engine state, per server (report only, never gated)",
                         "header": engine_header, "rows": engine_rows})  # fmt: skip
    return render_page(f"flowperf compare: {base.run_dir.name} -> {new.run_dir.name}", sections, figures)


def sample_warnings(comparisons: list[Comparison]) -> list[str]:
    return [
        f"{c.metric}: {c.note} (n = {c.n_base} vs {c.n_new})"
        for c in comparisons
        if c.note.startswith(("too few", "fewer"))
    ]


@dataclass(frozen=True)
class LevelComparison:
    """Two sweeps' levels at the same offered load, compared as two runs (`compare_runs`)."""

    offered: str
    base: LevelRow
    new: LevelRow
    results: list[Comparison]

    @property
    def regressed(self) -> list[str]:
        return [result.metric for result in self.results if result.regressed]


@dataclass(frozen=True)
class SweepComparison:
    levels: list[LevelComparison]
    unmatched: list[str]  # levels of either sweep with no level at the same load in the other
    problems: list[str]

    @property
    def regressed(self) -> list[str]:
        return [f"{level.offered}: {metric}" for level in self.levels for metric in level.regressed]


def _level_key(row: LevelRow) -> tuple[str, float]:
    return row.mode, row.load


def matching_levels(
    base: list[LevelRow], new: list[LevelRow]
) -> tuple[list[tuple[LevelRow, LevelRow]], list[str]]:
    """Level pairs at the same offered load (mode and rate, or concurrency), in the base sweep's order;
    the levels of either sweep that have no partner. A load run twice in one sweep pairs its first."""
    partners: dict[tuple[str, float], LevelRow] = {}
    for row in new:
        partners.setdefault(_level_key(row), row)
    pairs = [(row, partners[_level_key(row)]) for row in base if _level_key(row) in partners]
    paired = {_level_key(row) for row, _ in pairs}
    unmatched = [f"{label} {row.name} ({row.offered})" for label, rows in (("base", base), ("new", new))
                 for row in rows if _level_key(row) not in paired]  # fmt: skip
    return list(dict((_level_key(pair[0]), pair) for pair in pairs).values()), unmatched


def compare_sweeps(
    base_dir: Path, new_dir: Path, *, alpha: float, threshold_pct: float, gate: tuple[str, ...], seed: int
) -> SweepComparison:
    """Every pair of levels at the same load compared like two runs; the gated metrics' p-values are
    Holm-corrected over all levels together, so more levels do not mean more false regressions."""
    for flag, path in (("BASE_RUN", base_dir), ("NEW_RUN", new_dir)):
        if not is_sweep_dir(path):
            raise UserError(
                f"{flag} {path}: not a sweep directory (no sweep.json): compare two sweeps or two runs"
            )
        read_sweep(path, flag)
    pairs, unmatched = matching_levels(read_rows(base_dir), read_rows(new_dir))
    if not pairs:
        raise UserError(f"NEW_RUN {new_dir}: no level runs the same load as a level of {base_dir}")
    runs = [(base, new, load_run(base_dir / base.name), load_run(new_dir / new.name)) for base, new in pairs]
    problems = [
        f"{base.offered}: {problem}" for base, _, a, b in runs for problem in comparability_problems(a, b)
    ]
    results = [compare_runs(a, b, alpha=alpha, threshold_pct=threshold_pct, gate=gate, seed=seed)
               for _, _, a, b in runs]  # fmt: skip
    corrected = holm_verdicts([result for level in results for result in level], alpha)
    levels, at = [], 0
    for (base, new, _, _), level in zip(runs, results, strict=True):
        levels.append(LevelComparison(base.offered, base, new, corrected[at : at + len(level)]))
        at += len(level)
    return SweepComparison(levels, unmatched, problems)


def sweep_curve_rows(comparison: SweepComparison) -> tuple[list[str], list[list[str]]]:
    """Per matched level: the curve's figures in both sweeps, and the gated metrics that regressed."""
    header = ["offered", "achieved/s", "p50 ms", "p95 ms", "attainment", "goodput/s", "regressed"]

    def pair(base: float | None, new: float | None, digits: int = 1) -> str:
        return f"{fmt(base, digits)} -> {fmt(new, digits)}"

    rows = [
        [level.offered, pair(level.base.achieved_per_s, level.new.achieved_per_s, 3),
         pair(level.base.latency_p50_ms, level.new.latency_p50_ms),
         pair(level.base.latency_p95_ms, level.new.latency_p95_ms),
         pair(level.base.attainment, level.new.attainment, 3),
         pair(level.base.goodput_per_s, level.new.goodput_per_s, 3), ", ".join(level.regressed) or "-"]
        for level in comparison.levels
    ]  # fmt: skip
    return header, rows


def print_sweep_comparison(
    console: Console,
    base_dir: Path,
    new_dir: Path,
    comparison: SweepComparison,
    alpha: float,
    threshold: float,
) -> None:
    """Each matched level's verdict table, then the two curves side by side."""
    for level in comparison.levels:
        header, rows = comparison_rows(level.results, alpha)
        base, new = f"{base_dir}/{level.base.name}", f"{new_dir}/{level.new.name}"
        title = comparison_title(base, new, level.results, alpha, threshold)
        print_comparison(console, f"[{level.offered}] {title}", header, rows)
    header, rows = sweep_curve_rows(comparison)
    print_comparison(
        console, f"sweep {base_dir} -> {new_dir}: level by level (Holm over all levels)", header, rows
    )


def sweep_compare_html(comparison: SweepComparison, alpha: float) -> str:
    header, rows = sweep_curve_rows(comparison)
    sections: list[dict[str, Any]] = [{"title": "Levels", "header": header, "rows": rows}]
    for level in comparison.levels:
        level_header, level_rows = comparison_rows(level.results, alpha)
        sections.append({"title": f"{level.offered}: {level.base.name} -> {level.new.name}",
                         "header": level_header, "rows": level_rows})  # fmt: skip
    return render_page("flowperf compare: sweep against sweep", sections, [])


ENGINE_FIGURES: tuple[tuple[str, Callable[[dict[str, Any]], float | None], int], ...] = (
    ("waiting mean", lambda state: state.get("waiting_mean"), 2),
    ("waiting max", lambda state: state.get("waiting_max"), 0),
    ("KV usage max %", lambda state: _times_100(state.get("kv_usage_max")), 1),
    ("preemptions", lambda state: state.get("preemptions"), 0),
    ("prefix-cache hit %", lambda state: _times_100(state.get("prefix_cache_hit_ratio")), 1),
    ("server TTFT p50 ms", lambda state: (state.get("ttft_ms") or {}).get("p50"), 1),
)
"""The engine's side of a comparison (summary.engine_state, per server): report only, never gated, since
these are the engine's own counts and estimates of why the client's figures moved, not its results."""


def _times_100(value: float | None) -> float | None:
    return None if value is None else value * 100.0


def _server_key(state: dict[str, Any]) -> str:
    """Servers are paired by the engine's endpoint index (a URL's port changes from run to run); an extra
    endpoint (a router: no index) by its URL."""
    endpoint = state.get("endpoint")
    return f"endpoint {endpoint}" if endpoint is not None else str(state.get("server"))


def engine_state_rows(
    base: list[dict[str, Any]], new: list[dict[str, Any]], labels: tuple[str, str] = ("base", "new")
) -> tuple[list[str], list[list[str]]]:
    """Per server both runs (or arms) scraped, or either did: each engine figure in both and the change
    (new minus base). No rows when neither run has engine records."""
    header = ["server", "engine figure", labels[0], labels[1], "change"]
    by_key = {_server_key(state): [state, None] for state in base}
    for state in new:
        by_key.setdefault(_server_key(state), [None, None])[1] = state
    rows = []
    for key, (before, after) in by_key.items():
        for name, read, digits in ENGINE_FIGURES:
            a = None if before is None else read(before)
            b = None if after is None else read(after)
            change = None if a is None or b is None else float(b) - float(a)
            shown = "-" if change is None else f"{change:+,.{digits}f}"
            rows.append([key, name, fmt(_float(a), digits), fmt(_float(b), digits), shown])
    return header, rows


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def print_engine_state(
    console: Console,
    title: str,
    base: list[dict[str, Any]],
    new: list[dict[str, Any]],
    labels: tuple[str, str] = ("base", "new"),
) -> None:
    """The engine-side table under a verdict table (nothing when neither side scraped an engine)."""
    header, rows = engine_state_rows(base, new, labels)
    if rows:
        print_table(console, TableSpec(title, header, rows, left=("server", "engine figure")))


def summary_engine_state(run: RunData) -> list[dict[str, Any]]:
    """A run's summary.engine_state (empty for a run without one, e.g. from before it existed)."""
    return list((run.summary or {}).get("engine_state") or [])
