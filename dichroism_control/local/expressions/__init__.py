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

Modules: `limits` (the bounds and the error), `parsing` (compile and whitelist, cached),
`evaluator` (the AST walker), `functions` (what an expression may call).
"""

from __future__ import annotations

from dichroism_control.local.expressions.evaluator import PathReader, evaluate
from dichroism_control.local.expressions.functions import pathsplit
from dichroism_control.local.expressions.limits import DEFAULT_LIMITS, ExpressionError, Limits
from dichroism_control.local.expressions.parsing import (
    CompiledExpression,
    compile_expression,
    iter_expressions,
)

__all__ = [
    "DEFAULT_LIMITS",
    "CompiledExpression",
    "ExpressionError",
    "Limits",
    "PathReader",
    "compile_expression",
    "evaluate",
    "iter_expressions",
    "pathsplit",
]
