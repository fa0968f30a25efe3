"""`bench stress`: the Typer command, its progress bar and its summary tables; every decision lives elsewhere.

The simulator's modules (numba, pandas) load inside the command, so `bench --help` and the other commands
do not pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from flowperf.stress.config import StressConfig, parse_flags

if TYPE_CHECKING:
    from flowperf.stress.calibrate import Calibration
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
    int, typer.Option(help="Requests per static batch; slots per GPU for continuous.")
]
GpusOption = Annotated[int, typer.Option(help="GPU count of step 1 and of a --num-requests run.")]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        help="bins-K or continuous: the scheduler of a --num-requests run (default continuous); forces "
        "step 2's scheduler."
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
    Path | None,
    typer.Option(help="Fit the service model from this `bench run` directory's steps.jsonl first."),
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
) -> None:
    """Simulate a GPU cluster under multi-bin or continuous batching: steps 1-3 of the stress suite."""
    config = parse_flags(
        workload=workload,
        rate=rate,
        use_real_timestamps=use_real_timestamps,
        rps_scaling=rps_scaling,
        predictor_error=predictor_error,
        batch_size=batch_size,
        gpus=gpus,
        scheduler=scheduler,
        num_requests=num_requests,
        d_sla=d_sla,
        sla_target=sla_target,
        step1_only=step1_only,
        step2_only=step2_only,
        step3_only=step3_only,
        max_requests=max_requests,
        max_gpus=max_gpus,
        best_gpu_count=best_gpu_count,
        seed=seed,
        out=out,
        workers=workers,
        executor=executor,
        ray_address=ray_address,
        resume=resume,
        calibrate=calibrate,
    )
    calibration = _fit_calibration(config)
    _print_summary(_run_with_progress(config, calibration))


def _fit_calibration(config: StressConfig) -> Calibration | None:
    """The service model fitted from `--calibrate`'s run, shown before the suite so a poor fit is seen
    before the long part starts."""
    if config.calibrate is None:
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
    with (
        _progress_bar(planned_tests(config)) as on_result,
        open_executor(test_config, config.executor, config.workers, config.ray_address) as run_many,
    ):
        return run_suite(
            config, test_config, run_many, on_result, calibration.as_dict() if calibration else None
        )


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
    table = Table(title="Service model fitted from the run", title_justify="left")
    for column in ("parameter", "value", "fit RMSE", "|resid| p50/p99", "R²", "steps"):
        table.add_column(column, justify="right" if column != "parameter" else "left")
    for name, fit, intercept, slope in (
        ("prefill", calibration.prefill, "a (ms)", "b (ms/token)"),
        ("decode", calibration.decode, "c (ms)", "d (ms/request)"),
    ):
        r2 = "n/a" if fit.r2 is None else f"{fit.r2:.3f}"
        rows = ((intercept, fit.intercept), (slope, fit.slope))
        for label, value in rows:
            residuals = f"{fit.residual_p50 * 1000:.3g}/{fit.residual_p99 * 1000:.3g} ms"
            table.add_row(
                f"{name} {label}", f"{value * 1000:.4g}", f"{fit.rmse * 1000:.3g} ms", residuals, r2,
                str(fit.points),
            )  # fmt: skip
        if not fit.slope_identifiable:
            console.print(
                f"[yellow]{name}: one distinct x in the run, so its slope is unknown and set to 0[/]"
            )
    console.print(table)
    console.print(f"prefill fitted on {calibration.prefill_source}; decode on {calibration.decode_source}")


def _print_summary(report: SuiteReport) -> None:
    """One compact row per test (fits 80 columns); full precision is in the CSVs."""
    table = Table(
        title="bench stress",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
    )
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
    for header in headers:
        table.add_column(header, justify="left" if header == "test" else "right", no_wrap=True)
    for result in report.results:
        table.add_row(
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
    console.print(table)
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
