"""Engine: every state type, every Choice operator, Catch/timeouts, logs and guards."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from dichroism_control.local.engine import (
    ActionContext,
    ActionStatus,
    Engine,
    FlowDefinitionError,
    FunctionProvider,
)
from dichroism_control.local.engine.choice import COMPARISON_OPERATORS
from dichroism_control.local.providers import HELLO_WORLD_URL, HelloWorldProvider

from .conftest import URL, FakeClock, ScriptedProvider

MakeEngine = Callable[..., Engine]


def flow(*states: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"StartAt": states[0][0], "States": dict(states)}


def action(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"Type": "Action", "ActionUrl": URL, "Parameters": {"x.$": "$.x"}}
    spec.update(extra)
    if "Next" not in spec:
        spec.setdefault("End", True)
    return spec


def codes(outcome: Any) -> list[str]:
    return [entry["code"] for entry in outcome.log]


# --------------------------------------------------------------------------- Pass


def test_pass_result_and_result_path(make_engine: MakeEngine) -> None:
    d = flow(("P", {"Type": "Pass", "Result": {"k": [1]}, "ResultPath": "$.out.r", "End": True}))
    outcome = make_engine().run(d, {"x": 1})
    assert outcome.status == "SUCCEEDED"
    assert outcome.output == {"x": 1, "out": {"r": {"k": [1]}}}
    assert codes(outcome) == ["FlowStarted", "PassStarted", "PassCompleted", "FlowSucceeded"]
    assert outcome.log[1]["details"] == {"state_name": "P", "state_type": "Pass", "input": {"x": 1}}
    assert outcome.transitions == 1


def test_pass_parameters_input_path_and_default_result_path(make_engine: MakeEngine) -> None:
    d = flow(
        (
            "P",
            {
                "Type": "Pass",
                "InputPath": "$.inner",
                "Parameters": {"v.$": "$.v", "twice.=": "v * 2", "const": [1, {"c.$": "$.v"}]},
                "End": True,
            },
        )
    )
    outcome = make_engine().run(d, {"inner": {"v": 3}, "other": 0})
    assert outcome.output == {"v": 3, "twice": 6, "const": [1, {"c": 3}]}


def test_pass_without_anything_copies_input(make_engine: MakeEngine) -> None:
    d = flow(("P", {"Type": "Pass", "InputPath": "$.a", "ResultPath": "$.b", "End": True}))
    outcome = make_engine().run(d, {"a": {"n": 1}})
    assert outcome.output == {"a": {"n": 1}, "b": {"n": 1}}


def test_values_are_copied_not_aliased(make_engine: MakeEngine) -> None:
    d = flow(
        (
            "Copy",
            {"Type": "Pass", "Parameters": {"v.$": "$.a"}, "ResultPath": "$.b", "Next": "Mutate"},
        ),
        ("Mutate", {"Type": "Pass", "Result": 2, "ResultPath": "$.b.v.n", "End": True}),
    )
    outcome = make_engine().run(d, {"a": {"n": 1}})
    assert outcome.output == {"a": {"n": 1}, "b": {"v": {"n": 2}}}


# --------------------------------------------------------------------------- ExpressionEval


def test_expression_eval(make_engine: MakeEngine) -> None:
    d = flow(
        (
            "E",
            {
                "Type": "ExpressionEval",
                "Parameters": {
                    "dir.=": "pathsplit(path)[0]",
                    "names.=": "[f.name.upper() for f in files if f.size > 1]",
                    "run.=": "_context.run_id",
                    "fixed": "c",
                },
                "ResultPath": "$.computed",
                "End": True,
            },
        )
    )
    data = {"path": "/a/b/c.h5", "files": [{"name": "x", "size": 2}, {"name": "y", "size": 1}]}
    outcome = make_engine().run(d, data, context={"run_id": "R1"})
    assert outcome.output["computed"] == {"dir": "/a/b", "names": ["X"], "run": "R1", "fixed": "c"}
    assert codes(outcome)[1:3] == ["ExpressionEvalStarted", "ExpressionEvalCompleted"]


def test_failing_expression_fails_the_run(make_engine: MakeEngine) -> None:
    d = flow(("E", {"Type": "ExpressionEval", "Parameters": {"v.=": "missing + 1"}, "End": True}))
    outcome = make_engine().run(d, {"present": 1})
    assert outcome.status == "FAILED"
    assert outcome.code == "ExpressionError"
    assert "v.=" in outcome.details["description"] and "missing" in outcome.details["description"]


# --------------------------------------------------------------------------- Choice

CHOICE_CASES: list[tuple[str, Any, Any, bool]] = [
    # operator, variable value, operand, expected
    ("StringEquals", "abc", "abc", True),
    ("StringEquals", "abc", "abd", False),
    ("StringEquals", 1, "1", False),
    ("StringLessThan", "abc", "abd", True),
    ("StringLessThan", "abd", "abc", False),
    ("StringGreaterThan", "b", "a", True),
    ("StringGreaterThan", "a", "b", False),
    ("StringLessThanEquals", "a", "a", True),
    ("StringLessThanEquals", "b", "a", False),
    ("StringGreaterThanEquals", "a", "a", True),
    ("StringGreaterThanEquals", "a", "b", False),
    ("NumericEquals", 3, 3.0, True),
    ("NumericEquals", 3, 4, False),
    ("NumericEquals", "3", 3, False),
    ("NumericEquals", True, 1, False),
    ("NumericLessThan", 1, 2, True),
    ("NumericLessThan", 2, 1, False),
    ("NumericGreaterThan", 2.5, 2, True),
    ("NumericGreaterThan", 2, 2, False),
    ("NumericLessThanEquals", 2, 2, True),
    ("NumericLessThanEquals", 3, 2, False),
    ("NumericGreaterThanEquals", 2, 2, True),
    ("NumericGreaterThanEquals", 1, 2, False),
    ("TimestampEquals", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00", True),
    ("TimestampEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", False),
    ("TimestampEquals", "not a time", "2026-01-01T00:00:00Z", False),
    ("TimestampLessThan", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", True),
    ("TimestampLessThan", "2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z", False),
    ("TimestampGreaterThan", "2026-01-03T00:00:00.5Z", "2026-01-03T00:00:00Z", True),
    ("TimestampGreaterThan", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", False),
    ("TimestampLessThanEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", True),
    ("TimestampLessThanEquals", "2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", False),
    ("TimestampGreaterThanEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", True),
    ("TimestampGreaterThanEquals", "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z", False),
    ("BooleanEquals", True, True, True),
    ("BooleanEquals", False, True, False),
    ("BooleanEquals", 1, True, False),
    ("StringMatches", "scan_001.h5", "scan_*.h5", True),
    ("StringMatches", "scan_001.h5x", "scan_*.h5", False),
    ("StringMatches", "a*b", "a\\*b", True),
    ("StringMatches", "axb", "a\\*b", False),
    ("StringMatches", "a\\b", "a\\\\b", True),
    ("StringMatches", "multi\nline", "multi*", True),
    ("StringMatches", 5, "*", False),
    ("IsNull", None, True, True),
    ("IsNull", 0, True, False),
    ("IsNull", 0, False, True),
    ("IsNumeric", 1.5, True, True),
    ("IsNumeric", True, True, False),
    ("IsString", "s", True, True),
    ("IsString", 1, True, False),
    ("IsBoolean", False, True, True),
    ("IsBoolean", "false", True, False),
    ("IsTimestamp", "2026-11-25T12:00:00Z", True, True),
    ("IsTimestamp", "2026-11-25 12:00", True, False),
    ("IsTimestamp", "2026-11-25T12:00:00", True, False),
    ("IsPresent", 1, True, True),
    ("IsPresent", 1, False, False),
]


def choice_flow(rule: dict[str, Any]) -> dict[str, Any]:
    return flow(
        ("C", {"Type": "Choice", "Choices": [{**rule, "Next": "Yes"}], "Default": "No"}),
        ("Yes", {"Type": "Pass", "Result": "yes", "ResultPath": "$.r", "End": True}),
        ("No", {"Type": "Pass", "Result": "no", "ResultPath": "$.r", "End": True}),
    )


@pytest.mark.parametrize(("operator", "value", "operand", "expected"), CHOICE_CASES)
def test_choice_operator(
    make_engine: MakeEngine, operator: str, value: Any, operand: Any, expected: bool
) -> None:
    outcome = make_engine().run(choice_flow({"Variable": "$.v", operator: operand}), {"v": value})
    assert outcome.status == "SUCCEEDED", outcome.details
    assert outcome.output["r"] == ("yes" if expected else "no")


@pytest.mark.parametrize(
    ("operator", "value", "operand", "expected"),
    [case for case in CHOICE_CASES if f"{case[0]}Path" in COMPARISON_OPERATORS],
)
def test_choice_path_operator(
    make_engine: MakeEngine, operator: str, value: Any, operand: Any, expected: bool
) -> None:
    rule = {"Variable": "$.v", f"{operator}Path": "$.other.value"}
    outcome = make_engine().run(choice_flow(rule), {"v": value, "other": {"value": operand}})
    assert outcome.output["r"] == ("yes" if expected else "no")


def test_every_comparison_operator_is_exercised() -> None:
    plain = {case[0] for case in CHOICE_CASES}
    with_path = {f"{op}Path" for op in plain if f"{op}Path" in COMPARISON_OPERATORS}
    assert set(COMPARISON_OPERATORS) <= plain | with_path
    assert {"IsNull", "IsPresent", "IsNumeric", "IsString", "IsBoolean", "IsTimestamp"} <= plain


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {
                "And": [
                    {"Variable": "$.a", "NumericEquals": 1},
                    {"Variable": "$.b", "StringEquals": "x"},
                ]
            },
            True,
        ),
        (
            {
                "And": [
                    {"Variable": "$.a", "NumericEquals": 1},
                    {"Variable": "$.b", "StringEquals": "y"},
                ]
            },
            False,
        ),
        (
            {
                "Or": [
                    {"Variable": "$.a", "NumericEquals": 2},
                    {"Variable": "$.b", "StringEquals": "x"},
                ]
            },
            True,
        ),
        (
            {
                "Or": [
                    {"Variable": "$.a", "NumericEquals": 2},
                    {"Variable": "$.b", "StringEquals": "y"},
                ]
            },
            False,
        ),
        ({"Not": {"Variable": "$.a", "NumericEquals": 2}}, True),
        ({"Not": {"Variable": "$.a", "NumericEquals": 1}}, False),
        (
            {
                "And": [
                    {"Variable": "$.zz", "IsPresent": True},
                    {"Variable": "$.zz", "NumericEquals": 1},
                ]
            },
            False,
        ),  # short-circuit: the guarded comparison never reads the missing path
        (
            {
                "Not": {
                    "Or": [
                        {"Variable": "$.a", "IsNull": True},
                        {"Variable": "$.b", "IsNumeric": True},
                    ]
                }
            },
            True,
        ),
    ],
)
def test_choice_combinators(make_engine: MakeEngine, rule: dict[str, Any], expected: bool) -> None:
    outcome = make_engine().run(choice_flow(rule), {"a": 1, "b": "x"})
    assert outcome.output["r"] == ("yes" if expected else "no")


def test_choice_first_matching_rule_wins_and_logs_next(make_engine: MakeEngine) -> None:
    d = flow(
        (
            "C",
            {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.n", "NumericGreaterThan": 10, "Next": "Big"},
                    {"Variable": "$.n", "NumericGreaterThan": 0, "Next": "Small"},
                ],
            },
        ),
        ("Big", {"Type": "Pass", "Result": "big", "ResultPath": "$.r", "End": True}),
        ("Small", {"Type": "Pass", "Result": "small", "ResultPath": "$.r", "End": True}),
    )
    outcome = make_engine().run(d, {"n": 5})
    assert outcome.output["r"] == "small"
    completed = next(e for e in outcome.log if e["code"] == "ChoiceCompleted")
    assert completed["details"]["next"] == "Small"


def test_choice_without_match_or_default_fails(make_engine: MakeEngine) -> None:
    d = flow(
        (
            "C",
            {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericEquals": 1, "Next": "X"}]},
        ),
        ("X", {"Type": "Pass", "End": True}),
    )
    outcome = make_engine().run(d, {"n": 2})
    assert outcome.status == "FAILED"
    assert outcome.code == "States.NoChoiceMatched"
    assert outcome.details["state_name"] == "C"


def test_choice_on_missing_variable_fails_with_path(make_engine: MakeEngine) -> None:
    outcome = make_engine().run(choice_flow({"Variable": "$.gone", "NumericEquals": 1}), {})
    assert outcome.status == "FAILED"
    assert outcome.code == "ChoicePathError"
    assert "$.gone" in outcome.details["description"]


# --------------------------------------------------------------------------- Wait


@pytest.mark.parametrize(
    ("spec", "data", "expected"),
    [
        ({"Seconds": 30}, {}, 30.0),
        ({"SecondsPath": "$.delay"}, {"delay": 12.5}, 12.5),
        ({"Timestamp": "2026-11-25T12:05:00Z"}, {}, 300.0),
        ({"TimestampPath": "$.when"}, {"when": "2026-11-25T13:00:00+01:00"}, 0.0),
        ({"TimestampPath": "$.when"}, {"when": "2026-11-25T11:00:00Z"}, 0.0),
    ],
)
def test_wait(
    make_engine: MakeEngine,
    clock: FakeClock,
    spec: dict[str, Any],
    data: dict[str, Any],
    expected: float,
) -> None:
    d = flow(("W", {"Type": "Wait", **spec, "End": True}))
    outcome = make_engine().run(d, data)
    assert outcome.status == "SUCCEEDED"
    assert clock.slept == expected
    assert outcome.output == data
    assert codes(outcome)[1:3] == ["WaitStarted", "WaitCompleted"]


@pytest.mark.parametrize(
    ("spec", "data", "code"),
    [
        ({"SecondsPath": "$.delay"}, {"delay": -1}, "WaitParameterError"),
        ({"SecondsPath": "$.delay"}, {"delay": "soon"}, "WaitParameterError"),
        ({"TimestampPath": "$.when"}, {"when": "tomorrow"}, "WaitParameterError"),
        ({"SecondsPath": "$.delay"}, {}, "ParameterPathError"),
    ],
)
def test_wait_bad_values(
    make_engine: MakeEngine, spec: dict[str, Any], data: dict[str, Any], code: str
) -> None:
    outcome = make_engine().run(flow(("W", {"Type": "Wait", **spec, "End": True})), data)
    assert outcome.status == "FAILED"
    assert outcome.code == code


# --------------------------------------------------------------------------- Fail


def test_fail_state(make_engine: MakeEngine) -> None:
    d = flow(("F", {"Type": "Fail", "Error": "Boom", "Cause": "it broke"}))
    outcome = make_engine().run(d, {"x": 1})
    assert outcome.status == "FAILED"
    assert outcome.details["code"] == "FlowFailed"
    assert outcome.details["error"] == "Boom"
    assert outcome.details["cause"] == "it broke"
    assert outcome.output == {"x": 1}
    assert codes(outcome) == ["FlowStarted", "FlowFailed"]
    assert outcome.log[-1]["details"]["state_name"] == "F"


def test_fail_error_and_cause_paths(make_engine: MakeEngine) -> None:
    d = flow(("F", {"Type": "Fail", "ErrorPath": "$.e", "CausePath": "$.c"}))
    outcome = make_engine().run(d, {"e": "E1", "c": {"why": 1}})
    assert (outcome.details["error"], outcome.details["cause"]) == ("E1", '{"why": 1}')


# --------------------------------------------------------------------------- Action


def test_action_parameters_nested_and_result_document(make_engine: MakeEngine) -> None:
    provider = ScriptedProvider(details={"answer": 42})
    spec = action(
        Parameters={
            "plain": 1,
            "ref.$": "$.a.b",
            "expr.=": "a.b + '!'",
            "nested": {
                "list": [{"item.$": "$.a.b"}, "lit", ["deep.$"]],
                "ctx.$": "$._context.run_id",
            },
        },
        ResultPath="$.result",
    )
    outcome = make_engine({URL: provider}).run(
        flow(("A", spec)), {"a": {"b": "B"}}, context={"run_id": "R"}
    )
    assert outcome.status == "SUCCEEDED", outcome.details
    assert provider.bodies == [
        {
            "plain": 1,
            "ref": "B",
            "expr": "B!",
            "nested": {"list": [{"item": "B"}, "lit", ["deep.$"]], "ctx": "R"},
        }
    ]
    result = outcome.output["result"]
    assert result["status"] == "SUCCEEDED"
    assert result["details"] == {"answer": 42}
    assert result["state_name"] == "A"
    assert set(result) >= {"action_id", "start_time", "completion_time", "display_status", "label"}
    ctx: ActionContext = provider.contexts[0]
    assert (ctx.run_id, ctx.state_name, ctx.action_url, ctx.wait_time) == ("R", "A", URL, 300.0)
    assert codes(outcome) == ["FlowStarted", "ActionStarted", "ActionCompleted", "FlowSucceeded"]


def test_action_input_path(make_engine: MakeEngine) -> None:
    provider = ScriptedProvider()
    spec = {
        "Type": "Action",
        "ActionUrl": URL,
        "InputPath": "$.body",
        "ResultPath": "$.r",
        "End": True,
    }
    make_engine({URL: provider}).run(flow(("A", spec)), {"body": {"k": "v"}})
    assert provider.bodies == [{"k": "v"}]


def test_action_without_result_path_replaces_state(make_engine: MakeEngine) -> None:
    spec = action()
    del spec["Parameters"]
    spec["InputPath"] = "$"
    outcome = make_engine({URL: ScriptedProvider()}).run(flow(("A", spec)), {"x": 1})
    assert outcome.output["status"] == "SUCCEEDED"
    assert "x" not in outcome.output


def test_missing_parameter_path_fails_the_run_clearly(make_engine: MakeEngine) -> None:
    provider = ScriptedProvider()
    spec = action(
        Parameters={"label.$": "$.input.beamline"},
        Catch=[{"ErrorEquals": ["States.ALL"], "Next": "F"}],
    )
    d = flow(("A", spec), ("F", {"Type": "Fail", "Error": "Caught"}))
    outcome = make_engine({URL: provider}).run(d, {"beamline": "bl402"})
    assert outcome.status == "FAILED"
    assert outcome.code == "ParameterPathError"  # a run-time error, not catchable
    description = outcome.details["description"]
    assert (
        "$.input.beamline" in description
        and "label.$" in description
        and "['beamline']" in description
    )
    assert outcome.details["error"] == "States.Runtime"
    assert provider.bodies == []


@pytest.mark.parametrize("exception_on_failure", [True, None])
def test_failed_action_raises_by_default(
    make_engine: MakeEngine, exception_on_failure: bool | None
) -> None:
    spec = action(ResultPath="$.r")
    if exception_on_failure is not None:
        spec["ExceptionOnActionFailure"] = exception_on_failure
    outcome = make_engine({URL: ScriptedProvider("fail", details={"why": "disk full"})}).run(
        flow(("A", spec)), {"x": 1}
    )
    assert outcome.status == "FAILED"
    assert outcome.code == "ActionFailedException"
    cause = json.loads(outcome.details["cause"])
    assert cause["status"] == "FAILED" and cause["details"] == {"why": "disk full"}
    assert codes(outcome) == ["FlowStarted", "ActionStarted", "ActionFailed", "FlowFailed"]


def test_failed_action_without_exception_stores_result(make_engine: MakeEngine) -> None:
    d = flow(
        ("A", action(ResultPath="$.r", ExceptionOnActionFailure=False, Next="Check")),
        (
            "Check",
            {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.r.status", "StringEquals": "FAILED", "Next": "Handled"}
                ],
            },
        ),
        ("Handled", {"Type": "Pass", "End": True}),
    )
    outcome = make_engine({URL: ScriptedProvider("fail")}).run(d, {"x": 1})
    assert outcome.status == "SUCCEEDED"
    assert outcome.output["r"]["status"] == "FAILED"


def catch_flow(
    errors: list[str], result_path: str | None = "$.error", **spec: Any
) -> dict[str, Any]:
    catcher: dict[str, Any] = {"ErrorEquals": errors, "Next": "Handler"}
    if result_path is not None:
        catcher["ResultPath"] = result_path
    return flow(
        ("A", action(ResultPath="$.r", Catch=[catcher], **spec)),
        ("Handler", {"Type": "Fail", "Error": "Handled", "Cause": "see $.error"}),
    )


@pytest.mark.parametrize(
    ("outcome_kind", "error", "extra"),
    [
        ("unable", "ActionUnableToRun", {}),
        ("crash", "ActionUnableToRun", {}),
        ("fail", "ActionFailedException", {}),
        ("hang", "ActionTimeout", {"WaitTime": 60}),
    ],
)
@pytest.mark.parametrize("catch_all", [False, True])
def test_catch_each_error(
    make_engine: MakeEngine, outcome_kind: str, error: str, extra: dict[str, Any], catch_all: bool
) -> None:
    d = catch_flow(["States.ALL"] if catch_all else [error], **extra)
    outcome = make_engine({URL: ScriptedProvider(outcome_kind)}).run(d, {"x": 1})
    assert outcome.status == "FAILED"
    assert outcome.details["error"] == "Handled", outcome.details
    caught = outcome.output["error"]
    assert caught["Error"] == error
    assert isinstance(caught["Cause"], str)
    json.loads(caught["Cause"])  # the Cause is a JSON document
    assert outcome.output["x"] == 1


@pytest.mark.parametrize(
    ("outcome_kind", "other_error"),
    [("unable", "ActionFailedException"), ("fail", "ActionTimeout"), ("hang", "ActionUnableToRun")],
)
def test_catch_does_not_match_other_errors(
    make_engine: MakeEngine, outcome_kind: str, other_error: str
) -> None:
    d = catch_flow([other_error], WaitTime=10)
    outcome = make_engine({URL: ScriptedProvider(outcome_kind)}).run(d, {"x": 1})
    assert outcome.status == "FAILED"
    assert outcome.code != "FlowFailed"
    assert outcome.code in {"ActionUnableToRun", "ActionFailedException", "ActionTimeout"}


def test_catch_without_result_path_replaces_state(make_engine: MakeEngine) -> None:
    d = catch_flow(["States.ALL"], result_path=None)
    outcome = make_engine({URL: ScriptedProvider("fail")}).run(d, {"x": 1})
    assert set(outcome.output) == {"Error", "Cause"}


def test_catch_order_first_match_wins(make_engine: MakeEngine) -> None:
    spec = action(
        Catch=[
            {"ErrorEquals": ["ActionTimeout"], "Next": "T"},
            {"ErrorEquals": ["ActionFailedException"], "Next": "F1", "ResultPath": "$.e"},
            {"ErrorEquals": ["States.ALL"], "Next": "T"},
        ]
    )
    d = flow(
        ("A", spec), ("T", {"Type": "Fail", "Error": "T"}), ("F1", {"Type": "Pass", "End": True})
    )
    outcome = make_engine({URL: ScriptedProvider("fail")}).run(d, {"x": 1})
    assert outcome.status == "SUCCEEDED"
    assert outcome.output["e"]["Error"] == "ActionFailedException"


def test_unable_to_run_cause_has_provider_error(make_engine: MakeEngine) -> None:
    outcome = make_engine({URL: ScriptedProvider("unable")}).run(
        catch_flow(["States.ALL"]), {"x": 1}
    )
    assert json.loads(outcome.output["error"]["Cause"]) == {
        "code": "NotFound",
        "description": "no such collection",
    }


def test_wait_time_timeout_cancels_and_polls_with_backoff(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    provider = ScriptedProvider("hang")
    outcome = make_engine({URL: provider}).run(flow(("A", action(WaitTime=100))), {"x": 1})
    assert outcome.code == "ActionTimeout"
    assert clock.slept == pytest.approx(100)
    assert clock.sleeps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert provider.canceled == ["act-hang"]
    cause = json.loads(outcome.details["cause"])
    assert cause["status"] == "ACTIVE" and cause["details"] == {"progress": provider.polls}


def test_async_action_completes_within_wait_time(make_engine: MakeEngine, clock: FakeClock) -> None:
    provider = ScriptedProvider("async:10", details={"done": True}, clock=clock)
    outcome = make_engine({URL: provider}).run(
        flow(("A", action(WaitTime=60, ResultPath="$.r"))), {"x": 1}
    )
    assert outcome.status == "SUCCEEDED"
    assert outcome.output["r"]["details"] == {"done": True}
    assert 10 <= clock.slept < 60
    assert provider.canceled == []


def test_poll_interval_is_capped(make_engine: MakeEngine, clock: FakeClock) -> None:
    provider = ScriptedProvider("hang")
    make_engine({URL: provider}, poll_max=5.0).run(flow(("A", action(WaitTime=30))), {"x": 1})
    assert max(clock.sleeps) == 5.0


def test_private_parameters_are_hidden_from_logs(make_engine: MakeEngine) -> None:
    provider = ScriptedProvider()
    spec = action(
        Parameters={
            "user": "u",
            "password.$": "$.secret",
            "server": {"token": "t", "url": "x", "__Private_Parameters": ["token"]},
            "__Private_Parameters": ["password"],
        },
        ResultPath="$.r",
    )
    outcome = make_engine({URL: provider}).run(
        flow(("A", spec)), {"secret": "hunter2", "_private_key": "k"}
    )
    assert provider.bodies == [
        {"user": "u", "password": "hunter2", "server": {"token": "t", "url": "x"}}
    ]
    started = next(e for e in outcome.log if e["code"] == "ActionStarted")
    assert started["details"]["input"] == {"user": "u", "server": {"url": "x"}}
    logged = json.dumps(outcome.log)
    assert "k" not in json.loads(logged)[0]["details"]["input"].get("_private_key", "")
    assert "_private_key" not in outcome.output


def test_function_provider_and_status_documents(make_engine: MakeEngine) -> None:
    def fn(body: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return {"status": "SUCCEEDED", "action_id": "abc", "details": {"echo": body["x"]}}

    outcome = make_engine({URL: FunctionProvider(fn)}).run(
        flow(("A", action(ResultPath="$.r"))), {"x": 5}
    )
    assert outcome.output["r"]["action_id"] == "abc"
    assert outcome.output["r"]["details"] == {"echo": 5}


def test_action_status_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="status"):
        ActionStatus(status="DONE")


# --------------------------------------------------------------------------- definition checks


def test_unknown_action_url_stops_the_run_before_it_starts(make_engine: MakeEngine) -> None:
    d = flow(("A", {**action(), "ActionUrl": "https://nowhere.example/act"}))
    engine = make_engine({URL: ScriptedProvider()})
    outcome = engine.run(d, {"x": 1})
    assert outcome.status == "FAILED"
    assert outcome.code == "UnknownActionUrl"
    assert "https://nowhere.example/act" in outcome.details["description"]
    assert codes(outcome) == ["FlowFailed"]
    assert outcome.transitions == 0
    with pytest.raises(FlowDefinitionError) as info:
        engine.check(d)
    assert info.value.unknown_action_urls == ["https://nowhere.example/act"]


@pytest.mark.parametrize(
    ("definition", "fragment"),
    [
        ({"StartAt": "X", "States": {"A": {"Type": "Pass", "End": True}}}, "StartAt"),
        (flow(("A", {"Type": "Pass", "Next": "Nowhere"})), "Nowhere"),
        (flow(("A", {"Type": "Pass"})), "Next or End"),
        (flow(("A", {"Type": "Task", "End": True})), "Type"),
        (flow(("A", {"Type": "Pass", "OutputPath": "$", "End": True})), "OutputPath"),
        (flow(("A", {"Type": "Pass", "ResultPath": "$._context.x", "End": True})), "read-only"),
        (flow(("A", {"Type": "Pass", "Parameters": {"x.$": "nopath"}, "End": True})), "JSONPath"),
        (
            flow(("A", {"Type": "Pass", "Parameters": {"x.=": "__import__('os')"}, "End": True})),
            "__import__",
        ),
        (flow(("A", {"Type": "Wait", "End": True})), "Seconds"),
        (flow(("A", {"Type": "Wait", "Timestamp": "soon", "End": True})), "RFC 3339"),
        (flow(("A", {"Type": "Choice", "Choices": []})), "Choices"),
        (
            flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "Next": "A"}]})),
            "operator",
        ),
        (
            flow(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.x", "NumericEquals": "1", "Next": "A"}],
                    },
                )
            ),
            "number",
        ),
        (
            flow(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.x", "StringEqual": "1", "Next": "A"}],
                    },
                )
            ),
            "unknown",
        ),
        (
            flow(
                (
                    "A",
                    {
                        "Type": "Choice",
                        "Choices": [{"Variable": "$.x", "IsNull": True, "Next": "B"}],
                    },
                )
            ),
            "'B'",
        ),
        (
            flow(("A", {**action(), "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "A"}]})),
            "States.Timeout",
        ),
        (flow(("A", {**action(), "InputPath": "$"})), "Parameters or InputPath"),
        (flow(("A", {**action(), "WaitTime": 0})), "WaitTime"),
        (flow(("A", {"Type": "ExpressionEval", "End": True})), "Parameters"),
    ],
)
def test_definition_problems(
    make_engine: MakeEngine, definition: dict[str, Any], fragment: str
) -> None:
    engine = make_engine({URL: ScriptedProvider()})
    problems = engine.problems(definition)
    assert any(fragment in p for p in problems), problems
    outcome = engine.run(definition, {"x": 1})
    assert outcome.code == "InvalidFlowDefinition"


# --------------------------------------------------------------------------- run-level behaviour


def test_max_transitions_guard(make_engine: MakeEngine) -> None:
    d = flow(("Loop", {"Type": "Pass", "Next": "Loop"}))
    outcome = make_engine(max_transitions=50).run(d, {})
    assert outcome.status == "FAILED"
    assert outcome.code == "MaxTransitionsExceeded"
    assert outcome.transitions == 51


def test_counter_loop_counts_transitions(make_engine: MakeEngine) -> None:
    d = flow(
        (
            "Inc",
            {
                "Type": "ExpressionEval",
                "Parameters": {"n.=": "counter.n + 1"},
                "ResultPath": "$.counter",
                "Next": "Check",
            },
        ),
        (
            "Check",
            {
                "Type": "Choice",
                "Choices": [{"Variable": "$.counter.n", "NumericLessThan": 5, "Next": "Inc"}],
                "Default": "Done",
            },
        ),
        ("Done", {"Type": "Pass", "End": True}),
    )
    outcome = make_engine().run(d, {"counter": {"n": 0}})
    assert outcome.output == {"counter": {"n": 5}}
    assert outcome.transitions == 11


def test_context_is_readable_but_not_in_output(make_engine: MakeEngine) -> None:
    d = flow(
        (
            "P",
            {
                "Type": "Pass",
                "Parameters": {"who.$": "$._context.username", "run.$": "$._context.run_id"},
                "ResultPath": "$.me",
                "End": True,
            },
        )
    )
    outcome = make_engine().run(d, {}, context={"run_id": "R9", "username": "alice"})
    assert outcome.output == {"me": {"who": "alice", "run": "R9"}}
    assert outcome.run_id == "R9"


def test_generated_run_id(make_engine: MakeEngine) -> None:
    d = flow(("P", {"Type": "Pass", "Parameters": {"r.$": "$._context.run_id"}, "End": True}))
    outcome = make_engine().run(d, {})
    assert outcome.output["r"] == outcome.run_id and len(outcome.run_id) == 36


def test_input_is_not_modified(make_engine: MakeEngine) -> None:
    data: dict[str, Any] = {"a": {"b": 1}}
    make_engine().run(
        flow(("P", {"Type": "Pass", "Result": 2, "ResultPath": "$.a.b", "End": True})), data
    )
    assert data == {"a": {"b": 1}}


def test_log_entries_have_the_flows_shape(make_engine: MakeEngine, clock: FakeClock) -> None:
    seen: list[dict[str, Any]] = []
    outcome = make_engine({URL: ScriptedProvider()}).run(
        flow(("A", action(ResultPath="$.r"))), {"x": 1}, on_log=seen.append
    )
    assert seen == outcome.log
    for entry in outcome.log:
        assert set(entry) == {"time", "code", "description", "details"}
        assert entry["time"] == clock.now().isoformat()
    assert outcome.log[0] == {
        "time": clock.now().isoformat(),
        "code": "FlowStarted",
        "description": "The Flow Instance started execution",
        "details": {"input": {"x": 1}},
    }
    assert outcome.log[1]["description"] == "State A of type Action started"
    assert outcome.log[-1]["details"]["output"] == outcome.output
    fields = outcome.run_fields()
    assert fields["status"] == "SUCCEEDED" and fields["details"]["code"] == "FlowSucceeded"


def test_cancel_ends_the_run(make_engine: MakeEngine) -> None:
    """A canceled run ends FAILED with details.code FlowCanceled, as Flows reports it: SDK
    fixture globus_sdk/testing/data/flows/cancel_run.py; globus-cli PR #834 ("Status:
    FAILED" after canceling an active run)."""
    cancel = threading.Event()
    provider = ScriptedProvider("hang")

    def sleep_then_cancel(seconds: float) -> None:
        cancel.set()

    engine = Engine({URL: provider}, sleep=sleep_then_cancel)
    outcome = engine.run(flow(("A", action(WaitTime=1000))), {"x": 1}, cancel=cancel)
    assert outcome.status == "FAILED"
    assert outcome.code == "FlowCanceled"
    assert provider.canceled == ["act-hang"]


def test_hello_world_flow_offline(make_engine: MakeEngine, clock: FakeClock) -> None:
    d = flow(
        (
            "Hello",
            {
                "Type": "Action",
                "ActionUrl": HELLO_WORLD_URL,
                "Parameters": {"echo_string.$": "$.echo_string", "sleep_time.$": "$.sleep_time"},
                "ResultPath": "$.HelloResult",
                "End": True,
            },
        )
    )
    engine = make_engine({HELLO_WORLD_URL: HelloWorldProvider(now=clock.now)})
    outcome = engine.run(d, {"echo_string": "hi", "sleep_time": 5})
    assert outcome.status == "SUCCEEDED"
    assert outcome.output["HelloResult"]["details"] == {"Hello": "World", "hello": "hi"}
    assert clock.slept >= 5
    bad = engine.run(d, {"echo_string": 3, "sleep_time": 0})
    assert bad.code == "ActionUnableToRun"
