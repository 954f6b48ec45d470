"""JSONPath reads (`.$` parameters, InputPath, Choice variables) and ResultPath writes.

Reads use jsonpath-ng for parsing (and for evaluation of wildcard/filter/recursive paths);
definite paths (`$.a.b`, `$.a[0].b`) are compiled once into a tuple of steps and walked
directly, which is both faster and gives precise "which step is missing" messages.

`$._context` is virtual and read-only: readers are given the context separately (see
`StateView`) and writes below `$._context` are refused, as in Globus Flows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonpath_ng.jsonpath import Child, Fields, Index, Root
from jsonpath_ng.parser import parse as _jsonpath_parse

__all__ = [
    "CONTEXT_KEY",
    "JsonPathError",
    "PathNotFound",
    "ResultPathError",
    "StateView",
    "compile_path",
    "json_copy",
    "read_path",
    "write_path",
]

CONTEXT_KEY = "_context"

Step = str | int


class JsonPathError(ValueError):
    """The path is not valid JSONPath (a definition error)."""


class PathNotFound(LookupError):
    """The path is well-formed but absent from the state."""

    def __init__(self, path: str, missing_at: str, available: list[str] | None = None) -> None:
        self.path = path
        self.missing_at = missing_at
        self.available = available
        hint = f"; keys present there: {available}" if available is not None else ""
        super().__init__(f"path {path!r} not found: {missing_at!r} is absent{hint}")


class ResultPathError(ValueError):
    """A ResultPath cannot be written (bad form, read-only `_context`, or non-object parent)."""


@dataclass(frozen=True)
class CompiledPath:
    source: str
    steps: tuple[Step, ...] | None  # None: indefinite path, use `expr`
    expr: Any


def _steps_of(node: Any) -> list[Step] | None:
    """Definite steps for Root/Child/Fields(one)/Index(one) chains, else None."""
    if isinstance(node, Root):
        return []
    if isinstance(node, Child):
        left = _steps_of(node.left)
        right = _steps_of_leaf(node.right)
        if left is None or right is None:
            return None
        return left + right
    return None


def _steps_of_leaf(node: Any) -> list[Step] | None:
    if isinstance(node, Fields) and len(node.fields) == 1 and node.fields[0] != "*":
        return [str(node.fields[0])]
    if isinstance(node, Index) and len(node.indices) == 1:
        return [int(node.indices[0])]
    if isinstance(node, Child):
        return _steps_of(node)
    return None


@lru_cache(maxsize=4096)
def compile_path(path: str) -> CompiledPath:
    """Parse a JSONPath that must start with `$` (raises `JsonPathError`)."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise JsonPathError(f"{path!r} is not a JSONPath (it must start with '$')")
    if path.startswith("$$"):
        raise JsonPathError(
            f"{path!r}: '$$' context paths are not used by Globus Flows; use $._context"
        )
    try:
        expr = _jsonpath_parse(path)
    except Exception as exc:  # jsonpath-ng raises several unrelated exception types
        raise JsonPathError(f"{path!r} is not valid JSONPath: {exc}") from None
    steps = _steps_of(expr)
    return CompiledPath(source=path, steps=None if steps is None else tuple(steps), expr=expr)


def _render(steps: tuple[Step, ...]) -> str:
    out = "$"
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


@dataclass(frozen=True)
class StateView:
    """The run state plus the virtual read-only `_context`."""

    state: Any
    context: Mapping[str, Any]

    def as_names(self) -> dict[str, Any]:
        names = dict(self.state) if isinstance(self.state, Mapping) else {}
        names[CONTEXT_KEY] = self.context
        return names


def read_path(view: StateView, path: str) -> Any:
    """The value at `path`; a list of matches for indefinite paths. Raises `PathNotFound`."""
    compiled = compile_path(path)
    steps = compiled.steps
    if steps is not None:
        value: Any = view.state
        start = 0
        if steps and steps[0] == CONTEXT_KEY:
            value = view.context
            start = 1
        for i in range(start, len(steps)):
            step = steps[i]
            if isinstance(step, str) and isinstance(value, Mapping):
                if step not in value:
                    raise PathNotFound(path, _render(steps[: i + 1]), sorted(value)[:30])
                value = value[step]
            elif isinstance(step, int) and isinstance(value, list):
                if not -len(value) <= step < len(value):
                    raise PathNotFound(path, _render(steps[: i + 1]))
                value = value[step]
            else:
                kind = type(value).__name__
                raise PathNotFound(path, f"{_render(steps[: i + 1])} (parent is a {kind})")
        return value
    matches = compiled.expr.find(view.as_names())
    if not matches:
        raise PathNotFound(path, path)
    return [m.value for m in matches]


def path_exists(view: StateView, path: str) -> bool:
    try:
        read_path(view, path)
    except PathNotFound:
        return False
    return True


def json_copy(value: Any) -> Any:
    """Deep copy of JSON data (faster than copy.deepcopy for dict/list/scalars)."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


def write_path(state: Any, path: str, value: Any) -> Any:
    """Store `value` at ResultPath `path`; returns the new state (`$` replaces it).

    Intermediate objects are created as needed; the state is modified in place otherwise.
    `value` is stored as given: copy it first if it aliases other state.
    """
    try:
        compiled = compile_path(path)
    except JsonPathError as exc:
        raise ResultPathError(str(exc)) from None
    steps = compiled.steps
    if steps is None:
        raise ResultPathError(f"ResultPath {path!r} must be a definite path like $.a.b or $.a[0]")
    if not steps:
        return value
    if steps[0] == CONTEXT_KEY:
        raise ResultPathError(f"ResultPath {path!r}: $._context is read-only")
    if not isinstance(state, dict):
        raise ResultPathError(f"ResultPath {path!r}: the run state is not an object")
    target: Any = state
    for i, step in enumerate(steps[:-1]):
        nxt = steps[i + 1]
        if isinstance(step, str):
            if not isinstance(target, dict):
                raise ResultPathError(f"ResultPath {path!r}: {_render(steps[:i])} is not an object")
            child = target.get(step)
            if child is None or not isinstance(child, (dict, list)):
                if step in target and child is not None:
                    kind = type(child).__name__
                    raise ResultPathError(
                        f"ResultPath {path!r}: {_render(steps[: i + 1])} is a {kind}, not an object"
                    )
                if isinstance(nxt, int):
                    raise ResultPathError(
                        f"ResultPath {path!r}: cannot create list {_render(steps[: i + 1])}"
                    )
                child = {}
                target[step] = child
            target = child
        else:
            if not isinstance(target, list) or not -len(target) <= step < len(target):
                raise ResultPathError(
                    f"ResultPath {path!r}: no list element {_render(steps[: i + 1])}"
                )
            target = target[step]
    last = steps[-1]
    if isinstance(last, str):
        if not isinstance(target, dict):
            raise ResultPathError(f"ResultPath {path!r}: parent of {last!r} is not an object")
        target[last] = value
    else:
        if not isinstance(target, list) or not -len(target) <= last < len(target):
            raise ResultPathError(f"ResultPath {path!r}: no list element at index {last}")
        target[last] = value
    return state
