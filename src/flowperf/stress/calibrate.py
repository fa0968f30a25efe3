"""Fit the engine model's iteration time (a, b, c, d, e) by least squares from the iterations a run measured.

The model prices one engine iteration: `a + b * prefill tokens + f * prefill attention pairs` if it
prefills anything, else `c`, plus `d * decodes + e * their context tokens`. The attention pairs of a
prompt chunk of k tokens after `before` tokens in the KV cache are k * (before + (k + 1) / 2); they are
known only from iterations.jsonl (see `attention_pairs`), so a fit from the requests alone leaves f at 0.

A run on the in-process engine records every engine step in `iterations.jsonl`
(`flowperf.engines.iteration_log`), and the fit regresses those directly:

- composition, from the engine core's scheduler output for the step: prompt tokens scheduled (a chunk of
  a chunked prefill in its own step; prefix-cache hits are not computed, so not counted) and decode
  requests; the decodes' context tokens are a running sum kept by the log from the step outputs (what
  each decode finds in the KV cache: its prompt and the tokens it made before, as in the simulator);
- duration, the time from the previous step's end to this one's when the engine went straight on from
  one to the next (consecutive step numbers, something still running or waiting after the first, so no
  idle time is inside): on the engine core's monotonic clock where the step has decodes (their
  inter-token latency, vLLM's own; the previous step emitted tokens), else on the harness's perf_counter
  clock (when the front end received each step's outputs). A step after an idle engine has no recorded
  start: it is its model execution time (`elapsed_ms`, engine clock) plus the median time the engine
  spends outside model execution in the steps timed by their gaps.

A run without that file (one over HTTP, or made before it existed) records requests, not iterations, so
the fit rebuilds iterations from the requests' own timestamps:

- each request's prefill is one iteration whose length the engine measured on its own clock
  (`engine_ttft_ms - engine_queue_ms`: first scheduled to first token, no queueing, no transport);
- each gap between two of a request's tokens (`itl_ms`, harness clock) is one decode iteration.

What else ran in that iteration is read off every request's token timeline: vLLM emits one token per
scheduled request per iteration, so the tokens that reached the harness close to this iteration's end
came out of it. "Close" is up to half the iteration before its end (the previous iteration's tokens came
a whole iteration earlier) and up to three quarters of the shortest usual iteration (the 5th percentile
of the token gaps) after it, since the next iteration may be a short one. A first token is a prefill (its
uncached prompt tokens); any other is a decode (its context tokens). The run's own
`max_num_batched_tokens` says when a prefill was split into chunks across iterations, and another
request's token arriving well inside a measured interval says that an iteration ended within it (a
prefill chunked behind others' tokens, a request left out of an iteration): such intervals are more than
one iteration and are left out.

`harness_overhead_s` is what the harness adds to the engine's TTFT (the request's way into the engine and
its first token's way back), taken from requests that found the engine idle; validation adds it to the
simulated latencies so they compare with what the harness measured.

A run without engine timings (an OpenAI server that reports none) falls back to the harness TTFT of
requests that found the engine idle for the prefill iterations, which then include the transport, and
the fit says so. Reconstruction sees a decode's cost only through token gaps, mostly of requests alone
in the engine, and under-prices what a decode adds to a busy batch (d fitted to 0 on a run whose logged
iterations give 0.25 ms); the logged iterations are used whenever the run has them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from flowperf.errors import UserError
from flowperf.rundir.durable import read_complete_lines
from flowperf.rundir.records import StepRecord
from flowperf.rundir.store import ITERATIONS, STEPS
from flowperf.stats import percentile
from flowperf.stress.noise import NoiseModel, fit_noise
from flowperf.stress.replayed import Overheads, run_batched_tokens, run_unexplained_ttft_s
from flowperf.stress.service import ServiceModel

FIT_FIELDS = ("prompt_tokens", "cached_prompt_tokens", "ttft_ms", "itl_ms")
PREFILL_FROM_ENGINE = "engine: engine_ttft_ms - engine_queue_ms (first scheduled to first token)"
PREFILL_FROM_HARNESS = "harness: ttft_ms of requests that found the engine idle (no engine timings in run)"
DECODE_SOURCE = "itl_ms: each gap between a request's tokens, harness clock"
LOGGED_SOURCE = (
    f"{ITERATIONS}: the engine's steps, timed from the step before (engine clock where it has decodes, else "
    "the harness's perf_counter); after an idle engine, model execution plus the median time outside it"
)
COEFFICIENTS = ("a", "b", "c", "d", "e", "f")


@dataclass(frozen=True)
class Iterations:
    """Measured iterations: duration (s) and what ran in them, as far as the token timelines tell."""

    seconds: np.ndarray
    prefill_tokens: np.ndarray
    decodes: np.ndarray
    context_tokens: np.ndarray
    tokens: np.ndarray  # tokens seen coming out of it: the iteration was measured about this many times
    from_prefill: np.ndarray  # measured as a request's prefill (else as a gap between two tokens)
    attention_pairs: np.ndarray | None = None  # prefill (query, key) pairs; None: not known (f unidentified)

    def design(self) -> np.ndarray:
        """Columns for a, b, c, d, e, f: the model is linear in them given the composition."""
        prefills = (self.prefill_tokens > 0).astype(float)
        pairs = np.zeros(prefills.size) if self.attention_pairs is None else self.attention_pairs
        return np.column_stack(
            [prefills, self.prefill_tokens, 1.0 - prefills, self.decodes, self.context_tokens, pairs]
        ).astype(float)


@dataclass(frozen=True)
class IterationFit:
    """The fitted coefficients (seconds per unit) and how well they explain the measured iterations.

    `residual_p50/p90/p99` are percentiles of |measured - fitted|, in seconds: RMSE alone hides whether a
    few outliers or a wrong shape make the error. `unidentified` names coefficients the run cannot tell
    apart: a column that is never non-zero (no decodes, no prefill-free iteration), set to 0, or one that
    is a combination of the others (every decode-only iteration with one decode: c and d), whose split
    is the least-squares one and means nothing alone.
    """

    coefficients: dict[str, float]
    rmse: float
    r2: float | None
    prefill_points: int
    decode_points: int
    dropped: int  # intervals left out as more than one iteration
    residual_p50: float
    residual_p90: float
    residual_p99: float
    unidentified: tuple[str, ...]
    multipliers: np.ndarray | None = None  # measured / fitted per iteration, in measured order


@dataclass(frozen=True)
class Calibration:
    service: ServiceModel
    fit: IterationFit
    harness_overhead_s: float
    steps_used: int
    steps_skipped: int
    prefill_source: str
    decode_source: str
    noise: NoiseModel | None = None  # the multipliers' AR(1), for perturbed replicas
    e2e_overhead_s: float | None = (
        None  # step_ms - engine_last_token_ms, as harness_overhead_s; None: unrecorded
    )
    overhead_per_request_s: float = 0.0  # what each other request in flight adds (CrowdOverhead)
    overhead_max_others: int | None = None  # the most others in flight that was measured at

    def as_dict(self) -> dict[str, Any]:
        sources = {"prefill_source": self.prefill_source, "decode_source": self.decode_source}
        fit = {key: value for key, value in asdict(self.fit).items() if key != "multipliers"}
        return {
            "service": self.service.model_dump(),
            "harness_overhead_s": self.harness_overhead_s,
            "fit": fit | sources,
            "steps_used": self.steps_used,
            "steps_skipped": self.steps_skipped,
            "noise": None if self.noise is None else self.noise.as_dict(),
            "e2e_overhead_s": self.e2e_overhead_s,
            "overhead_per_request_s": self.overhead_per_request_s,
            "overhead_max_others": self.overhead_max_others,
        }


def nonnegative_least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min |x c - y| subject to c >= 0 (a negative cost is noise, not physics).

    At the optimum the positive coefficients are the unconstrained least-squares solution on their own
    columns, so trying every subset of at most five columns (32 small solves) finds it exactly, with no
    solver dependency.
    """
    best, best_error = np.zeros(x.shape[1]), float(y @ y)
    for mask in itertools.product((False, True), repeat=x.shape[1]):
        columns = np.flatnonzero(mask)
        if columns.size == 0:
            continue
        solution = np.zeros(x.shape[1])
        solution[columns] = np.linalg.lstsq(x[:, columns], y, rcond=None)[0]
        error = float(((x @ solution - y) ** 2).sum())
        if solution.min() >= 0 and error < best_error * (1 - 1e-12):
            best, best_error = solution, error
    return best


