"""Checking a definition before a run starts: an unknown `ActionUrl`, a dangling `Next`, a
malformed rule or path stops the run before any state executes (`FlowDefinitionError`
lists every problem at once)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from dichroism_control.errors import DefinitionError
from dichroism_control.local.engine.actions import ActionProvider
from dichroism_control.local.engine.choice import (
    CHOICE_OPERATORS,
    COMPARISON_OPERATORS,
    TYPE_TESTS,
    is_number,
    parse_timestamp,
)
from dichroism_control.local.engine.failures import CATCHABLE
from dichroism_control.local.expressions import ExpressionError, Limits, compile_expression
from dichroism_control.local.jsonpath import CONTEXT_KEY, JsonPathError, compile_path

STATE_TYPES = frozenset({"Action", "Pass", "Choice", "Wait", "Fail", "ExpressionEval"})


class FlowDefinitionError(DefinitionError):
    """The definition cannot run with these providers; `problems` lists every issue."""

    def __init__(self, problems: list[str], unknown_action_urls: list[str] | None = None) -> None:
        self.problems = problems
        self.unknown_action_urls = unknown_action_urls or []
        super().__init__("invalid flow definition: " + "; ".join(problems))


class DefinitionChecker:
    """Collects every problem of a definition (`problems`) and its unknown ActionUrls."""

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
        if not is_number(wait) or wait <= 0:
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
                    if err not in CATCHABLE:
                        self.add(f"{cw}: ErrorEquals {err!r} is not one of {sorted(CATCHABLE)}")
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
        if key == "Seconds" and (not is_number(spec[key]) or spec[key] < 0):
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
        if op == "IsPresent" or op in TYPE_TESTS:
            if not isinstance(operand, bool):
                self.add(f"{where}: {op} takes true or false")
            return
        kind, _, is_path = COMPARISON_OPERATORS[op]
        if is_path:
            self.path(where, op, operand)
        elif kind == "String" and not isinstance(operand, str):
            self.add(f"{where}: {op} takes a string")
        elif kind == "Numeric" and not is_number(operand):
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
