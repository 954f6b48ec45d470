"""Running the action of an Action state: start it with its provider, poll it with
exponential back-off until it is done or its `WaitTime` is up, and cancel it on timeout or
when the run is canceled."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn

from dichroism_control.local.engine.actions import (
    FAILED,
    INACTIVE,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
)
from dichroism_control.local.engine.failures import ERROR_TIMEOUT, ERROR_UNABLE, RunCanceled


def call_action(
    provider: ActionProvider,
    body: dict[str, Any],
    ctx: ActionContext,
    *,
    creator_id: str | None,
    now: Callable[[], datetime],
    sleep: Callable[[float], None],
    poll_initial: float,
    poll_max: float,
    fail: Callable[[str, Any], NoReturn],
    on_inactive: Callable[[ActionStatus | None], None] | None = None,
) -> ActionStatus:
    """The action's final status (SUCCEEDED or FAILED).

    `fail(error, payload)` raises the state's catchable error: ActionUnableToRun when the
    provider refuses to start, ActionTimeout past `ctx.wait_time`. `sleep` raises
    `RunCanceled` when the run is canceled; the action is canceled before it propagates.
    `on_inactive(status)` hears of the action going INACTIVE, `on_inactive(None)` of it
    going on again.
    """
    start = now()
    deadline = start + timedelta(seconds=ctx.wait_time)
    try:
        status = ActionStatus.coerce(provider.run(body, ctx))
    except ActionUnableToRun as exc:
        fail(ERROR_UNABLE, exc.document())
    except Exception as exc:  # a provider bug or refusal: the action never started
        fail(ERROR_UNABLE, {"code": type(exc).__name__, "description": str(exc)})
    interval = poll_initial
    inactive = False
    while True:
        if (status.status == INACTIVE) != inactive and on_inactive is not None:
            inactive = status.status == INACTIVE
            on_inactive(status if inactive else None)
        if status.done:
            break
        remaining = (deadline - now()).total_seconds()
        if remaining <= 0:
            _cancel(provider, status.action_id)
            doc = status.document(
                state_name=ctx.state_name, creator_id=creator_id, now=now().isoformat()
            )
            fail(ERROR_TIMEOUT, doc)
        try:
            sleep(min(interval, remaining))
        except RunCanceled:
            _cancel(provider, status.action_id)
            raise
        interval = min(interval * 2, poll_max)
        try:
            status = ActionStatus.coerce(provider.status(status.action_id))
        except Exception as exc:  # an unpollable action is a failed action
            status = ActionStatus(
                status=FAILED,
                action_id=status.action_id,
                details={
                    "code": type(exc).__name__,
                    "description": f"status poll failed: {exc}",
                },
            )
    return status


def _cancel(provider: ActionProvider, action_id: str) -> None:
    # best effort: the run outcome is already decided
    with contextlib.suppress(Exception):
        provider.cancel(action_id)
