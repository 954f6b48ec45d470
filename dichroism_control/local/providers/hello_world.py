"""Local stand-in for Globus's hosted Hello World action provider (tutorial flows offline).

`https://actions.globus.org/hello_world` takes `echo_string` (and optionally
`sleep_time`) and answers `details: {"Hello": "World", "hello": <echo_string>}`. With a
positive `sleep_time` the action stays ACTIVE for that many seconds (polled through
`status`), otherwise it succeeds at once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dichroism_control.local.engine.actions import (
    ACTIVE,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
)

HELLO_WORLD_URL = "https://actions.globus.org/hello_world"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Pending:
    due: datetime
    start_time: str
    echo: str
    label: str | None


class HelloWorldProvider(ActionProvider):
    """Echo provider; `now` should be the engine's clock so `sleep_time` works in tests."""

    url = HELLO_WORLD_URL

    def __init__(self, *, now: Callable[[], datetime] = _utcnow) -> None:
        self._now = now
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        unknown = sorted(set(body) - {"echo_string", "sleep_time", "label"})
        if unknown:
            raise ActionUnableToRun(
                f"unexpected parameters {unknown}", code="BadRequest", details={"body": body}
            )
        echo = body.get("echo_string", "Hello, World")
        if not isinstance(echo, str):
            raise ActionUnableToRun("echo_string must be a string", code="BadRequest")
        sleep_time = body.get("sleep_time", 0)
        if isinstance(sleep_time, bool) or not isinstance(sleep_time, (int, float)):
            raise ActionUnableToRun("sleep_time must be a number", code="BadRequest")
        label = body.get("label")
        now = self._now()
        action_id = uuid.uuid4().hex
        if sleep_time <= 0:
            return self._done(action_id, now.isoformat(), echo, label)
        with self._lock:
            self._pending[action_id] = _Pending(
                due=now + timedelta(seconds=float(sleep_time)),
                start_time=now.isoformat(),
                echo=echo,
                label=label if isinstance(label, str) else None,
            )
        return ActionStatus(
            status=ACTIVE,
            action_id=action_id,
            details={"Hello": "World", "hello": echo},
            start_time=now.isoformat(),
            label=label if isinstance(label, str) else None,
        )

    def status(self, action_id: str) -> ActionStatus:
        with self._lock:
            pending = self._pending.get(action_id)
        if pending is None:
            raise KeyError(f"unknown action {action_id}")
        if self._now() < pending.due:
            return ActionStatus(
                status=ACTIVE,
                action_id=action_id,
                details={"Hello": "World", "hello": pending.echo},
                start_time=pending.start_time,
                label=pending.label,
            )
        with self._lock:
            self._pending.pop(action_id, None)
        return self._done(action_id, pending.start_time, pending.echo, pending.label)

    def cancel(self, action_id: str) -> None:
        with self._lock:
            self._pending.pop(action_id, None)

    def _done(self, action_id: str, start: str, echo: str, label: Any) -> ActionStatus:
        return ActionStatus(
            status=SUCCEEDED,
            action_id=action_id,
            details={"Hello": "World", "hello": echo},
            start_time=start,
            completion_time=self._now().isoformat(),
            label=label if isinstance(label, str) else None,
        )
