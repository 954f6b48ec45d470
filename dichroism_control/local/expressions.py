"""Safe evaluator for Globus Flows `.=` expressions (never `eval`/`exec` of user text).

The Flows expression language is "Python-like": literals, arithmetic, comparisons, boolean
operators, conditional expressions, comprehensions, dotted access to object keys
(`SourceInfo.details.path`), subscripts, and a few functions (`pathsplit`, `getattr`,
`is_present`, ...). Names are the top-level keys of the run state (plus the read-only
`_context`). A backtick-quoted JSONPath (`` `$.a.b` ``) is also accepted, as in the Globus
documentation's ExpressionEval example.

Implementation: `ast.parse(mode="eval")` and a walker that only knows a whitelist of node
types; anything else is refused with `ExpressionError`. Values are plain JSON data, so
attribute access never reaches Python attributes except a whitelist of str/dict/list
methods. Sizes are bounded (source length, node count, nesting depth, string and list
lengths, comprehension iterations, exponent size).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "ExpressionError",
    "Limits",
    "compile_expression",
    "evaluate",
    "pathsplit",
]

_MISSING = object()


class ExpressionError(ValueError):
    """The expression is malformed, refused as unsafe, or failed while evaluating."""

    def __init__(self, message: str, expression: str | None = None) -> None:
        self.expression = expression
        self.reason = message
        text = message if expression is None else f"{message} (in expression {expression!r})"
        super().__init__(text)


@dataclass(frozen=True)
class Limits:
    """Resource bounds for one evaluation."""

    max_source_chars: int = 10_000
    max_nodes: int = 2_000
    max_depth: int = 50
    max_string: int = 1_000_000
    max_items: int = 100_000
    max_iterations: int = 1_000_000
    max_exponent: int = 10_000
    max_int_bits: int = 100_000


DEFAULT_LIMITS = Limits()

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

_BACKTICK_PREFIX = "__jsonpath_"


# --------------------------------------------------------------------------- functions


def pathsplit(path: str) -> list[str]:
    """Globus `pathsplit`: `"/foo/bar/blech"` -> `["/foo/bar", "blech"]`; `/~/` never splits."""
    if not isinstance(path, str):
        raise ExpressionError(f"pathsplit() needs a string, got {type(path).__name__}")
    stripped = path.rstrip("/") if path not in ("/", "/~/") else path
    if stripped in ("/", "/~/", "/~"):
        return ["/~/" if stripped.startswith("/~") else "/", ""]
    if stripped.startswith("/~/") and "/" not in stripped[3:]:
        return ["/~/", stripped[3:]]
    head, sep, tail = stripped.rpartition("/")
    if not sep:
        return ["", tail]
    if head == "":
        head = "/"
    return [head, tail]


def _check_size(value: Any, limits: Limits) -> Any:
    if isinstance(value, str):
        if len(value) > limits.max_string:
            raise ExpressionError(f"string result longer than {limits.max_string} characters")
    elif isinstance(value, (list, dict, tuple)):
        if len(value) > limits.max_items:
            raise ExpressionError(f"collection result larger than {limits.max_items} items")
    elif _is_number(value) and isinstance(value, int) and value.bit_length() > limits.max_int_bits:
        raise ExpressionError(f"integer result larger than {limits.max_int_bits} bits")
    return value


class _SafeFormatter(string.Formatter):
    """`str.format` without attribute traversal and without huge padding widths."""

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self._limits = limits

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        if "." in field_name:
            raise ExpressionError("attribute access inside format() fields is not allowed")
        found: tuple[Any, Any] = super().get_field(field_name, args, kwargs)
        return found

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in re.findall(r"\d+", format_spec):
            if int(number) > self._limits.max_string:
                raise ExpressionError("format() width or precision is too large")
        return super().format_field(value, format_spec)


def _to_json_like(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


# methods reachable as `value.name(...)`, per receiver type
_STR_METHODS = frozenset(
    {
        "lower",
        "upper",
        "strip",
        "lstrip",
        "rstrip",
        "split",
        "rsplit",
        "splitlines",
        "startswith",
        "endswith",
        "replace",
        "join",
        "format",
        "find",
        "rfind",
        "count",
        "title",
        "capitalize",
        "isdigit",
        "isalpha",
        "isalnum",
        "isspace",
        "removeprefix",
        "removesuffix",
    }
)
_DICT_METHODS = frozenset({"get", "keys", "values", "items"})
_LIST_METHODS = frozenset({"index", "count"})


@dataclass(frozen=True)
class _BoundMethod:
    receiver: Any
    name: str


@dataclass(frozen=True)
class _Function:
    name: str


_FUNCTIONS = frozenset(
    {
        "pathsplit",
        "getattr",
        "is_present",
        "len",
        "str",
        "int",
        "float",
        "bool",
        "abs",
        "round",
        "min",
        "max",
        "sum",
        "sorted",
        "list",
        "any",
        "all",
        "range",
    }
)


# --------------------------------------------------------------------------- compile


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
            out.append(f" {_BACKTICK_PREFIX}{len(paths)}__ ")
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
            and not (node.id.startswith(_BACKTICK_PREFIX) and node.id.endswith("__"))
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


# --------------------------------------------------------------------------- evaluate

PathReader = Callable[[str], Any]


def evaluate(
    source: str | CompiledExpression,
    names: Mapping[str, Any],
    *,
    read_path: PathReader | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    """Evaluate an expression against `names` (the run state's top-level keys).

    `read_path` resolves backtick JSONPaths; it should raise `KeyError`/`LookupError` when
    the path is absent.
    """
    compiled = (
        source if isinstance(source, CompiledExpression) else compile_expression(source, limits)
    )
    scope: dict[str, Any] = {}
    for index, path in enumerate(compiled.jsonpaths):
        if read_path is None:
            raise ExpressionError("backtick JSONPaths are not available here", compiled.source)
        try:
            scope[f"{_BACKTICK_PREFIX}{index}__"] = read_path(path)
        except LookupError:
            raise ExpressionError(
                f"path {path} is not present in the state", compiled.source
            ) from None
    walker = _Evaluator(names, scope, limits, compiled.source)
    try:
        result = walker.eval(compiled.tree.body)
        result = _finish(result, limits)
    except ExpressionError as exc:
        if exc.expression is None:
            raise ExpressionError(exc.reason, compiled.source) from None
        raise
    except RecursionError:
        raise ExpressionError("expression too deeply nested", compiled.source) from None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, IndexError, KeyError) as exc:
        raise ExpressionError(f"{type(exc).__name__}: {exc}", compiled.source) from None
    return result


def _finish(value: Any, limits: Limits) -> Any:
    """Make the result JSON data (tuples -> lists) and refuse anything else."""
    if isinstance(value, (_BoundMethod, _Function)):
        raise ExpressionError("a function is not a value; call it")
    if value is None or isinstance(value, (bool, int, str)):
        return _check_size(value, limits)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ExpressionError("result is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_finish(v, limits) for v in _check_size(value, limits)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in _check_size(value, limits).items():
            if not isinstance(k, str):
                raise ExpressionError("object keys must be strings")
            out[k] = _finish(v, limits)
        return out
    raise ExpressionError(f"result of type {type(value).__name__} is not JSON data")


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _size_of(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


class _Evaluator:
    def __init__(
        self, names: Mapping[str, Any], synthetic: dict[str, Any], limits: Limits, source: str
    ) -> None:
        self._names = names
        self._synthetic = synthetic
        self._limits = limits
        self._source = source
        self._locals: list[dict[str, Any]] = []
        self._iterations = 0

    # ---- dispatch
    def eval(self, node: ast.expr) -> Any:
        method = getattr(self, f"_eval_{type(node).__name__}", None)
        if method is None:
            raise ExpressionError(f"{type(node).__name__} is not allowed")
        return method(node)

    def _eval_Constant(self, node: ast.Constant) -> Any:
        if node.value is None or isinstance(node.value, (bool, int, float, str)):
            return node.value
        raise ExpressionError(f"constant of type {type(node.value).__name__} is not allowed")

    def _eval_Name(self, node: ast.Name) -> Any:
        for scope in reversed(self._locals):
            if node.id in scope:
                return scope[node.id]
        if node.id in self._synthetic:
            return self._synthetic[node.id]
        if node.id in self._names:
            return self._names[node.id]
        if node.id in _FUNCTIONS:
            return _Function(node.id)
        raise ExpressionError(f"name {node.id!r} is not present in the state")

    def _eval_List(self, node: ast.List) -> list[Any]:
        return _check_size([self.eval(e) for e in node.elts], self._limits)  # type: ignore[no-any-return]

    def _eval_Tuple(self, node: ast.Tuple) -> list[Any]:
        return self._eval_List(ast.List(elts=node.elts, ctx=ast.Load()))

    def _eval_Dict(self, node: ast.Dict) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:  # {**other}
                merged = self.eval(value)
                if not isinstance(merged, dict):
                    raise ExpressionError("** needs an object")
                out.update(merged)
            else:
                k = self.eval(key)
                if not isinstance(k, str):
                    raise ExpressionError("object keys must be strings")
                out[k] = self.eval(value)
        return _check_size(out, self._limits)  # type: ignore[no-any-return]

    def _eval_JoinedStr(self, node: ast.JoinedStr) -> str:
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(self._eval_FormattedValue(value))
            else:
                raise ExpressionError("unsupported f-string part")
        return _check_size("".join(parts), self._limits)  # type: ignore[no-any-return]

    def _eval_FormattedValue(self, node: ast.FormattedValue) -> str:
        value = self.eval(node.value)
        spec = ""
        if node.format_spec is not None:
            spec = self._eval_JoinedStr(node.format_spec)  # type: ignore[arg-type]
        if node.conversion == ord("r"):
            value = repr(value)
        elif node.conversion == ord("s"):
            value = str(value)
        formatter = _SafeFormatter(self._limits)
        return str(formatter.format_field(value, spec))

    def _eval_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not operand
        if not _is_number(operand):
            raise ExpressionError("unary +/- needs a number")
        return -operand if isinstance(node.op, ast.USub) else +operand

    def _eval_BinOp(self, node: ast.BinOp) -> Any:
        left = self.eval(node.left)
        right = self.eval(node.right)
        op_type = type(node.op)
        self._check_binop(op_type, left, right)
        result = _BINOPS[op_type](left, right)
        if isinstance(result, float) and (math.isinf(result) or math.isnan(result)):
            raise ExpressionError("arithmetic overflow")
        return _check_size(result, self._limits)

    def _check_binop(self, op_type: type[ast.operator], left: Any, right: Any) -> None:
        """Refuse operations whose result would be too large *before* computing them."""
        lim = self._limits
        if op_type is ast.Mult:
            for seq, times in ((left, right), (right, left)):
                cap = lim.max_string if isinstance(seq, str) else lim.max_items
                if (
                    isinstance(seq, (str, list))
                    and isinstance(times, int)
                    and _size_of(seq) * max(times, 0) > cap
                ):
                    raise ExpressionError("repetition result is too large")
        elif op_type is ast.Pow:
            if not (_is_number(left) and _is_number(right)):
                raise ExpressionError("** needs numbers")
            if abs(right) > lim.max_exponent:
                raise ExpressionError(f"exponent larger than {lim.max_exponent}")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and max(left.bit_length(), 1) * right > lim.max_int_bits
            ):
                raise ExpressionError("power result is too large")
        elif op_type is ast.Mod and isinstance(left, str):
            raise ExpressionError("'%' string formatting is not supported; use format()")
        elif (
            op_type is ast.Add
            and isinstance(left, (str, list))
            and isinstance(right, (str, list))
            and _size_of(left) + _size_of(right) > max(lim.max_string, lim.max_items)
        ):
            raise ExpressionError("concatenation result is too large")

    def _eval_BoolOp(self, node: ast.BoolOp) -> Any:
        value: Any = None
        if isinstance(node.op, ast.And):
            for operand in node.values:
                value = self.eval(operand)
                if not value:
                    return value
            return value
        for operand in node.values:
            value = self.eval(operand)
            if value:
                return value
        return value

    def _eval_Compare(self, node: ast.Compare) -> bool:
        left = self.eval(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.eval(comparator)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True

    def _eval_IfExp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)

    def _eval_Attribute(self, node: ast.Attribute) -> Any:
        base = self.eval(node.value)
        name = node.attr
        if name.startswith("__"):
            raise ExpressionError(f"access to {name!r} is not allowed")
        if isinstance(base, dict):
            if name in base:
                return base[name]
            if name in _DICT_METHODS:
                return _BoundMethod(base, name)
            raise ExpressionError(f"key {name!r} is not present (keys: {sorted(base)[:20]})")
        if isinstance(base, str) and name in _STR_METHODS:
            return _BoundMethod(base, name)
        if isinstance(base, list) and name in _LIST_METHODS:
            return _BoundMethod(base, name)
        raise ExpressionError(f"{type(base).__name__} value has no attribute {name!r}")

    def _eval_Subscript(self, node: ast.Subscript) -> Any:
        base = self.eval(node.value)
        if isinstance(node.slice, ast.Slice):
            parts = [
                None if part is None else self.eval(part)
                for part in (node.slice.lower, node.slice.upper, node.slice.step)
            ]
            for part in parts:
                if part is not None and (not isinstance(part, int) or isinstance(part, bool)):
                    raise ExpressionError("slice bounds must be integers")
            if not isinstance(base, (str, list)):
                raise ExpressionError("only strings and lists can be sliced")
            return base[slice(*parts)]
        key = self.eval(node.slice)
        if isinstance(base, dict):
            if key not in base:
                raise ExpressionError(f"key {key!r} is not present")
            return base[key]
        if isinstance(base, (list, str)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise ExpressionError("list and string indices must be integers")
            if not -len(base) <= key < len(base):
                raise ExpressionError(f"index {key} out of range (length {len(base)})")
            return base[key]
        raise ExpressionError(f"{type(base).__name__} value is not subscriptable")

    # ---- comprehensions
    def _iterate(self, generators: list[ast.comprehension], depth: int = 0) -> Iterator[None]:
        gen = generators[depth]
        iterable = self.eval(gen.iter)
        if isinstance(iterable, dict):
            iterable = list(iterable)
        if not isinstance(iterable, (list, str, tuple)):
            raise ExpressionError(f"cannot iterate over {type(iterable).__name__}")
        for item in iterable:
            self._iterations += 1
            if self._iterations > self._limits.max_iterations:
                raise ExpressionError("too many comprehension iterations")
            self._bind(gen.target, item)
            if all(self.eval(cond) for cond in gen.ifs):
                if depth + 1 == len(generators):
                    yield None
                else:
                    yield from self._iterate(generators, depth + 1)

    def _bind(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            if target.id.startswith("__"):
                raise ExpressionError(f"name {target.id!r} is not allowed")
            self._locals[-1][target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = list(value) if isinstance(value, (list, tuple)) else None
            if values is None or len(values) != len(target.elts):
                raise ExpressionError("cannot unpack value in comprehension")
            for sub, item in zip(target.elts, values, strict=True):
                self._bind(sub, item)
        else:
            raise ExpressionError("unsupported comprehension target")

    def _comprehension(self, generators: list[ast.comprehension], emit: Callable[[], None]) -> None:
        self._locals.append({})
        try:
            for _ in self._iterate(generators):
                emit()
        finally:
            self._locals.pop()

    def _eval_ListComp(self, node: ast.ListComp) -> list[Any]:
        out: list[Any] = []

        def emit() -> None:
            out.append(self.eval(node.elt))
            if len(out) > self._limits.max_items:
                raise ExpressionError("comprehension result is too large")

        self._comprehension(node.generators, emit)
        return out

    def _eval_GeneratorExp(self, node: ast.GeneratorExp) -> list[Any]:
        return self._eval_ListComp(ast.ListComp(elt=node.elt, generators=node.generators))

    def _eval_DictComp(self, node: ast.DictComp) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def emit() -> None:
            key = self.eval(node.key)
            if not isinstance(key, str):
                raise ExpressionError("object keys must be strings")
            out[key] = self.eval(node.value)
            if len(out) > self._limits.max_items:
                raise ExpressionError("comprehension result is too large")

        self._comprehension(node.generators, emit)
        return out

    # ---- calls
    def _eval_Call(self, node: ast.Call) -> Any:
        is_builtin = isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
        func = _Function(node.func.id) if is_builtin else self.eval(node.func)  # type: ignore[attr-defined]
        args: list[Any] = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise ExpressionError("*args is not allowed")
            args.append(self.eval(arg))
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise ExpressionError("**kwargs is not allowed")
            kwargs[kw.arg] = self.eval(kw.value)
        if isinstance(func, _Function):
            result = self._call_function(func.name, args, kwargs)
        elif isinstance(func, _BoundMethod):
            result = self._call_method(func, args, kwargs)
        else:
            raise ExpressionError(f"{type(func).__name__} value is not callable")
        return _check_size(_to_json_like(result), self._limits)

    def _lookup_name(self, name: Any) -> Any:
        if not isinstance(name, str):
            raise ExpressionError("the name must be a string")
        value: Any = self._names
        for part in name.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            else:
                return _MISSING
        return value

    def _call_function(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        lim = self._limits
        if name == "sorted":
            reverse = kwargs.pop("reverse", False)
            if kwargs or len(args) != 1:
                raise ExpressionError("sorted() takes one list and optional reverse=")
            return sorted(_iterable(args[0]), reverse=bool(reverse))
        if kwargs:
            raise ExpressionError(f"{name}() takes no keyword arguments")
        if name == "getattr":
            if not 1 <= len(args) <= 2:
                raise ExpressionError("getattr() takes a name and an optional default")
            value = self._lookup_name(args[0])
            return (args[1] if len(args) == 2 else None) if value is _MISSING else value
        if name == "is_present":
            if len(args) != 1:
                raise ExpressionError("is_present() takes one name")
            return self._lookup_name(args[0]) is not _MISSING
        if name == "pathsplit":
            if len(args) != 1:
                raise ExpressionError("pathsplit() takes one path")
            return pathsplit(args[0])
        if name == "range":
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise ExpressionError("range() needs integers")
            r = range(*args)
            if len(r) > lim.max_items:
                raise ExpressionError("range() is too large")
            return list(r)
        if name in ("min", "max"):
            if not args:
                raise ExpressionError(f"{name}() needs arguments")
            items = _iterable(args[0]) if len(args) == 1 else args
            return min(items) if name == "min" else max(items)
        if name == "sum":
            if len(args) != 1:
                raise ExpressionError("sum() takes one list")
            items = _iterable(args[0])
            if not all(_is_number(i) for i in items):
                raise ExpressionError("sum() needs a list of numbers")
            return sum(items)
        if name in ("any", "all", "list"):
            if len(args) != 1:
                raise ExpressionError(f"{name}() takes one argument")
            items = _iterable(args[0])
            return any(items) if name == "any" else all(items) if name == "all" else list(items)
        if name == "len":
            if len(args) != 1 or not isinstance(args[0], (str, list, dict)):
                raise ExpressionError("len() takes one string, list or object")
            return len(args[0])
        if name == "str":
            if len(args) > 1:
                raise ExpressionError("str() takes one argument")
            if not args:
                return ""
            value = args[0]
            if isinstance(value, (dict, list)):
                return json.dumps(value)
            if value is None:
                return "None"
            return str(value)
        if name in ("int", "float", "bool", "abs", "round"):
            max_args = 2 if name in ("int", "round") else 1
            if not 1 <= len(args) <= max_args:
                raise ExpressionError(f"{name}() takes 1 to {max_args} arguments")
            for a in args:
                if not isinstance(a, (bool, int, float, str)):
                    raise ExpressionError(f"{name}() needs a number or string")
            return _SCALAR_FUNCTIONS[name](*args)
        raise ExpressionError(f"function {name!r} is not available")

    def _call_method(self, method: _BoundMethod, args: list[Any], kwargs: dict[str, Any]) -> Any:
        receiver, name = method.receiver, method.name
        lim = self._limits
        if kwargs and name != "format":
            raise ExpressionError(f"{name}() takes no keyword arguments")
        if isinstance(receiver, str):
            if name == "format":
                return _SafeFormatter(lim).vformat(receiver, tuple(args), kwargs)
            if name == "join":
                if len(args) != 1:
                    raise ExpressionError("join() takes one list")
                items = _iterable(args[0])
                if not all(isinstance(i, str) for i in items):
                    raise ExpressionError("join() needs a list of strings")
                if sum(map(len, items)) + len(receiver) * len(items) > lim.max_string:
                    raise ExpressionError("join() result is too large")
            if name == "replace" and len(args) >= 2:
                old, new = args[0], args[1]
                if isinstance(old, str) and isinstance(new, str):
                    grow = max(len(new) - len(old), 0) * (len(receiver) + 1)
                    if len(receiver) + grow > lim.max_string:
                        raise ExpressionError("replace() result is too large")
            if not all(a is None or isinstance(a, (str, int, list)) for a in args):
                raise ExpressionError(f"bad argument to {name}()")
            if name in ("startswith", "endswith") and args and isinstance(args[0], list):
                args = [tuple(args[0]), *args[1:]]
        elif isinstance(receiver, dict) and name in ("keys", "values", "items"):
            if args:
                raise ExpressionError(f"{name}() takes no arguments")
            return [list(i) if isinstance(i, tuple) else i for i in getattr(receiver, name)()]
        bound: Callable[..., Any] = getattr(receiver, name)
        result = bound(*args)
        return result


_SCALAR_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "round": round,
}


def _iterable(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, dict)):
        return list(value)
    raise ExpressionError(f"expected a list, got {type(value).__name__}")


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
