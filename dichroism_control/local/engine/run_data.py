"""The data of one run: the run state (the flow input, then every result written into it)
beside the read-only `$._context`, and how states read it (`.$` paths), evaluate against it
(`.=` expressions, Parameters templates) and write into it (ResultPath)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dichroism_control.local.engine.failures import RunFailure
from dichroism_control.local.engine.redaction import redact_private, shown_parameters
from dichroism_control.local.expressions import ExpressionError, Limits, evaluate
from dichroism_control.local.jsonpath import (
    PathNotFound,
    ResultPathError,
    StateView,
    json_copy,
    read_path,
    write_path,
)

_UNSET: Any = object()


class RunData:
    """The run state and context of one run; paths, expressions and templates over them."""

    def __init__(self, state: Any, context: dict[str, Any], limits: Limits) -> None:
        self.state = state
        self.context = context
        self.limits = limits
        self._snapshot: Any = _UNSET

    @property
    def view(self) -> StateView:
        return StateView(self.state, self.context)

    def snapshot(self) -> Any:
        """A redacted copy of the state for logs/output; shared until the state changes
        (log entries are read-only records)."""
        if self._snapshot is _UNSET:
            self._snapshot = redact_private(self.state)
        return self._snapshot

    def read(self, path: str, *, what: str) -> Any:
        try:
            return read_path(self.view, path)
        except PathNotFound as exc:
            top = sorted(self.state) if isinstance(self.state, dict) else []
            msg = (
                f"the path '{path}' {what} could not be found in the run state "
                f"({exc.missing_at} is absent; top-level keys: {top} plus $._context)"
            )
            raise RunFailure("ParameterPathError", msg, error="States.Runtime") from None

    def given(self, spec: Mapping[str, Any], key: str, default: Any = _UNSET) -> Any:
        """`spec[key]`, else the value at the path `spec[key + "Path"]`, else `default`
        (Wait's Seconds/SecondsPath, Fail's Error/ErrorPath, ...)."""
        if key in spec:
            return spec[key]
        path_key = f"{key}Path"
        if path_key in spec or default is _UNSET:
            return self.read(spec[path_key], what=f"given as {path_key}")
        return default

    def store(self, name: str, result_path: str, value: Any) -> None:
        self._snapshot = _UNSET
        try:
            self.state = write_path(self.state, result_path, value)
        except ResultPathError as exc:
            raise RunFailure("ResultPathError", str(exc), error="States.Runtime") from None

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
                limits=self.limits,
            )
        except ExpressionError as exc:
            msg = f"the expression for the field '{key}' failed: {exc}"
            raise RunFailure("ExpressionError", msg, error="States.Runtime") from None

    def body_for(self, name: str, spec: Mapping[str, Any]) -> tuple[Any, Any]:
        """(value passed on, value shown in logs) from Parameters or InputPath."""
        if "Parameters" in spec:
            template = spec["Parameters"]
            body = self.parameters(template, name)
            return body, shown_parameters(template, body)
        body = json_copy(self.read(spec.get("InputPath", "$"), what="given as InputPath"))
        return body, redact_private(body)
