"""A synchronous interpreter of the Globus Flows definition language.

`Engine(providers).run(definition, flow_input, context=...)` executes one run to completion
and returns a `RunOutcome` shaped like the Flows run document (`status`, `details: {code,
description, output}`) with `get_run_logs`-style entries.

Semantics follow the Globus Flows documentation (Amazon States Language core, no
`OutputPath`):

* The run state starts as the flow input itself (paths are `$.x`); `$._context` is a
  virtual, read-only object (run_id, flow_id, username, ...) that never appears in output.
* Action: `Parameters` (with `.$` JSONPath and `.=` expression keys, recursively) or
  `InputPath` forms the body; the provider for `ActionUrl` runs it; the action status
  document is stored at `ResultPath` (default `$`). `WaitTime` (default 300 s) bounds
  polling; `ExceptionOnActionFailure` (default true) turns a FAILED action into
  `ActionFailedException`. `Catch` matches `ActionUnableToRun`, `ActionFailedException`,
  `ActionTimeout` or `States.ALL`, stores `{"Error", "Cause"}` at its `ResultPath` (default
  `$`: the error replaces the whole state) and goes to its `Next`.
* Pass, Choice (all comparison operators, And/Or/Not, Default), Wait, Fail, ExpressionEval.
* A missing `.$` path, a failing `.=` expression, a missing Choice variable, an unwritable
  ResultPath, no matching Choice rule: the run FAILS with an explanatory code (they are not
  catchable; Globus reports them as `States.Runtime`).
* Definitions are checked before the run starts: an unknown `ActionUrl`, a dangling `Next`,
  a malformed rule or path stops the run before any state executes.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn

from dichroism_control.errors import DefinitionError
from dichroism_control.local.expressions import (
    DEFAULT_LIMITS,
    ExpressionError,
    Limits,
    compile_expression,
    evaluate,
)
from dichroism_control.local.jsonpath import (
    CONTEXT_KEY,
    JsonPathError,
    PathNotFound,
    ResultPathError,
    StateView,
    compile_path,
    json_copy,
    path_exists,
    read_path,
    write_path,
)

__all__ = [
    "ACTIVE",
    "FAILED",
    "INACTIVE",
    "SUCCEEDED",
    "ActionContext",
    "ActionProvider",
    "ActionStatus",
    "ActionUnableToRun",
    "Engine",
    "FlowDefinitionError",
    "FunctionProvider",
    "RunOutcome",
]

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
_ACTION_STATUSES = frozenset({ACTIVE, INACTIVE, SUCCEEDED, FAILED})

ERROR_ALL = "States.ALL"
ERROR_UNABLE = "ActionUnableToRun"
ERROR_FAILED = "ActionFailedException"
ERROR_TIMEOUT = "ActionTimeout"
_CATCHABLE = frozenset({ERROR_ALL, ERROR_UNABLE, ERROR_FAILED, ERROR_TIMEOUT})

STATE_TYPES = frozenset({"Action", "Pass", "Choice", "Wait", "Fail", "ExpressionEval"})
DEFAULT_WAIT_TIME = 300.0

LogEntry = dict[str, Any]
RunStatus = Literal["SUCCEEDED", "FAILED", "ENDED"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# =========================================================================== providers


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


# =========================================================================== outcome


@dataclass
class RunOutcome:
    """The finished run: Flows run-document fields plus the log and transition count."""

    run_id: str
    status: RunStatus
    details: dict[str, Any]
    log: list[LogEntry]
    transitions: int
    start_time: str
    completion_time: str

    @property
    def code(self) -> str:
        return str(self.details["code"])

    @property
    def output(self) -> Any:
        return self.details.get("output")

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def run_fields(self) -> dict[str, Any]:
        """Fields of a Flows run document (`get_run`) this outcome determines."""
        return {
            "run_id": self.run_id,
            "action_id": self.run_id,
            "status": self.status,
            "display_status": self.status,
            "details": self.details,
            "start_time": self.start_time,
            "completion_time": self.completion_time,
        }


class FlowDefinitionError(DefinitionError):
    """The definition cannot run with these providers; `problems` lists every issue."""

    def __init__(self, problems: list[str], unknown_action_urls: list[str] | None = None) -> None:
        self.problems = problems
        self.unknown_action_urls = unknown_action_urls or []
        super().__init__("invalid flow definition: " + "; ".join(problems))


# =========================================================================== internals


class _StateError(Exception):
    """A catchable action exception (ActionUnableToRun / ActionFailedException / ActionTimeout)."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


