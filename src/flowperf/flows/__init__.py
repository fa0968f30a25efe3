"""Flows: templates and fixtures in, validated and expanded workflows out.

Owns: the template models (`schema`) and graph rules (`graph`), fixtures, distributions, templating,
expansion and its cache, the run plan, and the workflow sources (`source.WorkflowSource`;
`trace_source` replays Mooncake/Azure traces). A new step kind starts in `schema` and `plan`.
May import: config, errors, locking, validation, rundir (durable writes), engines (presets' vocabularies),
stress (the shipped traces).
Must not import: cli, run, outputs, modes, workers, diagnostics.
"""

from __future__ import annotations

from pathlib import Path

from flowperf.errors import UserError

TEMPLATE_SUFFIXES = (".yaml", ".yml")


def resolve_flow(flow: str, flows_dir: Path) -> Path:
    """The template file for `--flow`: a path to a YAML file, or a name looked up in `flows_dir`."""
    candidate = Path(flow)
    if candidate.suffix in TEMPLATE_SUFFIXES or len(candidate.parts) > 1:
        if not candidate.is_file():
            raise UserError(f"--flow {flow}: no such flow template file")
        return candidate
    for suffix in TEMPLATE_SUFFIXES:
        path = Path(flows_dir) / f"{flow}{suffix}"
        if path.is_file():
            return path
    available = ", ".join(available_flows(flows_dir)) or "none"
    raise UserError(f"--flow {flow}: unknown flow (no {flows_dir}/{flow}.yaml); available: {available}")


def available_flows(flows_dir: Path) -> list[str]:
    """Names of the flow templates in `flows_dir`."""
    directory = Path(flows_dir)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.iterdir() if p.suffix in TEMPLATE_SUFFIXES and p.is_file())
