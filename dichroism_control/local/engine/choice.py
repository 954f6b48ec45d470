"""Choice state rules: the comparison operators, the type tests, and matching a rule
(And/Or/Not included) against the run state.

The operator tables are shared with the definition checker, which refuses a malformed rule
before the run starts; `rule_matches` then only meets well-formed rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from dichroism_control.local.engine.failures import RunFailure
from dichroism_control.local.jsonpath import PathNotFound, StateView, path_exists, read_path

_TIMESTAMP_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_timestamp(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (with offset) as an aware datetime, else None."""
    if not isinstance(value, str):
        return None
    m = _TIMESTAMP_RE.match(value)
    if m is None:
        return None
    date, clock, frac, offset = m.groups()
    frac = (frac or "")[:7]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{clock}{frac}{offset}")
    except ValueError:
        return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    """StringMatches: `*` matches any run of characters; `\\*` and `\\\\` are literals."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


_COMPARISON_KINDS: dict[str, Callable[[Any], Any]] = {
    "String": lambda v: v if isinstance(v, str) else None,
    "Numeric": lambda v: v if is_number(v) else None,
    "Timestamp": parse_timestamp,
}
_COMPARISON_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": lambda a, b: bool(a == b),
    "LessThan": lambda a, b: bool(a < b),
    "GreaterThan": lambda a, b: bool(a > b),
    "LessThanEquals": lambda a, b: bool(a <= b),
    "GreaterThanEquals": lambda a, b: bool(a >= b),
}
TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "IsNull": lambda v: v is None,
    "IsNumeric": is_number,
    "IsString": lambda v: isinstance(v, str),
    "IsBoolean": lambda v: isinstance(v, bool),
    "IsTimestamp": lambda v: parse_timestamp(v) is not None,
}


def _comparison_table() -> dict[str, tuple[str, str, bool]]:
    """operator name -> (kind, op, operand is a path)."""
    table: dict[str, tuple[str, str, bool]] = {}
    for kind in _COMPARISON_KINDS:
        for op in _COMPARISON_OPS:
            table[f"{kind}{op}"] = (kind, op, False)
            table[f"{kind}{op}Path"] = (kind, op, True)
    table["BooleanEquals"] = ("Boolean", "Equals", False)
    table["BooleanEqualsPath"] = ("Boolean", "Equals", True)
    table["StringMatches"] = ("String", "Matches", False)
    return table


COMPARISON_OPERATORS = _comparison_table()
CHOICE_OPERATORS = frozenset(COMPARISON_OPERATORS) | frozenset(TYPE_TESTS) | {"IsPresent"}


def rule_matches(rule: Mapping[str, Any], view: StateView) -> bool:
    """Whether `rule` holds for the run state in `view`."""
    if "And" in rule:
        return all(rule_matches(r, view) for r in rule["And"])
    if "Or" in rule:
        return any(rule_matches(r, view) for r in rule["Or"])
    if "Not" in rule:
        return not rule_matches(rule["Not"], view)
    variable = rule["Variable"]
    operator = next(k for k in rule if k in CHOICE_OPERATORS)
    operand = rule[operator]
    if operator == "IsPresent":
        return path_exists(view, variable) == bool(operand)
    value = _read(view, variable, "Variable")
    if operator in TYPE_TESTS:
        return TYPE_TESTS[operator](value) == bool(operand)
    kind, op, operand_is_path = COMPARISON_OPERATORS[operator]
    if operand_is_path:
        operand = _read(view, operand, operator)
    if kind == "Boolean":
        return isinstance(value, bool) and isinstance(operand, bool) and value == operand
    convert = _COMPARISON_KINDS[kind]
    left = convert(value)
    if op == "Matches":
        return isinstance(left, str) and _wildcard_regex(str(operand)).fullmatch(left) is not None
    right = convert(operand)
    if left is None or right is None:
        return False
    return _COMPARISON_OPS[op](left, right)


def _read(view: StateView, path: str, what: str) -> Any:
    try:
        return read_path(view, path)
    except PathNotFound as exc:
        msg = (
            f"the Choice {what} path '{path}' could not be found in the run state "
            f"({exc.missing_at} is absent); guard it with IsPresent"
        )
        raise RunFailure("ChoicePathError", msg, error="States.Runtime") from None
