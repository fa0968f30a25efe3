"""`bench stress`: the Typer command, its progress bar and its summary tables; every decision lives elsewhere.

The simulator's modules (numba, pandas) load inside the command, so `bench --help` and the other commands
do not pay for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flowperf.outputs.tables import TableSpec, print_table
from flowperf.stress.config import StressConfig, parse_flags

if TYPE_CHECKING:
    from flowperf.stress.calibrate import Calibration
    from flowperf.stress.replicas import ReplicaPlan
    from flowperf.stress.spec import TestResult, TestSpec
    from flowperf.stress.suite import OnResult, SuiteReport

console = Console()


# A flag's default is the config model's, so help text and behaviour cannot drift apart.
_DEFAULTS = StressConfig.model_construct()


WorkloadOption = Annotated[
    str, typer.Option(help="azure-code, azure-conv, mooncake, synthetic, burstgpt:PATH or a PATH.")
]
RateOption = Annotated[float, typer.Option(help="Poisson arrival rate, requests/s (stress mode).")]
UseRealTimestampsOption = Annotated[
    bool,
    typer.Option(
        "--use-real-timestamps", help="Keep the trace's own arrival times instead of Poisson arrivals."
    ),
]
RpsScalingOption = Annotated[
    float, typer.Option(help="Speed-up of real timestamps (2 = twice the trace's rate).")
]
PredictorErrorOption = Annotated[
    float, typer.Option(help="Sigma of lognormal noise on predicted output lengths (0 = exact).")
]
BatchSizeOption = Annotated[
    int,
    typer.Option(help="Requests per static batch; slots per GPU for continuous; max_num_seqs for vllm."),
]
GpusOption = Annotated[int, typer.Option(help="GPU count of step 1 and of a --num-requests run.")]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        help="bins-K, continuous or vllm: the scheduler of a --num-requests run (default continuous); "
        "forces step 2's scheduler."
    ),
]
NumRequestsOption = Annotated[
    int | None, typer.Option(help="Run one test of this many requests, not the suite.")
]
DSlaOption = Annotated[float, typer.Option(help="SLA on time to first token, seconds.")]
SlaTargetOption = Annotated[
    float, typer.Option(help="SLA attainment that step 2 asks of the best GPU count.")
]
Step1OnlyOption = Annotated[bool, typer.Option("--step1-only", help="Run step 1 (request scaling) only.")]
Step2OnlyOption = Annotated[bool, typer.Option("--step2-only", help="Run step 2 (GPU scaling) only.")]
Step3OnlyOption = Annotated[bool, typer.Option("--step3-only", help="Run step 3 (K sensitivity) only.")]
MaxRequestsOption = Annotated[int, typer.Option(help="Cap on requests per test.")]
MaxGpusOption = Annotated[int, typer.Option(help="Cap on GPUs per test.")]
BestGpuCountOption = Annotated[
    int | None, typer.Option(help="GPU count of step 3 instead of step 2's answer.")
]
SeedOption = Annotated[int, typer.Option(help="Seed of every random stream.")]
OutOption = Annotated[Path, typer.Option(help="Output directory.")]
WorkersOption = Annotated[int | None, typer.Option(help="Worker processes (default: the cores available).")]
ExecutorOption = Annotated[str, typer.Option(help="local (worker processes) or ray.")]
RayAddressOption = Annotated[
    str | None, typer.Option(help="Ray cluster for --executor ray (default: start one).")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Skip tests already in the incremental results.")
]
CalibrateOption = Annotated[
    list[Path] | None,
    typer.Option(
        metavar="RUN_DIR",
        help="Fit the iteration-time model from this run directory (`bench run`/`replay`) first; repeat "
        "to pool several runs, whose bands then include how the machine's speed moved between them.",
    ),
]
MaxBatchedTokensOption = Annotated[
    int, typer.Option(help="vllm: token budget of one iteration (chunked prefill).")
]
KvCacheTokensOption = Annotated[int, typer.Option(help="vllm: KV-cache capacity of one GPU, tokens.")]
BlockSizeOption = Annotated[int, typer.Option(help="vllm: tokens per KV-cache block.")]
PrefixCachingOption = Annotated[
    bool, typer.Option("--prefix-caching/--no-prefix-caching", help="vllm: reuse cached prompt blocks.")
]
TokenScaleOption = Annotated[
    float, typer.Option(help="Multiply every trace length (and hash block) by this.")
]
StartOption = Annotated[float | None, typer.Option(help="Keep trace requests from this second on.")]
DurationOption = Annotated[float | None, typer.Option(help="Keep this many seconds of the trace.")]
ValidateOption = Annotated[
    Path | None,
    typer.Option(
        "--validate",
        help="Simulate the requests this run directory served and compare with what it measured "
        "(needs --calibration).",
    ),
]
CalibrationOption = Annotated[
    Path | None,
    typer.Option(help="--validate's model: a run directory to fit, or a JSON file (stress_analysis.json)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="--validate: print JSON instead of a table.")]
ReplicasOption = Annotated[
    int | None,
    typer.Option(
        help="Perturbed replicas (iteration costs times the calibration's multipliers) for each figure's "
        "5-95% band: default 200 with --validate/--sessions, 40 for a --num-requests test and 10 for each "
        "suite test with a calibration."
    ),
]
SessionsOption = Annotated[
    Path | None, typer.Option(help="Simulate this session trace (flowperf-sessions v1) instead of requests.")
]
RoutingOption = Annotated[
    str, typer.Option(help="--sessions: session (a session stays on its GPU) or round-robin (per request).")
]
ConcurrencyOption = Annotated[int | None, typer.Option(help="--sessions: keep this many sessions in flight.")]
SessionRateOption = Annotated[float | None, typer.Option(help="--sessions: start sessions at this rate, /s.")]
NumSessionsOption = Annotated[
    int | None, typer.Option(help="--sessions: simulate this many sessions, drawn from the trace's.")
]
SloOption = Annotated[
    str | None, typer.Option(help="--sessions: NAME=MS, NAME one of session_p50/p95/p99_ms, ttft_p95_ms.")
]
FindGpusOption = Annotated[
    bool, typer.Option("--find-gpus", help="--sessions: the fewest GPUs (up to --max-gpus) meeting --slo.")
]


def stress(
    workload: WorkloadOption = _DEFAULTS.workload.name,
    rate: RateOption = _DEFAULTS.rate,
    use_real_timestamps: UseRealTimestampsOption = False,
    rps_scaling: RpsScalingOption = _DEFAULTS.rps_scaling,
    predictor_error: PredictorErrorOption = _DEFAULTS.predictor_error,
    batch_size: BatchSizeOption = _DEFAULTS.batch_size,
    gpus: GpusOption = _DEFAULTS.gpus,
    scheduler: SchedulerOption = None,
    num_requests: NumRequestsOption = None,
    d_sla: DSlaOption = _DEFAULTS.d_sla,
    sla_target: SlaTargetOption = _DEFAULTS.sla_target,
    step1_only: Step1OnlyOption = False,
    step2_only: Step2OnlyOption = False,
    step3_only: Step3OnlyOption = False,
    max_requests: MaxRequestsOption = _DEFAULTS.max_requests,
    max_gpus: MaxGpusOption = _DEFAULTS.max_gpus,
    best_gpu_count: BestGpuCountOption = None,
    seed: SeedOption = _DEFAULTS.seed,
    out: OutOption = _DEFAULTS.out,
    workers: WorkersOption = None,
    executor: ExecutorOption = _DEFAULTS.executor,
    ray_address: RayAddressOption = None,
    resume: ResumeOption = False,
    calibrate: CalibrateOption = None,
    max_num_batched_tokens: MaxBatchedTokensOption = _DEFAULTS.max_num_batched_tokens,
    kv_cache_tokens: KvCacheTokensOption = _DEFAULTS.kv_cache_tokens,
    block_size: BlockSizeOption = _DEFAULTS.block_size,
    prefix_caching: PrefixCachingOption = _DEFAULTS.prefix_caching,
    token_scale: TokenScaleOption = _DEFAULTS.token_scale,
    start: StartOption = None,
    duration: DurationOption = None,
    validate_run: ValidateOption = None,
    calibration: CalibrationOption = None,
    json_output: JsonOption = False,
    replicas: ReplicasOption = None,
    sessions: SessionsOption = None,
    routing: RoutingOption = _DEFAULTS.routing,
    concurrency: ConcurrencyOption = None,
    session_rate: SessionRateOption = None,
    num_sessions: NumSessionsOption = None,
    slo: SloOption = None,
    find_gpus: FindGpusOption = False,
) -> None:
    """Simulate a GPU cluster under multi-bin, continuous or vLLM V1 batching: steps 1-3 of the stress
    suite, one test, or (--validate) a measured run's requests against what the run measured."""
    # Each parameter is named after its StressConfig field, so the flags go over as they are.
    config = parse_flags(**locals())
    if config.sessions is not None:
        from flowperf.stress.session_cli import run_sessions

        run_sessions(config)
        return
    if config.validate_run is not None and config.calibration is not None:
        _print_validation(config.validate_run, config.calibration, config)
        return
    fitted = _fit_calibration(config)
    _print_summary(_run_with_progress(config, fitted))
    _print_replicas(config, fitted)


