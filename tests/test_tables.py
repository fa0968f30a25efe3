"""Tables are never cut: on an 80-column terminal a table that does not fit whole becomes plain columns,
and where stdout is not a terminal (a file, a pager, a CI log) every table is plain full-width columns."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from flowperf.cli.main import app
from flowperf.outputs.report import print_report, print_run_table, report_summary, step_rows
from flowperf.outputs.tables import TableSpec, print_table
from flowperf.rundir.rundata import load_run

DATA_RUN = Path(__file__).parent / "data" / "run_v1"
SRC = Path(__file__).resolve().parents[1] / "src" / "flowperf"
BOX = re.compile("[┏┃━│─└┘]")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA_RUN, tmp_path / "run_v1"))


def terminal(width: int = 80) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, force_terminal=True, color_system=None), buffer


def not_a_terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=80), buffer


def figures(run_dir: Path) -> list[str]:
    """Every figure of the report's per-step latency table."""
    return [cell for row in step_rows(report_summary(load_run(run_dir))) for cell in row[1:]]


@pytest.mark.parametrize("make_console", [terminal, not_a_terminal], ids=["80-column terminal", "not a tty"])
def test_the_report_cuts_no_number(run_dir: Path, make_console) -> None:  # type: ignore[no-untyped-def]
    console, buffer = make_console()
    run = load_run(run_dir)
    summary = report_summary(run)
    print_report(run, summary, console)
    print_run_table(summary, console)
    text = buffer.getvalue()
    assert "…" not in text
    step_lines = [
        line for line in text.splitlines() if line.startswith(("summarize ", "critique ", "refine "))
    ]
    for cell in figures(run_dir):
        assert any(re.search(rf"(?<![\d.,]){re.escape(cell)}(?![\d.,])", line) for line in step_lines), cell


def test_not_a_terminal_gets_plain_full_width_columns(run_dir: Path) -> None:
    console, buffer = not_a_terminal()
    run = load_run(run_dir)
    print_report(run, report_summary(run), console)
    text = buffer.getvalue()
    assert not BOX.search(text)
    assert max(len(line) for line in text.splitlines()) > 80  # the step table's natural width, uncut


def test_bench_report_piped_prints_whole_rows(run_dir: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and not BOX.search(result.output)
    header = next(line for line in result.output.splitlines() if line.startswith("step "))
    assert header.split()[-2:] == ["tpot", "p99"]


def test_a_table_that_fits_stays_a_rich_table() -> None:
    console, buffer = terminal()
    print_table(console, TableSpec("t", ("name", "ms"), [("a", "1,385.2")], left=("name",)))
    assert BOX.search(buffer.getvalue()) and "1,385.2" in buffer.getvalue()


def test_a_wide_table_on_a_narrow_terminal_keeps_every_number() -> None:
    console, buffer = terminal()
    header = ("step", *(f"col{i}" for i in range(14)))
    print_table(
        console, TableSpec("t", header, [("refine", *(f"{1385 + i:,}.5" for i in range(14)))], left=("step",))
    )
    text = buffer.getvalue()
    assert "…" not in text
    assert all(f"{1385 + i:,}.5" in text for i in range(14))


def test_every_table_goes_through_the_one_helper() -> None:
    """A table built with Rich directly would be cut again on a narrow terminal or in a pipe."""
    direct = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "tables.py" and re.search(r"\bTable(\.grid)?\(", path.read_text(encoding="utf-8"))
    ]
    assert direct == []
