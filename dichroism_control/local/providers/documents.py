"""What the local providers share about the documents they read and write: the required
parameters of an action body and the timestamps of a status document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dichroism_control.local.engine.actions import ActionUnableToRun


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def require(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise ActionUnableToRun(f"missing required parameter {key!r}", code="BadRequest")
    return body[key]
