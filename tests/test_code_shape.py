"""The size rule of issue 10: no function in src/ longer than 80 lines, so each can be read at once.

Exempt: the simulator's compiled kernels (one hot loop each; splitting them costs a call per event in
numba's nopython mode). Complexity is ruff's C901 (max 12, pyproject.toml), run by scripts/test.sh.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "flowperf"
MAX_LINES = 80


def _is_compiled_kernel(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("njit" in ast.unparse(decorator) for decorator in function.decorator_list)


def test_no_function_in_src_is_longer_than_80_lines() -> None:
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not _is_compiled_kernel(node):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, "functions longer than 80 lines: " + ", ".join(too_long)
