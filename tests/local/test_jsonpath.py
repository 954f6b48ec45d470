"""JSONPath reads (`.$`, InputPath, Choice variables) and ResultPath writes."""

from __future__ import annotations

from typing import Any

import pytest

from dichroism_control.local.jsonpath import (
    JsonPathError,
    PathNotFound,
    ResultPathError,
    StateView,
    compile_path,
    json_copy,
    read_path,
    write_path,
)

STATE: dict[str, Any] = {
    "a": {"b": [{"c": 1}, {"c": 2}], "key with space": "s", "dash-key": "d"},
    "n": None,
    "flag": False,
}
VIEW = StateView(STATE, {"run_id": "run-1", "username": "alice"})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", STATE),
        ("$.a.b[0].c", 1),
        ("$.a.b[-1].c", 2),
        ("$.a['key with space']", "s"),
        ("$.a.dash-key", "d"),
        ("$.n", None),
        ("$.flag", False),
        ("$._context.run_id", "run-1"),
        ("$._context", {"run_id": "run-1", "username": "alice"}),
        # indefinite paths give every match, as a list
        ("$.a.b[*].c", [1, 2]),
        ("$..c", [1, 2]),
    ],
)
def test_read(path: str, expected: Any) -> None:
    assert read_path(VIEW, path) == expected


@pytest.mark.parametrize(
    ("path", "missing_at"),
    [
        ("$.x", "$.x"),
        ("$.a.x.y", "$.a.x"),
        ("$.a.b[5].c", "$.a.b[5]"),
        ("$.a.b.c", "$.a.b.c (parent is a list)"),
        ("$.n.x", "$.n.x (parent is a NoneType)"),
        ("$._context.flow_id", "$._context.flow_id"),
        ("$.a.b[*].zz", "$.a.b[*].zz"),
    ],
)
def test_missing_paths_name_the_missing_step(path: str, missing_at: str) -> None:
    with pytest.raises(PathNotFound) as info:
        read_path(VIEW, path)
    assert info.value.missing_at == missing_at
    assert path in str(info.value)


def test_missing_key_lists_the_keys_present() -> None:
    with pytest.raises(PathNotFound, match=r"keys present there: \['a', 'flag', 'n'\]"):
        read_path(VIEW, "$.input")


@pytest.mark.parametrize("path", ["a.b", "", "$$.x", "$.a[", "$.a.b[?("])
def test_invalid_paths(path: str) -> None:
    with pytest.raises(JsonPathError):
        compile_path(path)


def test_context_is_not_part_of_the_state() -> None:
    view = StateView({"_context": "user data"}, {"run_id": "r"})
    assert read_path(view, "$._context.run_id") == "r"


def test_write_creates_intermediate_objects() -> None:
    state: dict[str, Any] = {"keep": 1}
    out = write_path(state, "$.x.y.z", {"v": 1})
    assert out == {"keep": 1, "x": {"y": {"z": {"v": 1}}}}


def test_write_replaces_existing_value_and_list_element() -> None:
    state: dict[str, Any] = {"a": {"b": [0, 1]}, "c": "old"}
    write_path(state, "$.c", "new")
    write_path(state, "$.a.b[1]", "one")
    assert state == {"a": {"b": [0, "one"]}, "c": "new"}


def test_write_dollar_replaces_the_whole_state() -> None:
    assert write_path({"a": 1}, "$", {"Error": "E"}) == {"Error": "E"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("$._context.run_id", "read-only"),
        ("$.a.b[*]", "definite"),
        ("$.s.x", "is a str"),
        ("$.l[3]", "no list element"),
        ("$.new[0]", "cannot create list"),
        ("nope", "JSONPath"),
    ],
)
def test_write_refusals(path: str, message: str) -> None:
    with pytest.raises(ResultPathError, match=message):
        write_path({"s": "text", "l": [1]}, path, 1)


def test_json_copy_is_deep() -> None:
    original: dict[str, Any] = {"a": [{"b": 1}]}
    copied = json_copy(original)
    copied["a"][0]["b"] = 2
    assert original == {"a": [{"b": 1}]}
