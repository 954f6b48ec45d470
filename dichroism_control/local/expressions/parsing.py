"""Parsing an expression: backtick JSONPaths replaced by synthetic names, `ast.parse` in
eval mode, and the whitelist of node types, names and attributes checked once per source
(compiled expressions are cached)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dichroism_control.local.expressions.limits import DEFAULT_LIMITS, ExpressionError, Limits

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.Call,
    ast.keyword,
    ast.ListComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.comprehension,
    ast.JoinedStr,
    ast.FormattedValue,
    # operators
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
)

BACKTICK_PREFIX = "__jsonpath_"


@dataclass(frozen=True)
class CompiledExpression:
    """A parsed and whitelisted expression, reusable across evaluations."""

    source: str
    tree: ast.Expression
    jsonpaths: tuple[str, ...]


def _replace_backticks(source: str) -> tuple[str, tuple[str, ...]]:
    """Replace `` `$.path` `` segments (outside string literals) with synthetic names."""
    if "`" not in source:
        return source, ()
    out: list[str] = []
    paths: list[str] = []
    i = 0
    quote: str | None = None
    while i < len(source):
        ch = source[i]
        if quote is not None:
            out.append(ch)
            if ch == "\\" and i + 1 < len(source):
                out.append(source[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
            i += 1
            continue
        if ch in ("'", '"'):
            quote = ch
            out.append(ch)
            i += 1
            continue
        if ch == "`":
            end = source.find("`", i + 1)
            if end == -1:
                raise ExpressionError("unterminated backtick JSONPath", source)
            path = source[i + 1 : end].strip()
            if not path.startswith("$"):
                raise ExpressionError(f"backtick value {path!r} is not a JSONPath", source)
            out.append(f" {BACKTICK_PREFIX}{len(paths)}__ ")
            paths.append(path)
            i = end + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out), tuple(paths)


@lru_cache(maxsize=1024)
def _compile_cached(source: str, limits: Limits) -> CompiledExpression:
    if len(source) > limits.max_source_chars:
        raise ExpressionError(f"expression longer than {limits.max_source_chars} characters")
    rewritten, paths = _replace_backticks(source)
    try:
        tree = ast.parse(rewritten.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error: {exc.msg}", source) from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"cannot parse: {exc}", source) from None
    for count, node in enumerate(ast.walk(tree), start=1):
        if count > limits.max_nodes:
            raise ExpressionError(f"expression has more than {limits.max_nodes} nodes", source)
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"{type(node).__name__} is not allowed", source)
        if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            raise ExpressionError(f"access to {node.attr!r} is not allowed", source)
        if (
            isinstance(node, ast.Name)
            and node.id.startswith("__")
            and not (node.id.startswith(BACKTICK_PREFIX) and node.id.endswith("__"))
        ):
            raise ExpressionError(f"name {node.id!r} is not allowed", source)
        if isinstance(node, ast.comprehension) and node.is_async:
            raise ExpressionError("async comprehensions are not allowed", source)
    _check_depth(tree, limits.max_depth, source)
    return CompiledExpression(source=source, tree=tree, jsonpaths=paths)


def _check_depth(tree: ast.AST, max_depth: int, source: str) -> None:
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ExpressionError(f"expression nested deeper than {max_depth}", source)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def compile_expression(source: str, limits: Limits = DEFAULT_LIMITS) -> CompiledExpression:
    """Parse and whitelist-check an expression (raises `ExpressionError`)."""
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be a string, got {type(source).__name__}")
    return _compile_cached(source, limits)


def iter_expressions(value: Any) -> Iterable[str]:
    """Every `.=` expression source in a Parameters-like structure (for static checks)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.endswith(".=") and isinstance(item, str):
                yield item
            else:
                yield from iter_expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_expressions(item)