def _fit_calibration(config: StressConfig) -> Calibration | None:
    """The service model fitted from `--calibrate`'s runs, shown before the suite so a poor fit is seen
    before the long part starts."""
    if not config.calibrate:
        return None
    from flowperf.stress.calibrate import calibrate

    calibration = calibrate(config.calibrate)
    _print_calibration(calibration)
    return calibration


def _run_with_progress(config: StressConfig, calibration: Calibration | None) -> SuiteReport:
    """Run the suite with the fitted (or default) service model; the executor opens inside the bar so
    "starting workers" shows while worker processes spawn and compile."""
    from flowperf.stress.executors import open_executor
    from flowperf.stress.service import ServiceModel
    from flowperf.stress.suite import planned_tests, run_suite

    test_config = config.test_config(calibration.service if calibration else ServiceModel())
    plan = _suite_replicas(config, calibration)
    with (
        _progress_bar(planned_tests(config)) as on_result,
        open_executor(test_config, config.executor, config.workers, config.ray_address, plan) as run_many,
    ):
        return run_suite(
            config, test_config, run_many, on_result, calibration.as_dict() if calibration else None, plan
        )


def _suite_replicas(config: StressConfig, calibration: Calibration | None) -> ReplicaPlan | None:
    """The suite's tests get bands where the calibration kept its multipliers' noise and replicas are
    asked for (a --num-requests test gets its own in `_print_replicas`)."""
    replicas = config.replica_count()
    if config.steps == ("single",) or calibration is None or calibration.noise is None or not replicas:
        return None
    from flowperf.stress.replicas import ReplicaPlan

    return ReplicaPlan(calibration.noise, replicas, config.seed)


