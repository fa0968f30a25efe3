"""The package layout the architecture relies on, checked from the source (no imports executed).

The import graph counts every `import` statement in src/flowperf: module-level, function-level and those
under `if TYPE_CHECKING:` alike. A function-level import hides a cycle from Python but not from a reader,
and a type-only import still ties the lower package to the higher one, so all three count.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "flowperf"
MAX_TOP_LEVEL_MODULES = 6

# Packages that everything above may build on, and the packages they must never import (the CLI and what
# a person reads sit on top; nothing under them may reach back up).
LOWER_PACKAGES = ("run", "rundir", "engines", "flows", "workers", "sessions", "telemetry")
UPPER_PACKAGES = ("cli", "outputs")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_names(path: Path, modules: dict[str, Path]) -> set[str]:
    """The flowperf modules `path` imports, by any import statement anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {target for target in found if target in modules and target != name}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_names(path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a readable path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(group) for group in cycles)


def underscore_imports(path: Path) -> list[str]:
    """`from flowperf.x import _name` (or from a `_module`) where flowperf.x is not `path`'s own package."""
    name = module_name(path)
    own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        source = node.module or "" if isinstance(node, ast.ImportFrom) and not node.level else ""
        if not source.startswith("flowperf"):
            continue
        is_package = (PACKAGE_ROOT.parent / source.replace(".", "/")).is_dir()
        source_package = source if is_package else source.rpartition(".")[0]
        if source_package == own_package:
            continue
        private = [alias.name for alias in node.names if alias.name.startswith("_")]
        if any(part.startswith("_") for part in source.split(".")):
            private.append("(the module itself)")
        found += [f"{name} imports {source}.{item}" for item in private]
    return found


def test_no_module_imports_another_packages_underscore_names() -> None:
    offences = [
        offence for path in sorted(PACKAGE_ROOT.rglob("*.py")) for offence in underscore_imports(path)
    ]
    assert not offences, "; ".join(offences)


def test_the_underscore_check_sees_a_private_import(tmp_path: Path) -> None:
    module = PACKAGE_ROOT / "run" / "runner.py"
    text = "from flowperf.rundir.store import _private\nfrom flowperf.run.sinks import _fine\n"
    probe = tmp_path / "probe.py"
    probe.write_text(text)
    original = module_name
    try:
        globals()["module_name"] = lambda path: original(module) if path == probe else original(path)
        assert underscore_imports(probe) == ["flowperf.run.runner imports flowperf.rundir.store._private"]
    finally:
        globals()["module_name"] = original


def test_few_modules_at_the_top_of_the_package() -> None:
    top = sorted(path.name for path in PACKAGE_ROOT.glob("*.py") if path.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules at the top of flowperf: {top}"


def packages() -> list[Path]:
    return sorted(path.parent for path in PACKAGE_ROOT.rglob("__init__.py"))


FORBIDDEN = re.compile(r"(?:Must not import:|\bnever)\s+(.*?)\.(?:\s|$)", re.DOTALL)


def package_docstring(package: Path) -> str:
    return ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""


def forbidden_packages(docstring: str) -> set[str]:
    """The flowperf packages and top modules a package's docstring says it must not import."""
    match = FORBIDDEN.search(docstring)
    known = {module.split(".")[1] for module in all_modules() if "." in module}
    words = set(re.findall(r"[a-z_]+", match.group(1))) if match else set()
    return words & known


def top_part(module: str, depth: int) -> str:
    return ".".join(module.split(".")[: depth + 1])


@pytest.mark.parametrize("package", packages(), ids=lambda path: module_name(path / "__init__.py"))
def test_every_package_says_what_it_owns_and_may_import(package: Path) -> None:
    docstring = package_docstring(package)
    assert docstring, f"{package.name}/__init__.py has no docstring"
    if package != PACKAGE_ROOT:
        assert "may import" in docstring.lower() and FORBIDDEN.search(docstring), (
            f"{package.name}/__init__.py: the docstring must say what the package may import ('May import') "
            "and what it must not ('Must not import: a, b.')"
        )


@pytest.mark.parametrize("package", packages()[1:], ids=lambda path: module_name(path / "__init__.py"))
def test_no_package_imports_what_its_docstring_forbids(package: Path) -> None:
    name = module_name(package / "__init__.py")
    forbidden = {f"flowperf.{word}" for word in forbidden_packages(package_docstring(package))}
    offences = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        if source == name or source.startswith(name + ".")
        for target in targets
        if top_part(target, 1) in forbidden
    ]
    assert not offences, f"{name} must not import {sorted(forbidden)}: " + "; ".join(sorted(offences))


def test_the_docstring_rule_is_read() -> None:
    assert forbidden_packages("May import: errors.\nMust not import: cli, run, outputs.\nMore.") == {
        "cli",
        "run",
        "outputs",
    }
    assert forbidden_packages("May import config; never run/, modes/ or cli/.") == {"run", "modes", "cli"}


def test_lower_packages_never_import_the_cli_or_outputs() -> None:
    offences = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        if source.split(".")[1:2] and source.split(".")[1] in LOWER_PACKAGES
        for target in targets
        if target.split(".")[1:2] and target.split(".")[1] in UPPER_PACKAGES
    ]
    assert not offences, "; ".join(sorted(offences))
