"""JSON Schema format checks as the Flows service applies them to run input.

jsonschema checks `date-time` only when the optional rfc3339-validator package is installed,
which would leave `"format": "date-time"` (our Transfer deadlines) silently unchecked; its
JSON Schema meaning (RFC 3339 date-time, with an offset) is checked here explicitly. One
checker serves the launcher's pre-check (`binding.input_validator`) and the doubles
(`local.service_rules.flows`), so the two cannot disagree.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats constrain strings only (JSON Schema validation, 7.1)
    if not _RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return False
    return True


def format_checker(cls: Any) -> Any:
    """The validator class's own format checks plus `date-time`."""
    import jsonschema

    checker = jsonschema.FormatChecker(list(cls.FORMAT_CHECKER.checkers))
    checker.checks("date-time")(is_rfc3339)
    return checker