@contextmanager
def _progress_bar(tests: list[TestSpec]) -> Iterator[OnResult]:
    """A bar over `tests`, measured in requests, which a test's time grows with, so the ETA is not fooled
    by tiny tests; yields the callback that advances it as each result arrives."""
    columns = (
        TextColumn("{task.fields[done]}/{task.fields[tests]} tests"),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        total = sum(test.num_requests for test in tests)
        bar = progress.add_task("starting workers", total=total, done=0, tests=len(tests))
        finished = count(1)

        def on_result(result: TestResult, resumed: bool) -> None:
            note = "resumed" if resumed else f"{result.wall_s:.1f}s"
            progress.update(
                bar,
                advance=result.num_requests,
                done=next(finished),
                description=f"{result.test_id} ({note})",
            )

        yield on_result


def _print_calibration(calibration: Calibration) -> None:
    fit = calibration.fit
    labels = (
        ("a: prefill pass, ms", "a"),
        ("b: per prefill token, ms", "b"),
        ("c: decode-only iteration, ms", "c"),
        ("d: per decoding sequence, ms", "d"),
        ("e: per context token decoded, ms", "e"),
        ("f: per prefill attention pair, ms", "f"),
    )
    rows = []
    for label, name in labels:
        note = " (never varied: set to 0)" if name in fit.unidentified else ""
        rows.append((label, f"{fit.coefficients[name] * 1000:.4g}{note}"))
    rows.append(("harness overhead, ms", f"{calibration.harness_overhead_s * 1000:.3g}"))
    title = "Iteration-time model fitted from the run"
    print_table(console, TableSpec(title, ("parameter", "value"), rows, left=("parameter",)))
    r2 = "n/a" if fit.r2 is None else f"{fit.r2:.3f}"
    console.print(
        f"{fit.prefill_points} prefills and {fit.decode_points} token gaps ({fit.dropped} longer than one "
        f"iteration left out): RMSE {fit.rmse * 1000:.3g} ms, |residual| p50/p99 "
        f"{fit.residual_p50 * 1000:.3g}/{fit.residual_p99 * 1000:.3g} ms, R² {r2}"
    )
    console.print(f"prefills from {calibration.prefill_source}; decodes from {calibration.decode_source}")
    noise = calibration.noise
    if noise is not None:
        levels = (
            f"; {noise.runs} runs, their levels spread {noise.between:.3f} ({noise.level_se:.3f} by chance)"
            if noise.runs > 1
            else ""
        )
        console.print(f"iteration multipliers (log): phi {noise.phi:.2f}, sigma {noise.sigma:.3f}{levels}")


def _print_validation(run_dir: Path, calibration: Path, config: StressConfig) -> None:
    """Predicted against measured, as a table or (--json) one JSON document on stdout."""
    from flowperf.stress.validate import validate

    result = validate(
        run_dir, calibration, config.max_num_batched_tokens, config.replica_count(), config.seed
    )
    if config.json_output:
        print(json.dumps(result.as_dict(), indent=2))
        return
    rows = []
    for figure in result.figures:
        measured = "not recorded" if figure.measured is None else f"{figure.measured:.4g}"
        error = "" if figure.relative_error is None else f"{figure.relative_error:+.1%}"
        spread = "" if figure.p5 is None else f"{figure.p5:.4g}-{figure.p95:.4g}"
        inside = "" if figure.inside_band is None else ("yes" if figure.inside_band else "no")
        rows.append((figure.name, f"{figure.predicted:.4g}", spread, measured, error, inside))
    title = f"Engine model against {run_dir} ({result.requests} requests)"
    header = ("figure", "predicted", "5-95% band", "measured", "error", "in band")
    print_table(console, TableSpec(title, header, rows, left=("figure",)))
    console.print(f"requests: {result.requests_from}; measured: {result.ttft_source}")
    console.print(
        f"engine: {result.engine}; harness overhead added: {result.harness_overhead_s * 1000:.3g} ms"
    )


def _print_replicas(config: StressConfig, calibration: Calibration | None) -> None:
    """For a `--num-requests` test with a noisy calibration and replicas: each figure's median and 5-95%
    band, printed and written to `stress_replicas.json`."""
    replicas = config.replica_count()
    if not replicas or calibration is None or calibration.noise is None or config.steps != ("single",):
        return
    from flowperf.stress.replicas import replica_bands
    from flowperf.stress.suite import single_test

    found = replica_bands(
        config.test_config(calibration.service), single_test(config), calibration.noise, replicas, config.seed
    )
    (config.out / "stress_replicas.json").write_text(json.dumps(found, indent=2), encoding="utf-8")
    rows = [
        (name, *(f"{figures[key]:.4g}" for key in ("median", "p5", "p95")))
        for name, figures in found["bands"].items()
    ]
    header = ("figure", "median", "5%", "95%")
    print_table(console, TableSpec(f"{replicas} perturbed replicas", header, rows, left=("figure",)))


def _print_summary(report: SuiteReport) -> None:
    """One compact row per test (fits 80 columns); full precision is in the CSVs."""
    headers = (
        "test",
        "K",
        "GPUs",
        "reqs",
        "SLA",
        "TTFT\np50",
        "TTFT\np99",
        "E2E\np99",
        "req/s",
        "util",
        "fill",
    )
    rows = []
    for result in report.results:
        rows.append(
            (
                f"{result.step.replace('step', 's')} {result.scheduler}",
                "" if result.effective_k is None else str(result.effective_k),
                str(result.n_gpus),
                _count(result.num_requests),
                f"{result.sla_attainment:.1%}",
                _seconds(result.ttft_p50_s),
                _seconds(result.ttft_p99_s),
                _seconds(result.e2e_p99_s),
                f"{result.throughput_rps:.3g}",
                f"{result.gpu_utilisation:.0%}",
                "" if result.batch_fill is None else f"{result.batch_fill:.0%}",
            )
        )
    print_table(console, TableSpec("bench stress", headers, rows, left=("test",)))
    for line in _conclusions(report.analysis):
        console.print(line)
    console.print(
        f"{len(report.results)} tests in {report.analysis['wall_s']:.1f}s; results in {report.files[0]}"
    )


def _conclusions(analysis: dict[str, Any]) -> list[str]:
    lines = []
    if "step1" in analysis:
        lines.append(f"best scheduler (step 1): [bold]{analysis['step1']['best_scheduler']}[/]")
    if "step2" in analysis:
        step2 = analysis["step2"]
        verdict = "meets" if step2["target_met"] else "comes closest to (none met)"
        lines.append(
            f"best GPU count (step 2, {step2['scheduler']}): [bold]{step2['best_gpu_count']}[/], "
            f"the smallest that {verdict} {step2['sla_target']:.0%} SLA attainment"
        )
    if "step3" in analysis and analysis["step3"]["best_k"] is not None:
        lines.append(
            f"best K (step 3, {analysis['step3']['n_gpus']} GPUs): [bold]{analysis['step3']['best_k']}[/]"
        )
    return lines + _band_conclusions(analysis)


def _band_conclusions(analysis: dict[str, Any]) -> list[str]:
    """Whether each choice holds within the replicas' 5-95% bands (`stress.band_choices`)."""
    lines = []
    for step, what in (("step1", "scheduler"), ("step3", "K")):
        band = analysis.get(step, {}).get("band")
        if band is not None:
            verdict = (
                "holds in every replica band"
                if band["clear"]
                else f"could be beaten within the band by {', '.join(map(str, band['contenders']))}"
            )
            lines.append(
                f"best {what} ({step.replace('step', 'step ')}, {band['replicas']} replicas): {verdict}"
            )
    band = analysis.get("step2", {}).get("band")
    if band is not None:
        lines.append(
            f"GPU count meeting the SLA target (step 2, {band['replicas']} replicas): "
            f"{band['best_gpu_count_p5'] or 'none'} at the band's 5th percentile, "
            f"{band['best_gpu_count_median'] or 'none'} at its median"
        )
    return lines


def _seconds(value: float) -> str:
    """At most five characters: 137ms, 2.41s, 873s, 6.9ks, 16ks."""
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 10:
        return f"{value:.2f}s"
    if value < 1000:
        return f"{value:.0f}s"
    return f"{value / 1000:.1f}ks" if value < 10_000 else f"{value / 1000:.0f}ks"


def _count(value: int) -> str:
    """1K, 2.5K, 100K, 1M."""
    for size, unit in ((1_000_000, "M"), (1_000, "K")):
        if value >= size:
            return f"{value / size:.4g}{unit}"
    return str(value)
