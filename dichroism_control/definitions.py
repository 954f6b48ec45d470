"""Flow definitions: load `flow_definitions/*.json`, check their structure, specialise them.

The structural checks catch, before any upload, the mistakes the Flows service would reject
or, worse, accept and fail on at run time: a dangling Next, an unreachable state, an
OutputPath (not supported by Globus), a `.$` value that is not a JSONPath, an invalid input
schema. `--remote` adds the service's own validate endpoint on top.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dichroism_control.config import FLOW_NAMES, Config
from dichroism_control.errors import DefinitionError

TERMINAL_TYPES = {"Fail"}
STATE_TYPES = {"Action", "Pass", "Choice", "Wait", "Fail", "ExpressionEval"}


@dataclass(frozen=True)
class FlowDocument:
    name: str
    path: Path
    definition: dict[str, Any]
    input_schema: dict[str, Any]


def load_document(path: Path, *, name: str | None = None) -> FlowDocument:
    """A flow file: `{"definition", "input_schema"}`, or a bare definition (schema: {})."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such flow definition") from None
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise DefinitionError(f"{path}: the top level must be an object")
    if "definition" in data:
        unknown = set(data) - {"definition", "input_schema"}
        if unknown:
            raise DefinitionError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        definition, schema = data["definition"], data.get("input_schema", {})
    else:
        definition, schema = data, {}
    if not isinstance(definition, dict) or not isinstance(schema, dict):
        raise DefinitionError(f"{path}: definition and input_schema must be objects")
    return FlowDocument(name or path.stem, path, definition, schema)


def load_all(directory: Path) -> dict[str, FlowDocument]:
    documents = {}
    for name in FLOW_NAMES:
        documents[name] = load_document(directory / f"{name}.json", name=name)
    return documents


