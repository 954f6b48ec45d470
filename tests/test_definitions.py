"""Structural checks of flow definitions, one assertion per rule."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.binding import specialise
from dichroism_control.config import Config
from dichroism_control.definitions import (
    checksum,
    house_rule_errors,
    load_all,
    load_document,
    structural_errors,
    validate_document,
)
from dichroism_control.errors import DefinitionError

SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": False}


def _base() -> dict[str, Any]:
    return {
        "StartAt": "Hello",
        "States": {
            "Hello": {
                "Type": "Action",
                "ActionUrl": "https://actions.globus.org/hello_world",
                "Parameters": {"echo_string.$": "$.input.x"},
                "ResultPath": "$.hello",
                "Catch": [
                    {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}
                ],
                "Next": "Done",
            },
            "Done": {"Type": "Pass", "End": True},
            "Failed": {"Type": "Fail", "Error": "HelloFailed", "Cause": "hello world failed"},
        },
    }


def _errors(edit: Any, schema: dict[str, Any] | None = None) -> list[str]:
    definition = _base()
    edit(definition)
    return structural_errors(definition, SCHEMA if schema is None else schema)


def test_a_sound_definition_has_no_errors() -> None:
    assert structural_errors(_base(), SCHEMA) == []
    assert house_rule_errors(_base()) == []


def test_dangling_next() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Hello"]["Next"] = "Nowhere"

    assert _errors(edit) == ["States.Hello.Next: 'Nowhere' is not a state"]


def test_dangling_catch_target() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Hello"]["Catch"][0]["Next"] = "Lost"

    assert _errors(edit) == ["States.Hello.Catch[0].Next: 'Lost' is not a state"]


def test_missing_start() -> None:
    assert _errors(lambda d: d.update(StartAt="Begin")) == ["StartAt: 'Begin' is not a state"]


def test_unreachable_state() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Orphan"] = {"Type": "Pass", "End": True}

    assert _errors(edit) == ["States.Orphan: unreachable from StartAt"]


def test_output_path_is_refused() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Done"]["OutputPath"] = "$.hello"

    assert _errors(edit) == [
        "States.Done.OutputPath: not supported by Globus Flows; use ResultPath"
    ]


def test_bad_json_path_parameter() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Hello"]["Parameters"]["echo_string.$"] = "input.x"

    assert _errors(edit) == [
        "States.Hello.Parameters.echo_string.$: 'input.x' is not a JSONPath (must start with '$.')"
    ]


def test_bad_result_path() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Hello"]["ResultPath"] = "hello"

    assert _errors(edit) == ["States.Hello.ResultPath: 'hello' is not a JSONPath"]


def test_choice_with_next() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Done"] = {
            "Type": "Choice",
            "Choices": [{"Variable": "$.hello.status", "StringEquals": "SUCCEEDED", "Next": "Ok"}],
            "Default": "Failed",
            "Next": "Ok",
        }
        d["States"]["Ok"] = {"Type": "Pass", "End": True}

    assert _errors(edit) == ["States.Done: a Choice state takes neither Next nor End"]


def test_next_and_end_rules() -> None:
    def both(d: dict[str, Any]) -> None:
        d["States"]["Hello"]["End"] = True

    def neither(d: dict[str, Any]) -> None:
        del d["States"]["Done"]["End"]

    assert _errors(both) == ["States.Hello: needs exactly one of Next or End"]
    assert _errors(neither) == ["States.Done: needs exactly one of Next or End"]


def test_unknown_state_type() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["States"]["Done"]["Type"] = "Parallel"

    assert _errors(edit) == [
        "States.Done.Type: 'Parallel' is not one of "
        "Action, Choice, ExpressionEval, Fail, Pass, Wait"
    ]


def test_bad_input_schema() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "text"}}}
    errors = _errors(lambda d: None, schema)
    assert len(errors) == 1
    assert errors[0].startswith("input_schema.properties.x.type: 'text' is not valid under any")


def test_house_rules_every_action_caught_by_a_fail_with_cause() -> None:
    definition = _base()
    definition["States"]["Hello"]["Catch"] = [{"ErrorEquals": ["ActionTimeout"], "Next": "Done"}]
    assert house_rule_errors(definition) == [
        "States.Hello.Catch: every Action needs a States.ALL catch",
        "States.Hello.Catch: 'Done' must be a Fail state with a Cause, or every path from it"
        " must reach one (a Choice sending the caught error, `IsPresent`, to such a Fail"
        " counts)",
    ]


def test_a_catch_that_carries_on_must_still_end_in_a_fail_on_every_path() -> None:
    """The flight check's shape: record the error, run the next step, fail at the end."""
    definition = _base()
    states = definition["States"]
    states["Hello"]["Catch"] = [
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.hello_error", "Next": "Verdict"}
    ]
    states["Hello"]["Next"] = "Verdict"
    states["Verdict"] = {
        "Type": "Choice",
        "Choices": [{"Variable": "$.hello_error", "IsPresent": True, "Next": "Failed"}],
        "Default": "Done",
    }
    assert house_rule_errors(definition) == []
    # Testing another variable does not count: the caught error could end in Done.
    states["Verdict"]["Choices"][0]["Variable"] = "$.other_error"
    assert len(house_rule_errors(definition)) == 1
    # Nor does a Choice that sends it to a state that is not a Fail with a Cause.
    states["Verdict"]["Choices"][0].update(Variable="$.hello_error", Next="Done")
    assert len(house_rule_errors(definition)) == 1


