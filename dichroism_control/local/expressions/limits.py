"""What an expression may cost: the `Limits` of one evaluation, the error every refusal
raises, and the size checks applied to every intermediate result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def size_of(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def check_size(value: Any, limits: Limits) -> Any:
    if isinstance(value, str):
        if len(value) > limits.max_string:
            raise ExpressionError(f"string result longer than {limits.max_string} characters")
    elif isinstance(value, (list, dict, tuple)):
        if len(value) > limits.max_items:
            raise ExpressionError(f"collection result larger than {limits.max_items} items")
    elif is_number(value) and isinstance(value, int) and value.bit_length() > limits.max_int_bits:
        raise ExpressionError(f"integer result larger than {limits.max_int_bits} bits")
    return value