def fit_iterations(iterations: Iterations, dropped: int = 0) -> IterationFit:
    """The coefficients that best price the measured iterations, with the fit's error.

    Rows are weighted so that every iteration counts once: one that made n tokens is seen about n times
    (once per token). Plain least squares on those rows keeps the fitted iterations' total equal to the
    measured total (its residuals sum to zero when a and c are free), and a request's latency is a sum of
    the iterations it lives through, so that total is what the simulator must get right. (Weighting by
    relative error instead was tried: it fits the short decode iterations better but under-prices the
    long mixed ones, and the simulator then under-predicts the very run it was fitted on by 15-20%.)
    """
    x, y = iterations.design(), iterations.seconds
    varied = x.any(axis=0)
    once = 1.0 / np.sqrt(np.maximum(iterations.tokens, 1.0))
    solution = np.zeros(x.shape[1])
    solution[varied] = nonnegative_least_squares(x[:, varied] * once[:, None], y * once)
    residual = y - x @ solution
    spread = float(((y - y.mean()) ** 2).sum())
    p50, p90, p99 = (float(v) for v in percentile(np.abs(residual), [50, 90, 99]))
    fitted = x @ solution
    return IterationFit(
        coefficients=dict(zip(COEFFICIENTS, (float(v) for v in solution), strict=True)),
        rmse=float(np.sqrt(np.mean(residual**2))),
        r2=1.0 - float((residual**2).sum()) / spread if spread > 0 else None,
        prefill_points=int(iterations.from_prefill.sum()),
        decode_points=int((~iterations.from_prefill).sum()),
        dropped=dropped,
        residual_p50=p50,
        residual_p90=p90,
        residual_p99=p99,
        unidentified=tuple(
            name for name, known in zip(COEFFICIENTS, _separable(x), strict=True) if not known
        ),
        multipliers=np.where(fitted > 0, y / np.where(fitted > 0, fitted, 1.0), np.nan),
    )


