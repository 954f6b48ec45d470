"""Evaluating a compiled expression against the run state: `evaluate` and the AST walker
(`_Evaluator`), which knows only the whitelisted node types and keeps every intermediate
result within `Limits`."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dichroism_control.local.expressions.functions import (
    DICT_METHODS,
    FUNCTIONS,
    LIST_METHODS,
    STR_METHODS,
    BoundMethod,
    Function,
    SafeFormatter,
    call_function,
    call_method,
    to_json_like,
)
from dichroism_control.local.expressions.limits import (
    DEFAULT_LIMITS,
    ExpressionError,
    Limits,
    check_size,
    is_number,
    size_of,
)
from dichroism_control.local.expressions.parsing import (
    BACKTICK_PREFIX,
    CompiledExpression,
    compile_expression,
)

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
            scope[f"{BACKTICK_PREFIX}{index}__"] = read_path(path)
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
    if isinstance(value, (BoundMethod, Function)):
        raise ExpressionError("a function is not a value; call it")
    if value is None or isinstance(value, (bool, int, str)):
        return check_size(value, limits)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ExpressionError("result is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_finish(v, limits) for v in check_size(value, limits)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in check_size(value, limits).items():
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
        if node.id in FUNCTIONS:
            return Function(node.id)
        raise ExpressionError(f"name {node.id!r} is not present in the state")

    def _eval_List(self, node: ast.List) -> list[Any]:
        return check_size([self.eval(e) for e in node.elts], self._limits)  # type: ignore[no-any-return]

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
        return check_size(out, self._limits)  # type: ignore[no-any-return]

    def _eval_JoinedStr(self, node: ast.JoinedStr) -> str:
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(self._eval_FormattedValue(value))
            else:
                raise ExpressionError("unsupported f-string part")
        return check_size("".join(parts), self._limits)  # type: ignore[no-any-return]

    def _eval_FormattedValue(self, node: ast.FormattedValue) -> str:
        value = self.eval(node.value)
        spec = ""
        if node.format_spec is not None:
            spec = self._eval_JoinedStr(node.format_spec)  # type: ignore[arg-type]
        if node.conversion == ord("r"):
            value = repr(value)
        elif node.conversion == ord("s"):
            value = str(value)
        formatter = SafeFormatter(self._limits)
        return str(formatter.format_field(value, spec))

    def _eval_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not operand
        if not is_number(operand):
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
        return check_size(result, self._limits)

    def _check_binop(self, op_type: type[ast.operator], left: Any, right: Any) -> None:
        """Refuse operations whose result would be too large *before* computing them."""
        lim = self._limits
        if op_type is ast.Mult:
            for seq, times in ((left, right), (right, left)):
                cap = lim.max_string if isinstance(seq, str) else lim.max_items
                if (
                    isinstance(seq, (str, list))
                    and isinstance(times, int)
                    and size_of(seq) * max(times, 0) > cap
                ):
                    raise ExpressionError("repetition result is too large")
        elif op_type is ast.Pow:
            if not (is_number(left) and is_number(right)):
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
            and size_of(left) + size_of(right) > max(lim.max_string, lim.max_items)
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
            if name in DICT_METHODS:
                return BoundMethod(base, name)
            raise ExpressionError(f"key {name!r} is not present (keys: {sorted(base)[:20]})")
        if isinstance(base, str) and name in STR_METHODS:
            return BoundMethod(base, name)
        if isinstance(base, list) and name in LIST_METHODS:
            return BoundMethod(base, name)
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
        is_builtin = isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        func = Function(node.func.id) if is_builtin else self.eval(node.func)  # type: ignore[attr-defined]
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
        if isinstance(func, Function):
            result = call_function(func.name, args, kwargs, names=self._names, limits=self._limits)
        elif isinstance(func, BoundMethod):
            result = call_method(func, args, kwargs, limits=self._limits)
        else:
            raise ExpressionError(f"{type(func).__name__} value is not callable")
        return check_size(to_json_like(result), self._limits)