class _RunFailure(Exception):
    """An uncatchable failure of the run (Globus: States.Runtime and friends)."""

    def __init__(
        self, code: str, description: str, *, error: str | None = None, cause: str | None = None
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.error = error if error is not None else code
        self.cause = cause if cause is not None else description


class _Canceled(Exception):
    pass


_UNSET: Any = object()


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


def _is_number(value: Any) -> bool:
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
    "Numeric": lambda v: v if _is_number(v) else None,
    "Timestamp": parse_timestamp,
}
_COMPARISON_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": lambda a, b: bool(a == b),
    "LessThan": lambda a, b: bool(a < b),
    "GreaterThan": lambda a, b: bool(a > b),
    "LessThanEquals": lambda a, b: bool(a <= b),
    "GreaterThanEquals": lambda a, b: bool(a >= b),
}
_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "IsNull": lambda v: v is None,
    "IsNumeric": _is_number,
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
CHOICE_OPERATORS = frozenset(COMPARISON_OPERATORS) | frozenset(_TYPE_TESTS) | {"IsPresent"}


def _strip_suffix(key: str) -> str:
    return key[:-2] if key.endswith((".$", ".=")) else key


def _redact_private(value: Any) -> Any:
    """Copy of JSON data for logs/output: `_private*` keys are omitted (Globus semantics)."""
    if isinstance(value, dict):
        return {
            k: _redact_private(v)
            for k, v in value.items()
            if not (isinstance(k, str) and k.startswith("_private"))
        }
    if isinstance(value, list):
        return [_redact_private(v) for v in value]
    return value


def _has_private_parameters(template: Any) -> bool:
    if isinstance(template, dict):
        return "__Private_Parameters" in template or any(
            _has_private_parameters(v) for v in template.values()
        )
    if isinstance(template, list):
        return any(_has_private_parameters(v) for v in template)
    return False


def _redact_parameters(template: Any, value: Any) -> Any:
    """Remove parameters named in `__Private_Parameters` (at any nesting level) from `value`."""
    if isinstance(template, dict) and isinstance(value, dict):
        private = template.get("__Private_Parameters") or []
        hidden = {_strip_suffix(str(p)) for p in private} if isinstance(private, list) else set()
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in hidden:
                continue
            sub = next((template[k] for k in (key, f"{key}.$", f"{key}.=") if k in template), None)
            out[key] = _redact_parameters(sub, item)
        return out
    if isinstance(template, list) and isinstance(value, list):
        return [_redact_parameters(t, v) for t, v in zip(template, value, strict=False)] + value[
            len(template) :
        ]
    return value


# =========================================================================== engine


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
    ) -> None:
        self.providers: dict[str, ActionProvider] = dict(providers)
        self._sleep = sleep
        self._now = now
        self.max_transitions = max_transitions
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.default_wait_time = default_wait_time
        self.expression_limits = expression_limits

    # ------------------------------------------------------------------ validation
    def check(self, definition: Mapping[str, Any]) -> None:
        """Raise `FlowDefinitionError` listing every problem (unknown ActionUrls included)."""
        problems, unknown = self._problems(definition)
        if problems:
            raise FlowDefinitionError(problems, unknown)

    def problems(self, definition: Mapping[str, Any]) -> list[str]:
        return self._problems(definition)[0]

    def _problems(self, definition: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        checker = _DefinitionChecker(self.providers, self.expression_limits)
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
    ) -> RunOutcome:
        """Execute one run to completion (SUCCEEDED, FAILED, or ENDED when `cancel` is set)."""
        ctx = dict(context or {})
        ctx.setdefault("run_id", str(uuid.uuid4()))
        for key in ("flow_id", "username", "email", "user_id"):
            ctx.setdefault(key, None)
        ctx.setdefault("identities", [])
        run = _Run(self, definition, json_copy(flow_input), ctx, cancel, on_log)
        return run.execute()

    # ------------------------------------------------------------------ helpers for _Run
    def _timestamp(self) -> str:
        return self._now().isoformat()


