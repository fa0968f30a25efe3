"""Every command's tables, printed one way: never a number cut to fit.

On a terminal wide enough for the table's natural width, a Rich table. Everywhere else (stdout piped to a
file, a pager or a CI log, where Rich would assume 80 columns; or a terminal too narrow, where Rich would
shrink columns and cut cells to `1…`) plain columns as wide as their widest cell, which a pager or a
terminal may wrap but which keep every figure whole. Cells are literal strings (a step id may hold
brackets; no Rich markup is read from them) or Text.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

Cell = str | Text
GAP = "  "
UNBOUNDED = 1_000_000


@dataclass(frozen=True)
class TableSpec:
    """A table to print: `header` None makes it a key/value grid (boxed: in a titled panel on a terminal).
    Columns named in `left` are left-justified, the others (the figures) right-justified and never
    wrapped; `styles` colours cells by their text (a verdict, say)."""

    title: str
    header: Sequence[str] | None
    rows: Sequence[Sequence[Cell]]
    left: Collection[str] = ()
    styles: Mapping[str, str] = field(default_factory=dict)
    boxed: bool = False


def plain(cell: Cell) -> str:
    """A cell's text, on one line."""
    return (cell.plain if isinstance(cell, Text) else cell).replace("\n", " ")


def plain_lines(spec: TableSpec) -> list[str]:
    """The table as plain columns, each as wide as its widest cell (two spaces between)."""
    header = [plain(name) for name in spec.header] if spec.header is not None else None
    rows = [[plain(cell) for cell in row] for row in spec.rows]
    every = [header, *rows] if header is not None else rows
    if not every:
        return [spec.title] if spec.title else []
    widths = [max(len(cell) for cell in column) for column in zip(*every, strict=True)]
    names = list(spec.header) if spec.header is not None else [""] * len(widths)
    left = set(spec.left)
    lines = [spec.title] if spec.title else []
    for cells in every:
        aligned = [
            cell.ljust(width) if spec.header is None or name in left else cell.rjust(width)
            for name, cell, width in zip(names, cells, widths, strict=True)
        ]
        lines.append(GAP.join(aligned).rstrip())
    return lines


def _styled(cell: Cell, styles: Mapping[str, str]) -> Text:
    return cell if isinstance(cell, Text) else Text(cell, style=styles.get(cell, ""))


def rich_table(spec: TableSpec) -> Table:
    """The Rich table (or grid) of `spec`, figures right-justified and never wrapped."""
    if spec.header is None:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        if not spec.boxed and spec.title:
            table.title, table.title_justify = spec.title, "left"
    else:
        table = Table(title=spec.title or None, title_justify="left")
        for name in spec.header:
            figure = name not in spec.left
            table.add_column(name, justify="right" if figure else "left", no_wrap=figure)
    for row in spec.rows:
        table.add_row(*(_styled(cell, spec.styles) for cell in row))
    return table


def natural_width(console: Console, table: Table) -> int:
    """The table's width with nothing shrunk (Rich's own measure is capped at the console's width)."""
    return Measurement.get(console, console.options.update_width(UNBOUNDED), table).maximum


def renderable(console: Console, spec: TableSpec) -> RenderableType:
    """What to print for `spec` on this console: the Rich table where it fits whole, else plain columns."""
    table = rich_table(spec)
    border = 4 if spec.boxed else 0
    if console.is_terminal and natural_width(console, table) + border <= console.width:
        return Panel(table, title=spec.title, title_align="left", expand=False) if spec.boxed else table
    return Text("\n".join(plain_lines(spec)), no_wrap=True, overflow="ignore", end="")


def print_table(console: Console, spec: TableSpec) -> None:
    print_parts(console, [spec])


def print_parts(console: Console, parts: Iterable[TableSpec | Cell]) -> None:
    """Tables and lines (markup allowed) in order; lines wrap as prose, tables are never cut."""
    for part in parts:
        if isinstance(part, TableSpec):
            console.print(renderable(console, part), crop=False, soft_wrap=True)
        else:
            console.print(part)
