"""`Engine` and one run of it: the run loop (transitions, Catch, cancel, outcome) and what
each state type does. Action calls are in `polling.py`, Choice rules in `choice.py`, the
run state in `run_data.py`, the checks that precede a run in `checker.py`."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn

from dichroism_control.local.engine.actions import (
    FAILED,
    ActionContext,
    ActionProvider,
    ActionStatus,
)
from dichroism_control.local.engine.checker import DefinitionChecker, FlowDefinitionError
from dichroism_control.local.engine.choice import is_number, parse_timestamp, rule_matches
from dichroism_control.local.engine.failures import (
    ERROR_ALL,
    ERROR_FAILED,
    RunCanceled,
    RunFailure,
    StateError,
)
from dichroism_control.local.engine.outcome import LogEntry, RunOutcome, RunRecord
from dichroism_control.local.engine.polling import call_action
from dichroism_control.local.engine.redaction import redact_private, shown_parameters
from dichroism_control.local.engine.run_data import RunData
from dichroism_control.local.expressions import DEFAULT_LIMITS, Limits
from dichroism_control.local.jsonpath import json_copy
from dichroism_control.local.service_rules.flows import (
    ACTIVE,
    INACTIVE,
    RUN_STATE_MAX_BYTES,
    inactive_details,
)

# (status, details): a run going INACTIVE because an action waits on something (a consent),
# or back to ACTIVE when the action goes on.
StatusCallback = Callable[[str, dict[str, Any]], None]

DEFAULT_WAIT_TIME = 300.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Engine:
    """Interprets flow definitions with pluggable action providers keyed by ActionUrl.

    Thread-safe: each `run` keeps its state in its own `_Run`; providers must be safe to
    call from several threads if the engine is shared.
    """

    def __init__(
        self,
        providers: Mapping[str, ActionProvider],
        *,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = _utcnow,
        max_transitions: int = 10_000,
        poll_initial: float = 1.0,
        poll_max: float = 600.0,
        default_wait_time: float = DEFAULT_WAIT_TIME,
        expression_limits: Limits = DEFAULT_LIMITS,
        max_state_bytes: int | None = RUN_STATE_MAX_BYTES,
    ) -> None:
        self.providers: dict[str, ActionProvider] = dict(providers)
        self._sleep = sleep
        self._now = now
        self.max_transitions = max_transitions
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.default_wait_time = default_wait_time
        self.expression_limits = expression_limits
        self.max_state_bytes = max_state_bytes

    # ------------------------------------------------------------------ validation
    def check(self, definition: Mapping[str, Any]) -> None:
        """Raise `FlowDefinitionError` listing every problem (unknown ActionUrls included)."""
        problems, unknown = self._problems(definition)
        if problems:
            raise FlowDefinitionError(problems, unknown)

    def problems(self, definition: Mapping[str, Any]) -> list[str]:
        return self._problems(definition)[0]

    def _problems(self, definition: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        checker = DefinitionChecker(self.providers, self.expression_limits)
        checker.check(definition)
        return checker.problems, checker.unknown_urls

    # ------------------------------------------------------------------ run
    def run(
        self,
        definition: Mapping[str, Any],
        flow_input: Any,
        *,
        context: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        on_log: Callable[[LogEntry], None] | None = None,
        on_status: StatusCallback | None = None,
    ) -> RunOutcome:
        """Execute one run to completion: SUCCEEDED or FAILED (FAILED with code FlowCanceled
        when `cancel` is set). `on_status` hears of the run going INACTIVE and back."""
        ctx = dict(context or {})
        ctx.setdefault("run_id", str(uuid.uuid4()))
        for key in ("flow_id", "username", "email", "user_id"):
            ctx.setdefault(key, None)
        ctx.setdefault("identities", [])
        run = _Run(self, definition, json_copy(flow_input), ctx, cancel, on_log)
        run.on_status = on_status
        return run.execute()

    # ------------------------------------------------------------------ helpers for _Run
    def _timestamp(self) -> str:
        return self._now().isoformat()


class _Run:
    """One run: its data (`RunData`), its log (`RunRecord`) and the loop over its states."""

    def __init__(
        self,
        engine: Engine,
        definition: Mapping[str, Any],
        state: Any,
        context: dict[str, Any],
        cancel: threading.Event | None,
        on_log: Callable[[LogEntry], None] | None,
    ) -> None:
        self.engine = engine
        self.definition = definition
        self.data = RunData(state, context, engine.expression_limits)
        self.context = context
        self.run_id = str(context["run_id"])
        self.cancel = cancel
        self.record = RunRecord(self.run_id, engine._timestamp, on_log)
        self.on_status: StatusCallback | None = None

    # ------------------------------------------------------------------ plumbing
    def fail(
        self, code: str, description: str, *, state_name: str | None, error: str, cause: str
    ) -> RunOutcome:
        return self.record.failed(
            code,
            description,
            state_name=state_name,
            error=error,
            cause=cause,
            output=self.data.snapshot(),
        )

    def state_too_large(self, name: str | None) -> RunOutcome | None:
        """The failed outcome when the run state is over the Flows cap (None while it fits)."""
        return self.record.over_state_cap(self.data.state, self.engine.max_state_bytes, name)

    def action_inactive(self, status: ActionStatus | None) -> None:
        """The run is INACTIVE while an action it waits on is (a missing consent), and
        ACTIVE again when that action goes on."""
        if self.on_status is None:
            return
        if status is None:
            self.on_status(ACTIVE, {"code": "ActionResumed", "description": "The action resumed"})
            return
        details = status.details if isinstance(status.details, dict) else {}
        code = str(details.get("code") or "ActionInactive")
        description = str(details.get("description") or f"an action is INACTIVE ({code})")
        self.on_status(INACTIVE, inactive_details(code, description))

    def failed_at(self, name: str, exc: RunFailure) -> RunOutcome:
        return self.fail(
            exc.code,
            f"State {name}: {exc.description}",
            state_name=name,
            error=exc.error,
            cause=exc.cause,
        )

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.cancel is None:
            self.engine._sleep(seconds)
            return
        remaining = seconds
        while remaining > 0:
            if self.cancel.is_set():
                raise RunCanceled()
            chunk = min(remaining, 1.0)
            self.engine._sleep(chunk)
            remaining -= chunk
        if self.cancel.is_set():
            raise RunCanceled()

    # ------------------------------------------------------------------ main loop
    def execute(self) -> RunOutcome:
        try:
            self.engine.check(self.definition)
        except FlowDefinitionError as exc:
            code = "UnknownActionUrl" if exc.unknown_action_urls else "InvalidFlowDefinition"
            return self.fail(code, str(exc), state_name=None, error=code, cause=str(exc))
        self.record.emit(
            "FlowStarted", "The Flow Instance started execution", {"input": self.data.snapshot()}
        )
        too_large = self.state_too_large(None)
        if too_large is not None:
            return too_large
        states: Mapping[str, Any] = self.definition["States"]
        current: str = self.definition["StartAt"]
        while True:
            if self.cancel is not None and self.cancel.is_set():
                return self.record.canceled(current, self.data.snapshot())
            self.record.transitions += 1
            if self.record.transitions > self.engine.max_transitions:
                msg = (
                    f"the run exceeded {self.engine.max_transitions} state transitions "
                    f"(at state {current}); is there an infinite loop?"
                )
                return self.fail(
                    "MaxTransitionsExceeded",
                    msg,
                    state_name=current,
                    error="MaxTransitionsExceeded",
                    cause=msg,
                )
            spec: Mapping[str, Any] = states[current]
            state_type = str(spec["Type"])
            try:
                if state_type == "Fail":
                    return self.fail_state(current, spec)
                nxt = self.dispatch(current, state_type, spec)
            except StateError as exc:
                caught = self.catch(current, spec, exc)
                if caught is None:
                    return self.fail(
                        exc.error,
                        f"State {current}: {exc.error} and no Catch matched",
                        state_name=current,
                        error=exc.error,
                        cause=exc.cause,
                    )
                nxt = caught
            except RunFailure as exc:
                return self.failed_at(current, exc)
            except RunCanceled:
                return self.record.canceled(current, self.data.snapshot())
            too_large = self.state_too_large(current)
            if too_large is not None:
                return too_large
            if nxt is None:
                return self.record.succeeded(self.data.snapshot())
            current = nxt

    def dispatch(self, name: str, state_type: str, spec: Mapping[str, Any]) -> str | None:
        if state_type == "Action":
            self.action_state(name, spec)
        elif state_type == "Pass":
            self.pass_state(name, spec)
        elif state_type == "ExpressionEval":
            self.expression_eval_state(name, spec)
        elif state_type == "Wait":
            self.wait_state(name, spec)
        elif state_type == "Choice":
            return self.choice_state(name, spec)
        else:  # pragma: no cover - check() rejects unknown types
            raise RunFailure("InvalidFlowDefinition", f"unknown state type {state_type!r}")
        return None if spec.get("End") is True else str(spec["Next"])

    def catch(self, name: str, spec: Mapping[str, Any], exc: StateError) -> str | None:
        for catcher in spec.get("Catch") or []:
            errors = catcher.get("ErrorEquals") or []
            if exc.error in errors or ERROR_ALL in errors:
                error_doc = {"Error": exc.error, "Cause": exc.cause}
                self.data.store(name, catcher.get("ResultPath", "$"), error_doc)
                return str(catcher["Next"])
        return None

    # ------------------------------------------------------------------ states
    def pass_state(self, name: str, spec: Mapping[str, Any]) -> None:
        data = self.data
        self.record.state_event(name, "Pass", "Started", input=data.snapshot())
        effective = data.read(spec.get("InputPath", "$"), what="given as InputPath")
        if "Parameters" in spec:
            saved = data.state
            data.state = effective if isinstance(effective, dict) else saved
            try:
                result = data.parameters(spec["Parameters"], name)
            finally:
                data.state = saved
        elif "Result" in spec:
            result = json_copy(spec["Result"])
        else:
            result = json_copy(effective)
        data.store(name, spec.get("ResultPath", "$"), result)
        self.record.state_event(name, "Pass", "Completed", output=data.snapshot())

    def expression_eval_state(self, name: str, spec: Mapping[str, Any]) -> None:
        self.record.state_event(name, "ExpressionEval", "Started", input=self.data.snapshot())
        template = spec["Parameters"]
        result = self.data.parameters(template, name)
        self.data.store(name, spec.get("ResultPath", "$"), result)
        shown = shown_parameters(template, result)
        self.record.state_event(name, "ExpressionEval", "Completed", output=shown)

    def wait_state(self, name: str, spec: Mapping[str, Any]) -> None:
        self.record.state_event(name, "Wait", "Started", input=self.data.snapshot())
        seconds: float
        if "Seconds" in spec or "SecondsPath" in spec:
            raw = self.data.given(spec, "Seconds")
            if not is_number(raw) or raw < 0 or not math.isfinite(raw):
                raise RunFailure(
                    "WaitParameterError", f"Wait seconds must be a non-negative number, got {raw!r}"
                )
            seconds = float(raw)
        else:
            raw = self.data.given(spec, "Timestamp")
            when = parse_timestamp(raw)
            if when is None:
                raise RunFailure(
                    "WaitParameterError",
                    f"Wait timestamp must be RFC 3339 with an offset, got {raw!r}",
                )
            seconds = max((when - self.engine._now()).total_seconds(), 0.0)
        self.sleep(seconds)
        self.record.state_event(
            name, "Wait", "Completed", output=self.data.snapshot(), waited_seconds=seconds
        )

    def fail_state(self, name: str, spec: Mapping[str, Any]) -> RunOutcome:
        try:
            error = self.data.given(spec, "Error", default="FlowFailed")
            cause = self.data.given(spec, "Cause", default="")
        except RunFailure as exc:
            return self.failed_at(name, exc)
        error_s = error if isinstance(error, str) else json.dumps(error)
        cause_s = cause if isinstance(cause, str) else json.dumps(cause)
        return self.fail(
            "FlowFailed",
            f"Fail state {name}: {error_s}: {cause_s}",
            state_name=name,
            error=error_s,
            cause=cause_s,
        )

    def choice_state(self, name: str, spec: Mapping[str, Any]) -> str:
        self.record.state_event(name, "Choice", "Started", input=self.data.snapshot())
        chosen: str | None = None
        for rule in spec["Choices"]:
            if rule_matches(rule, self.data.view):
                chosen = str(rule["Next"])
                break
        if chosen is None:
            if "Default" not in spec:
                raise RunFailure(
                    "States.NoChoiceMatched",
                    "no Choice rule matched and the Choice state has no Default",
                    error="States.NoChoiceMatched",
                )
            chosen = str(spec["Default"])
        self.record.state_event(
            name, "Choice", "Completed", output=self.data.snapshot(), next=chosen
        )
        return chosen

    def action_state(self, name: str, spec: Mapping[str, Any]) -> None:
        url = str(spec["ActionUrl"])
        provider: ActionProvider = self.engine.providers[url]
        body, shown = self.data.body_for(name, spec)
        self.record.state_event(name, "Action", "Started", input=shown, action_url=url)
        wait_time = float(spec.get("WaitTime", self.engine.default_wait_time))
        ctx = ActionContext(
            run_id=self.run_id,
            flow_id=self.context.get("flow_id"),
            state_name=name,
            action_url=url,
            wait_time=wait_time,
            run_as=str(spec.get("RunAs", "User")),
            context=self.context,
            cancel=self.cancel,
        )
        creator = self.context.get("user_id")
        status = call_action(
            provider,
            body,
            ctx,
            creator_id=creator,
            now=self.engine._now,
            sleep=self.sleep,
            poll_initial=self.engine.poll_initial,
            poll_max=self.engine.poll_max,
            fail=partial(self.action_error, name),
            on_inactive=self.action_inactive,
        )
        doc = status.document(state_name=name, creator_id=creator, now=self.engine._timestamp())
        if status.status == FAILED and spec.get("ExceptionOnActionFailure", True) is not False:
            self.action_error(name, ERROR_FAILED, doc)
        self.record.state_event(name, "Action", "Completed", output=redact_private(doc))
        self.data.store(name, spec.get("ResultPath", "$"), doc)

    def action_error(self, name: str, error: str, payload: Any) -> NoReturn:
        cause = json.dumps(payload, default=str, sort_keys=True)
        self.record.state_event(name, "Action", "Failed", error={"Error": error, "Cause": cause})
        raise StateError(error, cause)