def _separable(x: np.ndarray) -> np.ndarray:
    """Whether each column adds a dimension the others do not span (so its coefficient is its own)."""
    scaled = x / np.maximum(np.abs(x).max(axis=0), 1e-300)
    rank = np.linalg.matrix_rank(scaled)
    return np.array(
        [
            scaled[:, j].any() and np.linalg.matrix_rank(np.delete(scaled, j, axis=1)) < rank
            for j in range(x.shape[1])
        ]
    )


def read_steps(run_dir: Path) -> tuple[list[StepRecord], list[StepRecord]]:
    """The successful LLM steps of a run's steps.jsonl, each with every field the fit uses, and the other
    LLM steps; tool and think steps are skipped; a torn last line from a crash is left out, any other bad
    line is an error."""
    run_dir = Path(run_dir)
    path = run_dir / STEPS
    if not run_dir.is_dir():
        raise UserError(f"--calibrate: {run_dir} is not a directory")
    if not path.is_file():
        raise UserError(f"--calibrate: {path} not found; expected a `bench run` output directory")
    successful, others = [], []
    for number, line in enumerate(read_complete_lines(path), start=1):
        try:
            record = StepRecord.model_validate_json(line)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(map(str, first["loc"]))
            raise UserError(f"{path}: line {number}: {field + ': ' if field else ''}{first['msg']}") from None
        if record.kind != "llm":
            continue  # a tool call or a session's think pause: no engine work to fit
        if record.status != "ok":
            others.append(record)
            continue
        missing = [name for name in FIT_FIELDS if getattr(record, name) is None]
        if missing:
            raise UserError(f"{path}: line {number}: {missing[0]}: missing in a successful step")
        successful.append(record)
    return successful, others


