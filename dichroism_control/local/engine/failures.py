"""How a state or a run fails.

A failed action raises one of the catchable errors (`StateError`, matched by an Action
state's `Catch`); a broken path, expression or rule is a `RunFailure` that ends the run
(Globus reports those as `States.Runtime`); `RunCanceled` unwinds a run whose cancel event
was set.
"""

from __future__ import annotations

ERROR_ALL = "States.ALL"
ERROR_UNABLE = "ActionUnableToRun"
ERROR_FAILED = "ActionFailedException"
ERROR_TIMEOUT = "ActionTimeout"
CATCHABLE = frozenset({ERROR_ALL, ERROR_UNABLE, ERROR_FAILED, ERROR_TIMEOUT})


class StateError(Exception):
    """A catchable action exception (ActionUnableToRun / ActionFailedException / ActionTimeout)."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


class RunFailure(Exception):
    """An uncatchable failure of the run (Globus: States.Runtime and friends)."""

    def __init__(
        self, code: str, description: str, *, error: str | None = None, cause: str | None = None
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.error = error if error is not None else code
        self.cause = cause if cause is not None else description


class RunCanceled(Exception):
    pass