class _Run:
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
        self.state = state
        self.context = context
        self.run_id = str(context["run_id"])
        self.cancel = cancel
        self.on_log = on_log
        self.log: list[LogEntry] = []
        self.transitions = 0
        self.start_time = engine._timestamp()
        self._snapshot: Any = _UNSET

    # ------------------------------------------------------------------ plumbing
    @property
    def view(self) -> StateView:
        return StateView(self.state, self.context)

    def emit(self, code: str, description: str, details: dict[str, Any]) -> None:
        entry: LogEntry = {
            "time": self.engine._timestamp(),
            "code": code,
            "description": description,
            "details": details,
        }
        self.log.append(entry)
        if self.on_log is not None:
            self.on_log(entry)

    def state_event(self, name: str, state_type: str, phase: str, **details: Any) -> None:
        self.emit(
            f"{state_type}{phase}",
            f"State {name} of type {state_type} {phase.lower()}",
            {"state_name": name, "state_type": state_type, **details},
        )

    def snapshot(self) -> Any:
        """A redacted copy of the state for logs/output; shared until the state changes
        (log entries are read-only records)."""
        if self._snapshot is _UNSET:
            self._snapshot = _redact_private(self.state)
        return self._snapshot

    def finish(self, status: RunStatus, details: dict[str, Any]) -> RunOutcome:
        return RunOutcome(
            run_id=self.run_id,
            status=status,
            details=details,
            log=self.log,
            transitions=self.transitions,
            start_time=self.start_time,
            completion_time=self.engine._timestamp(),
        )

    def fail(
        self, code: str, description: str, *, state_name: str | None, error: str, cause: str
    ) -> RunOutcome:
        output = self.snapshot()
        details = {
            "code": code,
            "description": description,
            "output": output,
            "state_name": state_name,
            "error": error,
            "cause": cause,
        }
        self.emit(
            "FlowFailed",
            "The Flow run reached a failure state",
            {
                "state_name": state_name,
                "code": code,
                "error": error,
                "cause": cause,
                "output": output,
            },
        )
        return self.finish("FAILED", details)

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.cancel is None:
            self.engine._sleep(seconds)
            return
        remaining = seconds
        while remaining > 0:
            if self.cancel.is_set():
                raise _Canceled()
            chunk = min(remaining, 1.0)
            self.engine._sleep(chunk)
            remaining -= chunk
        if self.cancel.is_set():
            raise _Canceled()

    # ------------------------------------------------------------------ main loop
    def execute(self) -> RunOutcome:
        try:
            self.engine.check(self.definition)
        except FlowDefinitionError as exc:
            code = "UnknownActionUrl" if exc.unknown_action_urls else "InvalidFlowDefinition"
            return self.fail(code, str(exc), state_name=None, error=code, cause=str(exc))
        self.emit("FlowStarted", "The Flow Instance started execution", {"input": self.snapshot()})
        states: Mapping[str, Any] = self.definition["States"]
        current: str = self.definition["StartAt"]
        while True:
            if self.cancel is not None and self.cancel.is_set():
                return self.canceled(current)
            self.transitions += 1
            if self.transitions > self.engine.max_transitions:
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
            except _StateError as exc:
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
            except _RunFailure as exc:
                return self.fail(
                    exc.code,
                    f"State {current}: {exc.description}",
                    state_name=current,
                    error=exc.error,
                    cause=exc.cause,
                )
            except _Canceled:
                return self.canceled(current)
            if nxt is None:
                output = self.snapshot()
                self.emit(
                    "FlowSucceeded", "The Flow Instance completed successfully", {"output": output}
                )
                return self.finish(
                    "SUCCEEDED",
                    {
                        "code": "FlowSucceeded",
                        "description": "The Flow run reached a successful completion state",
                        "output": output,
                    },
                )
            current = nxt

    def canceled(self, state_name: str) -> RunOutcome:
        output = self.snapshot()
        self.emit(
            "FlowCanceled",
            "The Flow Instance was canceled",
            {"state_name": state_name, "output": output},
        )
        return self.finish(
            "ENDED",
            {
                "code": "FlowCanceled",
                "description": f"The run was canceled (at state {state_name})",
                "output": output,
                "state_name": state_name,
            },
        )

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
            raise _RunFailure("InvalidFlowDefinition", f"unknown state type {state_type!r}")
        return None if spec.get("End") is True else str(spec["Next"])

    def catch(self, name: str, spec: Mapping[str, Any], exc: _StateError) -> str | None:
        for catcher in spec.get("Catch") or []:
            errors = catcher.get("ErrorEquals") or []
            if exc.error in errors or ERROR_ALL in errors:
                error_doc = {"Error": exc.error, "Cause": exc.cause}
                self.store(name, catcher.get("ResultPath", "$"), error_doc)
                return str(catcher["Next"])
        return None

    # ------------------------------------------------------------------ data helpers
    def read(self, path: str, *, what: str) -> Any:
        try:
            return read_path(self.view, path)
        except PathNotFound as exc:
            top = sorted(self.state) if isinstance(self.state, dict) else []
            msg = (
                f"the path '{path}' {what} could not be found in the run state "
                f"({exc.missing_at} is absent; top-level keys: {top} plus $._context)"
            )
            raise _RunFailure("ParameterPathError", msg, error="States.Runtime") from None

    def store(self, name: str, result_path: str, value: Any) -> None:
        self._snapshot = _UNSET
        try:
            self.state = write_path(self.state, result_path, value)
        except ResultPathError as exc:
            raise _RunFailure("ResultPathError", str(exc), error="States.Runtime") from None

    def parameters(self, template: Any, name: str) -> Any:
        """Evaluate a Parameters template against the current state."""
        if isinstance(template, dict):
            out: dict[str, Any] = {}
            for key, value in template.items():
                if key == "__Private_Parameters":
                    continue
                if key.endswith(".$"):
                    out[key[:-2]] = json_copy(
                        self.read(value, what=f"specified for the field '{key}'")
                    )
                elif key.endswith(".="):
                    out[key[:-2]] = self.expression(value, key)
                else:
                    out[key] = self.parameters(value, name)
            return out
        if isinstance(template, list):
            return [self.parameters(item, name) for item in template]
        return json_copy(template)

    def expression(self, source: str, key: str) -> Any:
        view = self.view
        try:
            return evaluate(
                source,
                view.as_names(),
                read_path=lambda p: read_path(view, p),
                limits=self.engine.expression_limits,
            )
        except ExpressionError as exc:
            msg = f"the expression for the field '{key}' failed: {exc}"
            raise _RunFailure("ExpressionError", msg, error="States.Runtime") from None

    def body_for(self, name: str, spec: Mapping[str, Any]) -> tuple[Any, Any]:
        """(value passed on, value shown in logs) from Parameters or InputPath."""
        if "Parameters" in spec:
            template = spec["Parameters"]
            body = self.parameters(template, name)
            shown = (
                _redact_parameters(template, body) if _has_private_parameters(template) else body
            )
            return body, _redact_private(shown)
        body = json_copy(self.read(spec.get("InputPath", "$"), what="given as InputPath"))
        return body, _redact_private(body)

    # ------------------------------------------------------------------ states
    def pass_state(self, name: str, spec: Mapping[str, Any]) -> None:
        self.state_event(name, "Pass", "Started", input=self.snapshot())
        effective = self.read(spec.get("InputPath", "$"), what="given as InputPath")
        if "Parameters" in spec:
            saved = self.state
            self.state = effective if isinstance(effective, dict) else saved
            try:
                result = self.parameters(spec["Parameters"], name)
            finally:
                self.state = saved
        elif "Result" in spec:
            result = json_copy(spec["Result"])
        else:
            result = json_copy(effective)
        self.store(name, spec.get("ResultPath", "$"), result)
        self.state_event(name, "Pass", "Completed", output=self.snapshot())

    def expression_eval_state(self, name: str, spec: Mapping[str, Any]) -> None:
        self.state_event(name, "ExpressionEval", "Started", input=self.snapshot())
        template = spec["Parameters"]
        result = self.parameters(template, name)
        self.store(name, spec.get("ResultPath", "$"), result)
        shown = (
            _redact_parameters(template, result) if _has_private_parameters(template) else result
        )
        self.state_event(name, "ExpressionEval", "Completed", output=_redact_private(shown))

    def wait_state(self, name: str, spec: Mapping[str, Any]) -> None:
        self.state_event(name, "Wait", "Started", input=self.snapshot())
        seconds: float
        if "Seconds" in spec or "SecondsPath" in spec:
            raw = (
                spec["Seconds"]
                if "Seconds" in spec
                else self.read(spec["SecondsPath"], what="given as SecondsPath")
            )
            if not _is_number(raw) or raw < 0 or not math.isfinite(raw):
                raise _RunFailure(
                    "WaitParameterError", f"Wait seconds must be a non-negative number, got {raw!r}"
                )
            seconds = float(raw)
        else:
            raw = (
                spec["Timestamp"]
                if "Timestamp" in spec
                else self.read(spec["TimestampPath"], what="given as TimestampPath")
            )
            when = parse_timestamp(raw)
            if when is None:
                raise _RunFailure(
                    "WaitParameterError",
                    f"Wait timestamp must be RFC 3339 with an offset, got {raw!r}",
                )
            seconds = max((when - self.engine._now()).total_seconds(), 0.0)
        self.sleep(seconds)
        self.state_event(name, "Wait", "Completed", output=self.snapshot(), waited_seconds=seconds)

    def fail_state(self, name: str, spec: Mapping[str, Any]) -> RunOutcome:
        try:
            error = (
                spec["Error"]
                if "Error" in spec
                else (
                    self.read(spec["ErrorPath"], what="given as ErrorPath")
                    if "ErrorPath" in spec
                    else "FlowFailed"
                )
            )
            cause = (
                spec["Cause"]
                if "Cause" in spec
                else (
                    self.read(spec["CausePath"], what="given as CausePath")
                    if "CausePath" in spec
                    else ""
                )
            )
        except _RunFailure as exc:
            return self.fail(
                exc.code,
                f"State {name}: {exc.description}",
                state_name=name,
                error=exc.error,
                cause=exc.cause,
            )
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
        self.state_event(name, "Choice", "Started", input=self.snapshot())
        chosen: str | None = None
        for rule in spec["Choices"]:
            if self.rule_matches(rule):
                chosen = str(rule["Next"])
                break
        if chosen is None:
            if "Default" not in spec:
                raise _RunFailure(
                    "States.NoChoiceMatched",
                    "no Choice rule matched and the Choice state has no Default",
                    error="States.NoChoiceMatched",
                )
            chosen = str(spec["Default"])
        self.state_event(name, "Choice", "Completed", output=self.snapshot(), next=chosen)
        return chosen

    def rule_matches(self, rule: Mapping[str, Any]) -> bool:
        if "And" in rule:
            return all(self.rule_matches(r) for r in rule["And"])
        if "Or" in rule:
            return any(self.rule_matches(r) for r in rule["Or"])
        if "Not" in rule:
            return not self.rule_matches(rule["Not"])
        variable = rule["Variable"]
        operator = next(k for k in rule if k in CHOICE_OPERATORS)
        operand = rule[operator]
        if operator == "IsPresent":
            return path_exists(self.view, variable) == bool(operand)
        value = self.choice_read(variable, "Variable")
        if operator in _TYPE_TESTS:
            return _TYPE_TESTS[operator](value) == bool(operand)
        kind, op, operand_is_path = COMPARISON_OPERATORS[operator]
        if operand_is_path:
            operand = self.choice_read(operand, operator)
        if kind == "Boolean":
            return isinstance(value, bool) and isinstance(operand, bool) and value == operand
        convert = _COMPARISON_KINDS[kind]
        left = convert(value)
        if op == "Matches":
            return (
                isinstance(left, str) and _wildcard_regex(str(operand)).fullmatch(left) is not None
            )
        right = convert(operand)
        if left is None or right is None:
            return False
        return _COMPARISON_OPS[op](left, right)

    def choice_read(self, path: str, what: str) -> Any:
        try:
            return read_path(self.view, path)
        except PathNotFound as exc:
            msg = (
                f"the Choice {what} path '{path}' could not be found in the run state "
                f"({exc.missing_at} is absent); guard it with IsPresent"
            )
            raise _RunFailure("ChoicePathError", msg, error="States.Runtime") from None

    # ------------------------------------------------------------------ Action
    def action_state(self, name: str, spec: Mapping[str, Any]) -> None:
        url = str(spec["ActionUrl"])
        provider = self.engine.providers[url]
        body, shown = self.body_for(name, spec)
        self.state_event(name, "Action", "Started", input=shown, action_url=url)
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
        start = self.engine._now()
        deadline = start + timedelta(seconds=wait_time)
        try:
            status = ActionStatus.coerce(provider.run(body, ctx))
        except ActionUnableToRun as exc:
            self.action_error(name, ERROR_UNABLE, exc.document())
        except Exception as exc:  # a provider bug or refusal: the action never started
            self.action_error(
                name, ERROR_UNABLE, {"code": type(exc).__name__, "description": str(exc)}
            )
        interval = self.engine.poll_initial
        while not status.done:
            remaining = (deadline - self.engine._now()).total_seconds()
            if remaining <= 0:
                self.cancel_action(provider, status.action_id)
                doc = status.document(
                    state_name=name, creator_id=creator, now=self.engine._timestamp()
                )
                self.action_error(name, ERROR_TIMEOUT, doc)
            try:
                self.sleep(min(interval, remaining))
            except _Canceled:
                self.cancel_action(provider, status.action_id)
                raise
            interval = min(interval * 2, self.engine.poll_max)
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
        doc = status.document(state_name=name, creator_id=creator, now=self.engine._timestamp())
        if status.status == FAILED and spec.get("ExceptionOnActionFailure", True) is not False:
            self.action_error(name, ERROR_FAILED, doc)
        self.state_event(name, "Action", "Completed", output=_redact_private(doc))
        self.store(name, spec.get("ResultPath", "$"), doc)

    def cancel_action(self, provider: ActionProvider, action_id: str) -> None:
        # best effort: the run outcome is already decided
        with contextlib.suppress(Exception):
            provider.cancel(action_id)

    def action_error(self, name: str, error: str, payload: Any) -> NoReturn:
        cause = json.dumps(payload, default=str, sort_keys=True)
        self.state_event(name, "Action", "Failed", error={"Error": error, "Cause": cause})
        raise _StateError(error, cause)


