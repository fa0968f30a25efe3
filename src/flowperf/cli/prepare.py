"""`bench expand`, `bench model build-tiny` and `bench doctor`: what to check or build before a run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from flowperf.cli.common import (
    config_from_flags,
    echo_line,
    err_console,
    out_console,
    print_warning,
    show_help_without_command,
)
from flowperf.cli.options import (
    ENGINE,
    FLOW,
    MEASUREMENT,
    MODEL,
    ConfigFlags,
    only,
    with_options,
)
from flowperf.flows import resolve_flow
from flowperf.flows.cache import expand_with_cache
from flowperf.outputs.tables import TableSpec, print_table
from flowperf.run.timing import TimingLog


@with_options(FLOW)
def expand(
    *,
    flags: ConfigFlags,
    force: Annotated[bool, typer.Option("--force", help="Ignore the cache and expand again.")] = False,
) -> None:
    """Expand a flow template over its fixtures (cached by content hash) without running anything."""
    config = config_from_flags(flags)
    template_path = resolve_flow(config.flow, config.flows_dir)
    started = time.perf_counter()
    expansion = expand_with_cache(template_path, config.num_flows, force=force, warn=print_warning)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    TimingLog(echo_line).emit(
        "flow_expansion_ms", elapsed_ms, source=expansion.source, flows=len(expansion.flows)
    )
    flows = expansion.flows
    err_console.print(
        f"{flows.name}: {len(flows)} flows x {len(flows.steps)} steps "
        f"({', '.join(s.id for s in flows.steps)}) over {len(flows.records)} fixture records"
    )


def build_tiny(
    fixtures_dir: Annotated[Path, typer.Option("--fixtures-dir", help="Corpus for the tokenizer.")] = Path(
        "fixtures"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if an identical build exists.")
    ] = False,
) -> None:
    """Build the embedded tiny Llama model (random weights, BPE tokenizer trained on the fixtures).

    Deterministic: the same fixtures give the same bytes. Stored under $FLOWPERF_HOME (default: the
    user cache dir) and reused until the fixtures or the builder change.
    """
    from flowperf.engines.tiny import build_tiny_model

    model = build_tiny_model(fixtures_dir, force=force)
    TimingLog(echo_line).emit("model_build_ms", model.build_ms, model="tiny", built=model.built)
    out_console.print(str(model.path))


@with_options(FLOW, MODEL, only(MEASUREMENT, "--max-tokens"), only(ENGINE, "--kv-cache-gib", "--block-size"))
def doctor(
    *,
    flags: ConfigFlags,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Show what the harness sees (Python, engine and torch versions, device, memory, GPUs, models) and
    how many workflows of a flow fit in the KV cache at once, with a --concurrency to start from."""
    from flowperf.diagnostics.doctor import capacity_findings, collect_findings
    from flowperf.run.benchmark import resolve_model

    config = config_from_flags(flags)
    findings = collect_findings()
    resolved = resolve_model(config, TimingLog(lambda line: None))
    assert resolved.path is not None
    findings |= capacity_findings(config, resolved.path)
    if as_json:
        out_console.print_json(json.dumps(findings, default=str))
        return
    rows = [(key, Text(str(value))) for key, value in findings.items()]
    print_table(out_console, TableSpec("", None, rows))


def register(app: typer.Typer) -> None:
    app.command()(expand)
    app.command()(doctor)
    model_app = typer.Typer(help="Build and inspect models.")
    model_app.callback(invoke_without_command=True)(show_help_without_command)
    model_app.command("build-tiny")(build_tiny)
    app.add_typer(model_app, name="model")
