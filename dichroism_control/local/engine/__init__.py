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

Modules: `interpreter` (`Engine`, the run loop and the state types), `actions` (the action
provider protocol), `polling` (starting and polling an action), `run_data` (paths,
expressions and ResultPath over the run state), `choice` (Choice rules), `checker` (the
checks before a run), `outcome` (log and `RunOutcome`), `failures`, `redaction`.
"""

from __future__ import annotations

from dichroism_control.local.engine.actions import (
    ACTIVE,
    FAILED,
    INACTIVE,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
    FunctionProvider,
)
from dichroism_control.local.engine.checker import FlowDefinitionError
from dichroism_control.local.engine.interpreter import Engine
from dichroism_control.local.engine.outcome import LogEntry, RunOutcome

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
    "LogEntry",
    "RunOutcome",
]