# =========================================================================== checker


class _DefinitionChecker:
    def __init__(self, providers: Mapping[str, ActionProvider], limits: Limits) -> None:
        self.providers = providers
        self.limits = limits
        self.problems: list[str] = []
        self.unknown_urls: list[str] = []

    def add(self, message: str) -> None:
        self.problems.append(message)

    def check(self, definition: Mapping[str, Any]) -> None:
        if not isinstance(definition, Mapping):
            self.add("the definition must be an object")
            return
        states = definition.get("States")
        if not isinstance(states, Mapping) or not states:
            self.add("'States' must be a non-empty object")
            return
        start = definition.get("StartAt")
        if start not in states:
            self.add(f"StartAt {start!r} is not a state")
        for name, spec in states.items():
            if not isinstance(spec, Mapping):
                self.add(f"state {name}: must be an object")
                continue
            self.check_state(str(name), spec, states)

    def target(self, where: str, nxt: Any, states: Mapping[str, Any]) -> None:
        if not isinstance(nxt, str) or nxt not in states:
            self.add(f"{where}: Next {nxt!r} is not a state")

    def check_state(self, name: str, spec: Mapping[str, Any], states: Mapping[str, Any]) -> None:
        where = f"state {name}"
        state_type = spec.get("Type")
        if state_type not in STATE_TYPES:
            self.add(f"{where}: Type {state_type!r} is not one of {sorted(STATE_TYPES)}")
            return
        if "OutputPath" in spec:
            self.add(f"{where}: OutputPath is not allowed in Globus Flows (use ResultPath)")
        if state_type in ("Choice", "Fail"):
            if "Next" in spec or "End" in spec:
                self.add(f"{where}: a {state_type} state takes no Next/End")
        elif ("Next" in spec) == (spec.get("End") is True):
            self.add(f"{where}: exactly one of Next or End: true is required")
        elif "Next" in spec:
            self.target(where, spec["Next"], states)
        for key in ("InputPath",):
            if key in spec:
                self.path(where, key, spec[key])
        if "ResultPath" in spec:
            self.result_path(where, spec["ResultPath"])
        if "Parameters" in spec:
            self.parameters(f"{where}: Parameters", spec["Parameters"])
        getattr(self, f"check_{str(state_type).lower()}")(where, spec, states)

    def path(self, where: str, key: str, value: Any) -> None:
        try:
            compile_path(value)
        except JsonPathError as exc:
            self.add(f"{where}: {key}: {exc}")

    def result_path(self, where: str, value: Any) -> None:
        try:
            compiled = compile_path(value)
        except JsonPathError as exc:
            self.add(f"{where}: ResultPath: {exc}")
            return
        if compiled.steps is None:
            self.add(f"{where}: ResultPath {value!r} must be a definite path")
        elif compiled.steps and compiled.steps[0] == CONTEXT_KEY:
            self.add(f"{where}: ResultPath {value!r}: $._context is read-only")

    def parameters(self, where: str, template: Any) -> None:
        if isinstance(template, dict):
            for key, value in template.items():
                if key == "__Private_Parameters":
                    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                        self.add(f"{where}: __Private_Parameters must be a list of names")
                elif key.endswith(".$"):
                    self.path(where, key, value)
                elif key.endswith(".="):
                    try:
                        compile_expression(value, self.limits)
                    except ExpressionError as exc:
                        self.add(f"{where}: {key}: {exc}")
                else:
                    self.parameters(where, value)
        elif isinstance(template, list):
            for item in template:
                self.parameters(where, item)

    # --- per type
    def check_action(self, where: str, spec: Mapping[str, Any], states: Mapping[str, Any]) -> None:
        url = spec.get("ActionUrl")
        if not isinstance(url, str) or not url:
            self.add(f"{where}: ActionUrl is required")
        elif url not in self.providers:
            self.unknown_urls.append(url)
            self.add(
                f"{where}: no action provider for ActionUrl {url!r} "
                f"(available: {sorted(self.providers)})"
            )
        if ("Parameters" in spec) == ("InputPath" in spec):
            self.add(f"{where}: exactly one of Parameters or InputPath is required")
        wait = spec.get("WaitTime", 1)
        if not _is_number(wait) or wait <= 0:
            self.add(f"{where}: WaitTime must be a positive number of seconds")
        if not isinstance(spec.get("ExceptionOnActionFailure", True), bool):
            self.add(f"{where}: ExceptionOnActionFailure must be true or false")
        catchers = spec.get("Catch", [])
        if not isinstance(catchers, list):
            self.add(f"{where}: Catch must be a list")
            return
        for i, catcher in enumerate(catchers):
            cw = f"{where}: Catch[{i}]"
            if not isinstance(catcher, Mapping):
                self.add(f"{cw}: must be an object")
                continue
            errors = catcher.get("ErrorEquals")
            if not isinstance(errors, list) or not errors:
                self.add(f"{cw}: ErrorEquals must be a non-empty list")
            else:
                for err in errors:
                    if err not in _CATCHABLE:
                        self.add(f"{cw}: ErrorEquals {err!r} is not one of {sorted(_CATCHABLE)}")
            self.target(cw, catcher.get("Next"), states)
            if "ResultPath" in catcher:
                self.result_path(cw, catcher["ResultPath"])

    def check_pass(self, where: str, spec: Mapping[str, Any], states: Mapping[str, Any]) -> None:
        if "Parameters" in spec and "Result" in spec:
            self.add(f"{where}: use Parameters or Result, not both")

    def check_expressioneval(
        self, where: str, spec: Mapping[str, Any], states: Mapping[str, Any]
    ) -> None:
        if "Parameters" not in spec:
            self.add(f"{where}: Parameters is required")
        if "InputPath" in spec:
            self.add(f"{where}: InputPath is not allowed on ExpressionEval (use Pass)")

    def check_wait(self, where: str, spec: Mapping[str, Any], states: Mapping[str, Any]) -> None:
        given = [k for k in ("Seconds", "SecondsPath", "Timestamp", "TimestampPath") if k in spec]
        if len(given) != 1:
            self.add(f"{where}: exactly one of Seconds, SecondsPath, Timestamp or TimestampPath")
            return
        key = given[0]
        if key == "Seconds" and (not _is_number(spec[key]) or spec[key] < 0):
            self.add(f"{where}: Seconds must be a non-negative number")
        elif key == "Timestamp" and parse_timestamp(spec[key]) is None:
            self.add(f"{where}: Timestamp {spec[key]!r} is not RFC 3339 with an offset")
        elif key.endswith("Path"):
            self.path(where, key, spec[key])

    def check_fail(self, where: str, spec: Mapping[str, Any], states: Mapping[str, Any]) -> None:
        for key in ("ErrorPath", "CausePath"):
            if key in spec:
                self.path(where, key, spec[key])

    def check_choice(self, where: str, spec: Mapping[str, Any], states: Mapping[str, Any]) -> None:
        choices = spec.get("Choices")
        if not isinstance(choices, list) or not choices:
            self.add(f"{where}: Choices must be a non-empty list")
            return
        for i, rule in enumerate(choices):
            rw = f"{where}: Choices[{i}]"
            self.rule(rw, rule, top=True)
            if isinstance(rule, Mapping):
                self.target(rw, rule.get("Next"), states)
        if "Default" in spec:
            self.target(f"{where}: Default", spec["Default"], states)

    def rule(self, where: str, rule: Any, *, top: bool) -> None:
        if not isinstance(rule, Mapping):
            self.add(f"{where}: a rule must be an object")
            return
        if not top and "Next" in rule:
            self.add(f"{where}: nested rules take no Next")
        combinators = [k for k in ("And", "Or", "Not") if k in rule]
        if combinators:
            if len(combinators) > 1 or "Variable" in rule:
                self.add(f"{where}: use one of And/Or/Not without Variable")
                return
            key = combinators[0]
            if key == "Not":
                self.rule(f"{where}.Not", rule["Not"], top=False)
            elif not isinstance(rule[key], list) or not rule[key]:
                self.add(f"{where}: {key} must be a non-empty list of rules")
            else:
                for j, sub in enumerate(rule[key]):
                    self.rule(f"{where}.{key}[{j}]", sub, top=False)
            return
        if "Variable" not in rule:
            self.add(f"{where}: Variable is required")
        else:
            self.path(where, "Variable", rule["Variable"])
        operators = [k for k in rule if k in CHOICE_OPERATORS]
        unknown = [
            k
            for k in rule
            if k not in CHOICE_OPERATORS and k not in ("Variable", "Next", "Comment")
        ]
        if unknown:
            self.add(f"{where}: unknown Choice operator(s) {unknown}")
        if len(operators) != 1:
            self.add(f"{where}: exactly one comparison operator is required, got {operators}")
            return
        op = operators[0]
        operand = rule[op]
        if op == "IsPresent" or op in _TYPE_TESTS:
            if not isinstance(operand, bool):
                self.add(f"{where}: {op} takes true or false")
            return
        kind, _, is_path = COMPARISON_OPERATORS[op]
        if is_path:
            self.path(where, op, operand)
        elif kind == "String" and not isinstance(operand, str):
            self.add(f"{where}: {op} takes a string")
        elif kind == "Numeric" and not _is_number(operand):
            self.add(f"{where}: {op} takes a number")
        elif kind == "Boolean" and not isinstance(operand, bool):
            self.add(f"{where}: {op} takes true or false")
        elif kind == "Timestamp" and parse_timestamp(operand) is None:
            self.add(f"{where}: {op} takes an RFC 3339 timestamp with an offset")


def iter_action_urls(definition: Mapping[str, Any]) -> Iterator[str]:
    """Every ActionUrl a definition uses (e.g. to decide which providers a backend needs)."""
    states = definition.get("States")
    if isinstance(states, Mapping):
        for spec in states.values():
            if (
                isinstance(spec, Mapping)
                and spec.get("Type") == "Action"
                and isinstance(spec.get("ActionUrl"), str)
            ):
                yield spec["ActionUrl"]