def test_shipped_definitions_are_valid_and_specialised(config: Config) -> None:
    documents = load_all(config.definitions_path)
    assert list(documents) == ["new_file", "archive", "prune", "flight_check"]
    for document in documents.values():
        assert validate_document(specialise(document, config)) == []
    for name in ("new_file", "archive", "prune", "flight_check"):
        bound = specialise(documents[name], config)
        props = bound.input_schema["properties"]["input"]["properties"]
        assert props["beamline"]["enum"] == ["bl402", "bl631"]
        assert documents[name].input_schema != bound.input_schema  # the file is left alone


def test_batch_limits_agree_with_the_schemas(config: Config) -> None:
    """The lifecycle's batch sizes are the schemas' maxItems (which bound the run state)."""
    from dichroism_control.lifecycle.base import (
        ARCHIVE_MAX_FILES,
        PRUNE_MAX_ARCHIVES,
        PRUNE_MAX_FILES,
    )

    documents = load_all(config.definitions_path)
    archive = documents["archive"].input_schema["properties"]["input"]["properties"]
    prune = documents["prune"].input_schema["properties"]["input"]["properties"]
    assert archive["files"]["maxItems"] == ARCHIVE_MAX_FILES == 200
    assert prune["target"]["properties"]["files"]["maxItems"] == PRUNE_MAX_FILES == 200
    assert prune["safe"]["properties"]["archives"]["maxItems"] == PRUNE_MAX_ARCHIVES == 50
    # The watcher refuses a path the batch flows could not carry (routing.REL_MAX).
    from dichroism_control.routing import REL_MAX

    item = prune["target"]["properties"]["files"]["items"]["properties"]["path"]
    assert item["maxLength"] == REL_MAX == 240
    assert archive["files"]["items"]["properties"]["path"]["maxLength"] == REL_MAX


def test_checksum_is_canonical() -> None:
    a = {"b": 1, "a": [1, 2]}
    assert checksum(a) == checksum(copy.deepcopy({"a": [1, 2], "b": 1}))
    assert checksum(a) != checksum({"b": 1, "a": [2, 1]})


def test_load_document_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(DefinitionError, match=r"x\.json: not valid JSON \(line 1"):
        load_document(path)
    path.write_text('{"definition": {}, "extra": 1}')
    with pytest.raises(DefinitionError, match=r"x\.json: unknown key\(s\) extra"):
        load_document(path)
    with pytest.raises(DefinitionError, match="no such flow definition"):
        load_document(tmp_path / "missing.json")
