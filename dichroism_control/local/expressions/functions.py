"""The functions and methods an expression may call: Globus's own (`pathsplit`,
`getattr`, `is_present`), a few Python builtins on JSON values, and whitelisted str/dict/list
methods, each bounded by `Limits`."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dichroism_control.local.expressions.limits import (
    ExpressionError,
    Limits,
    is_number,
)

MISSING = object()


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


class SafeFormatter(string.Formatter):
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


def to_json_like(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


# methods reachable as `value.name(...)`, per receiver type
STR_METHODS = frozenset(
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
DICT_METHODS = frozenset({"get", "keys", "values", "items"})
LIST_METHODS = frozenset({"index", "count"})


@dataclass(frozen=True)
class BoundMethod:
    receiver: Any
    name: str


@dataclass(frozen=True)
class Function:
    name: str


FUNCTIONS = frozenset(
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


def lookup_name(names: Mapping[str, Any], name: Any) -> Any:
    """The value at a dotted name in the run state (`getattr`/`is_present`), or MISSING."""
    if not isinstance(name, str):
        raise ExpressionError("the name must be a string")
    value: Any = names
    for part in name.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return MISSING
    return value


def call_function(
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    names: Mapping[str, Any],
    limits: Limits,
) -> Any:
    """Call one of FUNCTIONS on evaluated arguments (each refuses what it cannot take)."""
    lim = limits
    if name == "sorted":
        reverse = kwargs.pop("reverse", False)
        if kwargs or len(args) != 1:
            raise ExpressionError("sorted() takes one list and optional reverse=")
        return sorted(iterable(args[0]), reverse=bool(reverse))
    if kwargs:
        raise ExpressionError(f"{name}() takes no keyword arguments")
    if name == "getattr":
        if not 1 <= len(args) <= 2:
            raise ExpressionError("getattr() takes a name and an optional default")
        value = lookup_name(names, args[0])
        return (args[1] if len(args) == 2 else None) if value is MISSING else value
    if name == "is_present":
        if len(args) != 1:
            raise ExpressionError("is_present() takes one name")
        return lookup_name(names, args[0]) is not MISSING
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
        items = iterable(args[0]) if len(args) == 1 else args
        return min(items) if name == "min" else max(items)
    if name == "sum":
        if len(args) != 1:
            raise ExpressionError("sum() takes one list")
        items = iterable(args[0])
        if not all(is_number(i) for i in items):
            raise ExpressionError("sum() needs a list of numbers")
        return sum(items)
    if name in ("any", "all", "list"):
        if len(args) != 1:
            raise ExpressionError(f"{name}() takes one argument")
        items = iterable(args[0])
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


def call_method(
    method: BoundMethod, args: list[Any], kwargs: dict[str, Any], *, limits: Limits
) -> Any:
    """Call a whitelisted str/dict/list method, refusing results that would be too large."""
    receiver, name = method.receiver, method.name
    lim = limits
    if kwargs and name != "format":
        raise ExpressionError(f"{name}() takes no keyword arguments")
    if isinstance(receiver, str):
        if name == "format":
            return SafeFormatter(lim).vformat(receiver, tuple(args), kwargs)
        if name == "join":
            if len(args) != 1:
                raise ExpressionError("join() takes one list")
            items = iterable(args[0])
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


def iterable(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, dict)):
        return list(value)
    raise ExpressionError(f"expected a list, got {type(value).__name__}")