# -- structural validation ---------------------------------------------------------------
def _targets(state: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, target) for every transition out of a state."""
    if "Next" in state:
        yield "Next", state["Next"]
    if "Default" in state:
        yield "Default", state["Default"]
    for i, rule in enumerate(state.get("Choices", [])):
        if isinstance(rule, dict) and "Next" in rule:
            yield f"Choices[{i}].Next", rule["Next"]
    for i, catcher in enumerate(state.get("Catch", [])):
        if isinstance(catcher, dict) and "Next" in catcher:
            yield f"Catch[{i}].Next", catcher["Next"]


def _path_parameters(node: Any, where: str) -> Iterator[tuple[str, str, Any]]:
    """(key path, kind, value) for every `.$` / `.=` key below a Parameters object."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}"
            if key.endswith(".$"):
                yield here, "$", value
            elif key.endswith(".="):
                yield here, "=", value
            yield from _path_parameters(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _path_parameters(value, f"{where}[{i}]")


def _is_json_path(value: Any) -> bool:
    return isinstance(value, str) and (value == "$" or value.startswith(("$.", "$[")))


def structural_errors(definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    states = definition.get("States")
    start = definition.get("StartAt")
    if not isinstance(states, dict) or not states:
        return ["States: must be a non-empty object"]
    if start not in states:
        errors.append(f"StartAt: {start!r} is not a state")
    for name, state in states.items():
        where = f"States.{name}"
        if not isinstance(state, dict):
            errors.append(f"{where}: must be an object")
            continue
        kind = state.get("Type")
        if kind not in STATE_TYPES:
            errors.append(f"{where}.Type: {kind!r} is not one of {', '.join(sorted(STATE_TYPES))}")
            continue
        if "OutputPath" in state:
            errors.append(f"{where}.OutputPath: not supported by Globus Flows; use ResultPath")
        for label, target in _targets(state):
            if target not in states:
                errors.append(f"{where}.{label}: {target!r} is not a state")
        has_next, has_end = "Next" in state, bool(state.get("End"))
        if kind == "Choice":
            if has_next or has_end:
                errors.append(f"{where}: a Choice state takes neither Next nor End")
            if not state.get("Choices"):
                errors.append(f"{where}.Choices: must list at least one rule")
        elif kind in TERMINAL_TYPES:
            if has_next or has_end:
                errors.append(f"{where}: a Fail state takes neither Next nor End")
        elif has_next == has_end:
            errors.append(f"{where}: needs exactly one of Next or End")
        if kind == "Action" and not isinstance(state.get("ActionUrl"), str):
            errors.append(f"{where}.ActionUrl: required")
        for key in ("ResultPath", "InputPath"):
            if key in state and not _is_json_path(state[key]):
                errors.append(f"{where}.{key}: {state[key]!r} is not a JSONPath")
        for key_path, kind_, value in _path_parameters(
            state.get("Parameters", {}), f"{where}.Parameters"
        ):
            if kind_ == "$" and not _is_json_path(value):
                errors.append(f"{key_path}: {value!r} is not a JSONPath (must start with '$.')")
            if kind_ == "=" and not isinstance(value, str):
                errors.append(f"{key_path}: an expression must be a string")
    if not errors and isinstance(start, str):
        errors.extend(
            f"States.{name}: unreachable from StartAt" for name in _unreachable(states, start)
        )
    errors.extend(_schema_errors(input_schema))
    return errors


def _unreachable(states: dict[str, Any], start: str) -> list[str]:
    seen, todo = {start}, [start]
    while todo:
        for _, target in _targets(states[todo.pop()]):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return [name for name in states if name not in seen]


def _schema_errors(schema: dict[str, Any]) -> list[str]:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(top)"
        return [f"input_schema.{where}: {exc.message}"]
    return []


def house_rule_errors(definition: dict[str, Any]) -> list[str]:
    """This project's own rules: every Action is caught, and every catch ends in a Fail.

    A catch ends in a Fail when its Next is a Fail state with a Cause, or when it records
    the error (`ResultPath`) and carries on, and EVERY path from it reaches such a Fail: a
    Fail itself, or a Choice that sends that recorded error to one (`IsPresent: true`). The
    flight check runs every step and fails at the end this way, so one run names every
    problem; no path can let a caught error end the run as a success."""
    errors = []
    states = definition.get("States", {})
    for name, state in states.items():
        if state.get("Type") != "Action":
            continue
        catchers = state.get("Catch") or []
        if not any("States.ALL" in c.get("ErrorEquals", []) for c in catchers):
            errors.append(f"States.{name}.Catch: every Action needs a States.ALL catch")
        for catcher in catchers:
            target = states.get(catcher.get("Next"), {})
            if _is_fail(target):
                continue
            target_name = catcher.get("Next")
            recorded = catcher.get("ResultPath")
            if isinstance(recorded, str) and _always_fails(states, target_name, recorded):
                continue
            errors.append(
                f"States.{name}.Catch: {target_name!r} must be a Fail state with a Cause, or"
                " every path from it must reach one (a Choice sending the caught error,"
                " `IsPresent`, to such a Fail counts)"
            )
    return errors


def _is_fail(state: Any) -> bool:
    return isinstance(state, dict) and state.get("Type") == "Fail" and bool(state.get("Cause"))


def _always_fails(states: dict[str, Any], start: Any, recorded: str) -> bool:
    """Every path from `start` reaches a Fail with a Cause, counting a Choice that tests
    `recorded` with `IsPresent: true` and sends it to such a Fail as the end of the path."""
    stack, seen = [start], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        state = states.get(name)
        if not isinstance(state, dict):
            return False
        if _is_fail(state):
            continue
        if state.get("Type") == "Choice" and any(
            isinstance(rule, dict)
            and rule.get("Variable") == recorded
            and rule.get("IsPresent") is True
            and _is_fail(states.get(str(rule.get("Next"))))
            for rule in state.get("Choices", [])
        ):
            continue
        if state.get("End") or state.get("Type") in ("Succeed", "Fail"):
            return False
        stack.extend(target for _, target in _targets(state))
    return True


def validate_document(document: FlowDocument, *, house_rules: bool = True) -> list[str]:
    errors = structural_errors(document.definition, document.input_schema)
    if house_rules:
        errors.extend(house_rule_errors(document.definition))
    return [f"{document.name}: {error}" for error in errors]


# -- specialisation and checksums ----------------------------------------------------------
def wait_time(config: Config, name: str, state: str) -> float:
    """A state's WaitTime in the deployed definition: how long the flow lets its action run
    (the Transfer `deadline` of that state's task must not be shorter)."""
    document = load_document(config.definitions_path / f"{name}.json", name=name)
    spec = document.definition.get("States", {}).get(state)
    if not isinstance(spec, dict) or not isinstance(spec.get("WaitTime"), int | float):
        raise DefinitionError(f"{name}: States.{state}.WaitTime is not set")
    return float(spec["WaitTime"])


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def checksum(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()
