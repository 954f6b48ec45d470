"""The house rules of docs/ARCHITECTURE.md, checked on the source: no import cycles, and
rooms of a livable size (no module over ~600 lines, no class over ~300)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dichroism_control"
MODULE_LINES = 650  # "~600": a little slack, never a hall
CLASS_LINES = 320


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """Every dichroism_control module a module imports, lazily or not; TYPE_CHECKING-only
    imports are left out (they never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
            if base in modules:
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    return found


def test_no_module_imports_another_that_imports_it_back() -> None:
    modules = _modules()
    graph = {
        name: _imports(ast.parse(path.read_text()), modules) - {name}
        for name, path in modules.items()
    }
    # A package's __init__ re-exporting its own modules is not a cycle of rooms.
    cycles = []
    for name, deps in graph.items():
        for dep in deps:
            if name in graph.get(dep, set()) and not (
                dep.startswith(name + ".") or name.startswith(dep + ".")
            ):
                cycles.append(tuple(sorted((name, dep))))
    assert sorted(set(cycles)) == []


def test_rooms_stay_small() -> None:
    too_big = []
    for name, path in _modules().items():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MODULE_LINES:
            too_big.append(f"module {name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > CLASS_LINES:
                    too_big.append(f"class {name}.{node.name}: {size} lines")
    assert too_big == []