@dataclass(frozen=True)
class _Timeline:
    """Every token of one session's requests, by arrival at the harness (ms), with running sums of what
    each token says about the iteration that made it."""

    times: np.ndarray
    prefills: np.ndarray  # cumulative count of first tokens
    decodes: np.ndarray  # cumulative count of tokens that were decodes
    context: np.ndarray  # cumulative context tokens of those decodes
    prefill: np.ndarray  # cumulative prompt tokens computed by the prefills the first tokens end

    @classmethod
    def of(cls, steps: list[StepRecord]) -> _Timeline:
        times, decode, context, prefill = [], [], [], []
        for step in steps:
            first = step.start_offset_ms + (step.ttft_ms or 0.0)
            gaps = np.asarray(step.itl_ms or [], dtype=float)
            times.append(np.concatenate([[first], first + np.cumsum(gaps)]))
            decode.append(np.concatenate([[0.0], np.ones(gaps.size)]))
            # the k-th token (k >= 1) is computed over the prompt and the k - 1 tokens before it
            context.append(np.concatenate([[0.0], (step.prompt_tokens or 0) + np.arange(gaps.size)]))
            prefill.append(np.concatenate([[float(_computed(step))], np.zeros(gaps.size)]))
        order = np.argsort(np.concatenate(times), kind="stable")

        def running(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(np.concatenate(parts)[order])])

        firsts = [1.0 - part for part in decode]
        return cls(
            np.concatenate(times)[order], running(firsts), running(decode), running(context), running(prefill)
        )

    def around(self, end_ms: np.ndarray, before_ms: np.ndarray, after_ms: float) -> tuple[np.ndarray, ...]:
        """(prefill tokens, decodes, context tokens, tokens) of the tokens that arrived from `before_ms`
        before each iteration's end to `after_ms` after it."""
        lo = np.searchsorted(self.times, end_ms - before_ms, side="right")
        hi = np.searchsorted(self.times, end_ms + np.minimum(before_ms, after_ms), side="right")
        return (
            self.prefill[hi] - self.prefill[lo],
            self.decodes[hi] - self.decodes[lo],
            self.context[hi] - self.context[lo],
            self.prefills[hi] - self.prefills[lo] + self.decodes[hi] - self.decodes[lo],
        )

    def inside(self, end_ms: np.ndarray, length_ms: np.ndarray, margin_ms: float) -> np.ndarray:
        """How many tokens arrived inside each interval, more than `margin_ms` from either end."""
        lo = np.searchsorted(self.times, end_ms - length_ms + margin_ms, side="right")
        hi = np.searchsorted(self.times, end_ms - margin_ms, side="left")
        return np.maximum(hi - lo, 0)


def _computed(step: StepRecord) -> int:
    return max((step.prompt_tokens or 0) - (step.cached_prompt_tokens or 0), 0)


