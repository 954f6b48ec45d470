"""The action provider protocol: what the engine calls for an Action state and what it
gets back (the Action Provider API's status document).

Providers (`dichroism_control.local.providers`) implement `ActionProvider`; the engine
starts and polls them (`polling.py`).
"""

from __future__ import annotations

import abc
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dichroism_control.local.jsonpath import json_copy

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
_ACTION_STATUSES = frozenset({ACTIVE, INACTIVE, SUCCEEDED, FAILED})


@dataclass
class ActionStatus:
    """What an action provider reports (the Action Provider API status document)."""

    status: str
    details: Any = None
    action_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    display_status: str | None = None
    label: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    release_after: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _ACTION_STATUSES:
            raise ValueError(
                f"action status must be one of {sorted(_ACTION_STATUSES)}, not {self.status!r}"
            )

    @property
    def done(self) -> bool:
        return self.status in (SUCCEEDED, FAILED)

    @classmethod
    def coerce(cls, value: ActionStatus | Mapping[str, Any]) -> ActionStatus:
        """Accept an `ActionStatus` or a provider's JSON status document."""
        if isinstance(value, ActionStatus):
            return value
        if not isinstance(value, Mapping) or "status" not in value:
            raise TypeError(
                f"a provider must return ActionStatus or a status document, got {value!r}"
            )
        known = {
            k: value[k]
            for k in (
                "details",
                "display_status",
                "label",
                "start_time",
                "completion_time",
                "release_after",
            )
            if k in value
        }
        action_id = value.get("action_id") or uuid.uuid4().hex
        return cls(status=str(value["status"]), action_id=str(action_id), **known)

    def document(self, *, state_name: str, creator_id: str | None, now: str) -> dict[str, Any]:
        """The action result as Flows stores it at ResultPath."""
        return {
            "action_id": self.action_id,
            "completion_time": self.completion_time or (now if self.done else None),
            "creator_id": creator_id,
            "details": json_copy(self.details),
            "display_status": self.display_status or self.status,
            "label": self.label,
            "manage_by": [],
            "monitor_by": [],
            "release_after": self.release_after,
            "start_time": self.start_time or now,
            "status": self.status,
            "state_name": state_name,
        }


@dataclass(frozen=True)
class ActionContext:
    """What a provider knows about the call besides the body."""

    run_id: str
    flow_id: str | None
    state_name: str
    action_url: str
    wait_time: float
    run_as: str
    context: Mapping[str, Any]
    cancel: threading.Event | None = None

    @property
    def username(self) -> str | None:
        value = self.context.get("username")
        return None if value is None else str(value)


class ActionUnableToRun(Exception):
    """Raise from `ActionProvider.run` when the action could not be started at all
    (bad body, unknown collection, ...). It becomes the catchable `ActionUnableToRun`."""

    def __init__(
        self, description: str, *, code: str = "ActionUnableToRun", details: Any = None
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.details = details

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"code": self.code, "description": self.description}
        if self.details is not None:
            doc["details"] = self.details
        return doc


class ActionProvider(abc.ABC):
    """A local stand-in for one Globus action provider (keyed by ActionUrl in `Engine`).

    Synchronous providers implement `run` only and return SUCCEEDED/FAILED. Asynchronous
    ones return ACTIVE from `run` and implement `status` (polled with exponential back-off
    until `WaitTime`) and preferably `cancel` (called on ActionTimeout or run cancel).
    """

    @abc.abstractmethod
    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus | Mapping[str, Any]:
        """Start the action; raise `ActionUnableToRun` if it cannot start."""

    def status(self, action_id: str) -> ActionStatus | Mapping[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} returned ACTIVE but cannot be polled")

    def cancel(self, action_id: str) -> ActionStatus | Mapping[str, Any] | None:
        return None


class FunctionProvider(ActionProvider):
    """Adapter: a synchronous provider from `fn(body, ctx) -> ActionStatus | document`."""

    def __init__(
        self, fn: Callable[[dict[str, Any], ActionContext], ActionStatus | Mapping[str, Any]]
    ) -> None:
        self._fn = fn

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus | Mapping[str, Any]:
        return self._fn(body, ctx)
