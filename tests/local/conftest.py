"""Shared helpers: a fake clock and small scripted action providers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dichroism_control.local.engine import (
    ACTIVE,
    FAILED,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
    Engine,
)

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """`now()` advances only through `sleep()`; every sleep is recorded."""

    def __init__(self, start: datetime = T0) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += timedelta(seconds=seconds)

    @property
    def slept(self) -> float:
        return sum(self.sleeps)


class ScriptedProvider(ActionProvider):
    """Returns canned statuses; records every body and context it was given.

    `outcome`: "succeed" | "fail" | "unable" | "crash" | "hang" | "async:<seconds>".
    """

    def __init__(
        self,
        outcome: str = "succeed",
        details: Any = None,
        clock: FakeClock | None = None,
        responder: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.outcome = outcome
        self.details = {"ok": True} if details is None else details
        self.clock = clock
        self.responder = responder
        self.bodies: list[dict[str, Any]] = []
        self.contexts: list[ActionContext] = []
        self.polls = 0
        self.canceled: list[str] = []
        self._due: dict[str, datetime] = {}

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        self.bodies.append(body)
        self.contexts.append(ctx)
        details = self.responder(body) if self.responder else self.details
        if self.outcome == "succeed":
            return ActionStatus(status=SUCCEEDED, details=details)
        if self.outcome == "fail":
            return ActionStatus(status=FAILED, details=details, action_id="act-failed")
        if self.outcome == "unable":
            raise ActionUnableToRun("no such collection", code="NotFound")
        if self.outcome == "crash":
            raise RuntimeError("provider bug")
        if self.outcome == "hang":
            return ActionStatus(status=ACTIVE, details={"progress": 0}, action_id="act-hang")
        if self.outcome.startswith("async:"):
            assert self.clock is not None
            action_id = f"act-{len(self.bodies)}"
            self._due[action_id] = self.clock.now() + timedelta(seconds=float(self.outcome[6:]))
            return ActionStatus(status=ACTIVE, details=None, action_id=action_id)
        raise AssertionError(self.outcome)

    def status(self, action_id: str) -> ActionStatus:
        self.polls += 1
        if action_id in self._due:
            assert self.clock is not None
            if self.clock.now() >= self._due[action_id]:
                return ActionStatus(status=SUCCEEDED, details=self.details, action_id=action_id)
        return ActionStatus(status=ACTIVE, details={"progress": self.polls}, action_id=action_id)

    def cancel(self, action_id: str) -> None:
        self.canceled.append(action_id)


URL = "https://example.org/action"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(clock: FakeClock) -> Callable[..., Engine]:
    def factory(providers: Mapping[str, ActionProvider] | None = None, **kwargs: Any) -> Engine:
        return Engine(providers or {}, sleep=clock.sleep, now=clock.now, **kwargs)

    return factory