def _measured(steps: list[StepRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(iteration end on the harness clock, its length, measured as a prefill?) for every prefill and
    token gap, all ms; prefills from the engine's clock when every step has it (never mixing sources)."""
    ends, lengths, is_prefill = [], [], []
    from_engine = all(step.engine_ttft_ms is not None and step.engine_queue_ms is not None for step in steps)
    for step in steps:
        first = step.start_offset_ms + (step.ttft_ms or 0.0)
        if from_engine:
            ends.append(first)
            lengths.append(max((step.engine_ttft_ms or 0.0) - (step.engine_queue_ms or 0.0), 0.0))
            is_prefill.append(True)
        elif step.inflight_at_start == 1:
            ends.append(first)
            lengths.append(step.ttft_ms or 0.0)
            is_prefill.append(True)
        gaps = np.asarray(step.itl_ms or [], dtype=float)
        ends.extend(first + np.cumsum(gaps))
        lengths.extend(gaps)
        is_prefill.extend([False] * gaps.size)
    source = PREFILL_FROM_ENGINE if from_engine else PREFILL_FROM_HARNESS
    return np.array(ends), np.array(lengths), np.array(is_prefill, dtype=bool), source


def observe_iterations(ok: list[StepRecord], budget: int | None) -> tuple[Iterations, int, str]:
    """The run's measured iterations with their composition, session by session (offsets are on one
    clock only within a session); returns them, how many intervals were left out as more than one
    iteration, and the prefill source."""
    parts: list[tuple[np.ndarray, ...]] = []
    source = PREFILL_FROM_ENGINE
    for session in sorted({step.session for step in ok}):
        *columns, source = _session_iterations([step for step in ok if step.session == session], budget)
        parts.append(tuple(columns))
    seconds, prefill, decodes, context, tokens, is_prefill, keep = (
        np.concatenate(part) for part in zip(*parts, strict=True)
    )
    measured = np.isfinite(seconds) & (seconds > 0)
    keep &= measured
    iterations = Iterations(
        seconds[keep], prefill[keep], decodes[keep], context[keep], tokens[keep], is_prefill[keep]
    )
    return iterations, int((measured & ~keep).sum()), source


def _session_iterations(steps: list[StepRecord], budget: int | None) -> tuple[Any, ...]:
    """One session's measured intervals: (seconds, prefill tokens, decodes, context tokens, tokens, is a
    prefill, is one iteration, prefill source). An interval is more than one iteration when a token
    arrived well inside it, or when it would prefill more than the budget; and every interval during a
    prefill that took several iterations is too uncertain to keep, since that prefill's earlier chunks
    ran in iterations that no token of its own shows."""
    ends, lengths, is_prefill, source = _measured(steps)
    gaps = lengths[~is_prefill & (lengths > 0)]
    margin = 0.75 * float(percentile(gaps if gaps.size else lengths, 5))
    timeline = _Timeline.of(steps)
    prefill, decodes, context, tokens = timeline.around(ends, lengths / 2, margin)
    several = timeline.inside(ends, lengths, margin) > 0
    if budget is not None:
        several |= prefill > budget
    chunked = is_prefill & several
    during = _overlapping(
        ends - lengths - margin, ends + margin, ends[chunked] - lengths[chunked], ends[chunked]
    )
    return lengths / 1000.0, prefill, decodes, context, tokens, is_prefill, ~several & ~during, source


def _overlapping(starts: np.ndarray, ends: np.ndarray, others_start: np.ndarray, others_end: np.ndarray):
    """Whether each interval (starts, ends) overlaps any of the others, in O(n log n): the others are
    merged into disjoint intervals, and an interval overlaps one iff the last merged interval that starts
    before it ends ends after it starts."""
    if others_start.size == 0:
        return np.zeros(starts.size, dtype=bool)
    order = np.argsort(others_start)
    lo, hi = others_start[order], np.maximum.accumulate(others_end[order])
    new = np.concatenate([[True], lo[1:] > hi[:-1]])
    merged_lo, merged_hi = lo[new], hi[np.concatenate([np.flatnonzero(new)[1:] - 1, [lo.size - 1]])]
    index = np.searchsorted(merged_lo, ends, side="left") - 1
    return (index >= 0) & (merged_hi[np.maximum(index, 0)] > starts)


def read_iterations(run_dir: Path) -> list[dict[str, Any]]:
    """The engine steps in a run's iterations.jsonl (none if it has no such file). A line that does not
    parse is skipped: the file is not cut back after a crash, so a resumed run may append to a torn line."""
    records = []
    for line in read_complete_lines(Path(run_dir) / ITERATIONS):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "index" in record:
            records.append(record)
    return records


def logged_iterations(records: list[dict[str, Any]]) -> tuple[Iterations, int] | None:
    """The logged steps as measured iterations, and how many had no usable time; None when fewer than
    one per coefficient are left, so the caller reconstructs iterations from the steps instead.

    A step's time runs from the previous step's end when the engine went straight on to it (the step
    numbers follow each other and something was still running or waiting): the engine-clock gap where it
    has decodes, else the harness-clock gap. Any other step (the first, one after an idle engine, one
    after steps the log missed) has no recorded start, and is its model execution (`elapsed_ms`, engine
    clock) plus what the engine spends outside execution per step (scheduling, outputs), the median over
    the timed steps. Those are the prefills of requests that found the engine idle, the bulk of a light
    load: on this engine a prefill never runs alone while others are running."""

    def column(name: str) -> np.ndarray:
        return np.array([float(record.get(name) or 0.0) for record in records])

    if not records:
        return None
    index, prefill = column("index"), column("prefill_tokens")
    went_on = (np.diff(index) == 1) & (column("running") + column("waiting") > 0)[:-1]
    on_engine = column("engine_gap_ms") / 1000.0
    emitted_before = np.concatenate([[False], column("generated")[:-1] > 0])
    gap = np.where(
        (on_engine > 0) & emitted_before, on_engine, np.concatenate([[np.nan], np.diff(column("t"))])
    )
    timed = np.concatenate([[False], went_on]) & np.isfinite(gap) & (gap > 0)
    executing = column("elapsed_ms") / 1000.0
    outside = percentile(gap[timed] - executing[timed], 50) if timed.any() else 0.0
    seconds = np.where(timed, gap, np.where(executing > 0, executing + outside, np.nan))
    keep = np.isfinite(seconds) & (seconds > 0)
    if keep.sum() < len(COEFFICIENTS):
        return None
    iterations = Iterations(
        seconds[keep],
        prefill[keep],
        column("decodes")[keep],
        column("context_tokens")[keep],
        np.ones(int(keep.sum())),  # each step is one line: measured once
        prefill[keep] > 0,
        attention_pairs(records)[keep],
    )
    return iterations, int((~keep).sum())


def attention_pairs(records: list[dict[str, Any]]) -> np.ndarray:
    """Each logged step's prefill attention, in (query, key) pairs, from the log's per-step sums: its
    prefill tokens k over p prefills, each taken as k / p tokens after its cached prefix (the prompts it
    finished: prompt tokens done minus computed, per prompt) and after the chunks of a prefill still
    unfinished in the steps before (a chunked prefill's earlier chunks are its context). Exact for one
    prefill per step; an estimate when several share a step (the log keeps their sums only)."""
    pairs = np.zeros(len(records))
    carry = 0.0
    for i, record in enumerate(records):
        k, p = float(record.get("prefill_tokens") or 0), int(record.get("prefills") or 0)
        done = int(record.get("prompts_done") or 0)
        cached = max(
            float(record.get("prompt_tokens_done") or 0) - float(record.get("prompt_tokens_computed") or 0),
            0.0,
        )
        if k <= 0 or p <= 0:
            continue
        share = k / p
        pairs[i] = k * (carry / p + cached / max(done, 1) + (share + 1.0) / 2.0)
        carry = carry + share if done < p else 0.0
    return pairs


def harness_overhead_s(ok: list[StepRecord]) -> float:
    """The harness TTFT minus the engine's, median over requests that found nothing else in flight (so
    none waited for the engine to finish an iteration before it even saw them); 0 without engine timings."""
    timed = [step for step in ok if step.engine_ttft_ms is not None and step.ttft_ms is not None]
    alone = [step for step in timed if step.inflight_at_start == 1] or timed
    if not alone:
        return 0.0
    added = [(step.ttft_ms or 0.0) - (step.engine_ttft_ms or 0.0) for step in alone]
    return max(percentile(np.asarray(added), 50), 0.0) / 1000.0


@dataclass(frozen=True)
class CrowdOverhead:
    """What each other request in flight adds to the harness's TTFT beyond the simulation, and the most
    others in flight it was measured at (validation holds it there)."""

    per_request_s: float = 0.0
    max_others: int | None = None


def crowd_overhead(
    run_dirs: Sequence[Path], service: ServiceModel, alone_s: float, e2e_s: float | None
) -> CrowdOverhead:
    """How much the harness's TTFT grows with each other request in flight beyond what the simulator
    already explains: the slope through 0 of the per-count medians of measured minus simulated TTFT
    (the runs replayed through the fitted model with the alone overheads), each count weighted by its
    steps.

    Measured against the simulation, not as ttft_ms - engine_ttft_ms: vLLM stamps a request's queued_ts
    when its engine core takes it in, between steps, so that difference also holds the wait for the step
    in progress, which the simulation has already; counted again it was most of the 0.6-0.7 ms per
    request the first version fitted (docs/stress.md). Runs the simulator cannot replay (not from the
    in-process engine) add nothing; none: 0 and no limit."""
    by_count: dict[int, list[float]] = {}
    for run_dir in run_dirs:
        found = run_unexplained_ttft_s(run_dir, service, Overheads(alone_s, e2e_s))
        if found is None:
            continue
        for unexplained, others in zip(*found, strict=True):
            if others > 0 and np.isfinite(unexplained):
                by_count.setdefault(int(others), []).append(float(unexplained))
    if not by_count:
        return CrowdOverhead()
    return CrowdOverhead(slope_of_medians(by_count), max(by_count))


def slope_of_medians(by_count: dict[int, list[float]]) -> float:
    """The least-squares slope through 0 of each count's median, weighted by its samples; at least 0 (a
    harness that got faster with company is noise)."""
    counts = np.array(list(by_count), float)
    weights = np.array([len(values) for values in by_count.values()], float)
    medians = np.array([percentile(np.asarray(values), 50) for values in by_count.values()])
    return max(float((weights * counts * medians).sum() / (weights * counts**2).sum()), 0.0)


def e2e_overhead_s(ok: list[StepRecord]) -> float | None:
    """What the harness adds to the engine's end to end (step_ms - engine_last_token_ms: the request's way
    in and its last token's way out), median over requests that found nothing else in flight; None when
    the run did not record the engine's last-token time."""
    timed = [step for step in ok if step.engine_last_token_ms is not None]
    alone = [step for step in timed if step.inflight_at_start == 1] or timed
    if not alone:
        return None
    added = [step.step_ms - (step.engine_last_token_ms or 0.0) for step in alone]
    return max(percentile(np.asarray(added), 50), 0.0) / 1000.0


@dataclass(frozen=True)
class _RunIterations:
    """One calibration run's successful and other steps and its measured iterations."""

    ok: list[StepRecord]
    others: list[StepRecord]
    iterations: Iterations
    dropped: int
    prefill_source: str
    decode_source: str


def _run_iterations(run_dir: Path) -> _RunIterations:
    ok, others = read_steps(run_dir)
    if len(ok) < 2:
        raise UserError(
            f"--calibrate: {Path(run_dir) / STEPS} has {len(ok)} successful steps; need 2 or more"
        )
    logged = logged_iterations(read_iterations(run_dir))
    if logged is not None:
        return _RunIterations(ok, others, *logged, LOGGED_SOURCE, LOGGED_SOURCE)
    if not any(step.itl_ms for step in ok):
        raise UserError(f"--calibrate: no successful step in {run_dir} has inter-token gaps (itl_ms)")
    iterations, dropped, prefill_source = observe_iterations(ok, run_batched_tokens(run_dir))
    return _RunIterations(ok, others, iterations, dropped, prefill_source, DECODE_SOURCE)


def _pooled(runs: list[_RunIterations]) -> Iterations:
    """The runs' iterations as one table, in run order (attention pairs only if every run has them)."""
    parts = [run.iterations for run in runs]
    pairs = [part.attention_pairs for part in parts]
    return Iterations(
        *(np.concatenate([getattr(part, name) for part in parts]) for name in ITERATION_COLUMNS),
        attention_pairs=None if any(p is None for p in pairs) else np.concatenate(pairs),
    )


ITERATION_COLUMNS = ("seconds", "prefill_tokens", "decodes", "context_tokens", "tokens", "from_prefill")


def calibrate(run_dirs: Path | Sequence[Path]) -> Calibration:
    """Fit the iteration-time model from one or several runs' successful steps (seconds in the model).

    Several runs are pooled into one fit; their multipliers keep which run each came from, so the noise
    model also measures how the machine's speed moved between them (`NoiseModel.between`). The runs must
    be measured the same way (all with the engine's iteration log, or all without)."""
    paths = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(path) for path in run_dirs]
    runs = [_run_iterations(path) for path in paths]
    sources = {(run.prefill_source, run.decode_source) for run in runs}
    if len(sources) > 1:
        raise UserError(
            f"--calibrate: {', '.join(map(str, paths))} were not measured the same way (some with the "
            "engine's iterations.jsonl, some without); calibrate from runs of one kind"
        )
    fit = fit_iterations(_pooled(runs), sum(run.dropped for run in runs))
    a, b, c, d, e, f = (fit.coefficients[name] for name in COEFFICIENTS)
    service = ServiceModel(
        prefill_base_s=a,
        prefill_per_token_s=b,
        decode_base_s=c,
        decode_per_request_s=d,
        decode_per_context_token_s=e,
        prefill_attention_s=f,
    )
    ok = [step for run in runs for step in run.ok]
    run_of = np.repeat(np.arange(len(runs)), [run.iterations.seconds.size for run in runs])
    alone_s, e2e_s = harness_overhead_s(ok), e2e_overhead_s(ok)
    crowd = crowd_overhead(paths, service, alone_s, e2e_s)
    return Calibration(
        service,
        fit,
        alone_s,
        len(ok),
        sum(len(run.others) for run in runs),
        prefill_source=runs[0].prefill_source,
        decode_source=runs[0].decode_source,
        noise=fit_noise(fit.multipliers, run_of) if fit.multipliers is not None else None,
        e2e_overhead_s=e2e_s,
        overhead_per_request_s=crowd.per_request_s,
        overhead_max_others=crowd.max_others,
    )
