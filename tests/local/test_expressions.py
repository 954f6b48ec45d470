"""The `.=` expression evaluator: the documented subset works, unsafe things are refused."""

from __future__ import annotations

from typing import Any

import pytest

from dichroism_control.local.expressions import (
    ExpressionError,
    Limits,
    compile_expression,
    evaluate,
    pathsplit,
)

STATE: dict[str, Any] = {
    "foo": "bar",
    "list_val": [1, 2, 3],
    "object_val": {"sub_val1": "embedded", "sub_val2": "also_embedded"},
    "files": [{"path": "P1/a.h5", "size": 10}, {"path": "P1/b.h5", "size": 20}],
    "SourcePathInfo": {"details": {"DATA": [{"name": "scan.h5", "is_folder": False}]}},
    "_context": {"run_id": "run-1", "username": "alice@example.org"},
    "flag": True,
    "nothing": None,
}


def ev(source: str, **kwargs: Any) -> Any:
    return evaluate(source, STATE, **kwargs)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # literals
        ("'text'", "text"),
        ('"double"', "double"),
        ("42", 42),
        ("1.5", 1.5),
        ("True", True),
        ("None", None),
        ("[1, 'a', None]", [1, "a", None]),
        ("{'a': 1, 'b': [2]}", {"a": 1, "b": [2]}),
        ("(1, 2)", [1, 2]),
        # arithmetic
        ("1 + 2 * 3 - 4", 3),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("2 ** 10", 1024),
        ("-list_val[0]", -1),
        ("list_val + [4]", [1, 2, 3, 4]),
        # strings, documented example
        ("foo + ' ' + object_val.sub_val1", "bar embedded"),
        # comparisons and boolean logic
        ("1 < 2 <= 2", True),
        ("foo == 'bar' and not flag", False),
        ("foo != 'bar' or flag", True),
        ("nothing is None", True),
        ("'ar' in foo", True),
        ("5 not in list_val", True),
        ("'sub_val1' in object_val", True),
        # conditional expression
        ("'yes' if flag else 'no'", "yes"),
        # attribute-style and subscript access
        ("SourcePathInfo.details.DATA[0].name", "scan.h5"),
        ("SourcePathInfo['details']['DATA'][0]['is_folder']", False),
        ("files[-1].path", "P1/b.h5"),
        ("list_val[1:]", [2, 3]),
        ("foo[::-1]", "rab"),
        ("_context.run_id", "run-1"),
        # comprehensions
        ("[f.path for f in files if f.size > 10]", ["P1/b.h5"]),
        ("[x * y for x in list_val for y in [1, 10] if x > 1]", [2, 20, 3, 30]),
        ("{f.path: f.size for f in files}", {"P1/a.h5": 10, "P1/b.h5": 20}),
        ("sum(f.size for f in files)", 30),
        (
            "[{'path': 'root/' + f.path} for f in files]",
            [{"path": "root/P1/a.h5"}, {"path": "root/P1/b.h5"}],
        ),
        # functions
        ("pathsplit('/foo/bar/blech')", ["/foo/bar", "blech"]),
        ("pathsplit('/~/path')", ["/~/", "path"]),
        ("getattr('foo', 'dflt')", "bar"),
        ("getattr('missing', 10)", 10),
        ("getattr('missing')", None),
        ("is_present('foo')", True),
        ("is_present('object_val.sub_val2')", True),
        ("is_present('missing')", False),
        ("x if is_present('x') else 10", 10),
        ("len(files)", 2),
        ("len(foo)", 3),
        ("str(5) + str(None)", "5None"),
        ("str(list_val)", "[1, 2, 3]"),
        ("int('12') + int(3.9)", 15),
        ("float('2.5')", 2.5),
        ("bool(0)", False),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("min(list_val)", 1),
        ("max(3, 9, 4)", 9),
        ("sum(list_val)", 6),
        ("sorted([3, 1, 2])", [1, 2, 3]),
        ("sorted([3, 1, 2], reverse=True)", [3, 2, 1]),
        ("any([False, True])", True),
        ("all([])", True),
        ("list(range(3))", [0, 1, 2]),
        # string methods
        ("foo.upper()", "BAR"),
        ("'ABC'.lower()", "abc"),
        ("'  pad '.strip()", "pad"),
        ("'a/b/c'.split('/')", ["a", "b", "c"]),
        ("'a/b/c'.rsplit('/', 1)", ["a/b", "c"]),
        ("foo.startswith('b')", True),
        ("foo.endswith(['x', 'r'])", True),
        ("'a-b'.replace('-', '_')", "a_b"),
        ("'/'.join(['x', 'y'])", "x/y"),
        ("'{}-{}'.format(foo, 1)", "bar-1"),
        ("'{name}!'.format(name=foo)", "bar!"),
        ("'{0[sub_val1]}'.format(object_val)", "embedded"),
        ("'scan.h5'.removesuffix('.h5')", "scan"),
        ("f'{foo}/{len(files)}'", "bar/2"),
        # dict and list methods
        ("object_val.get('nope', 'dflt')", "dflt"),
        ("sorted(object_val.keys())", ["sub_val1", "sub_val2"]),
        ("list_val.index(2)", 1),
    ],
)
def test_supported_expressions(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_functions_win_over_state_keys_of_the_same_name() -> None:
    assert evaluate("len(x)", {"len": "shadow", "x": [1]}) == 1


def test_backtick_jsonpath_uses_the_reader() -> None:
    reads: list[str] = []

    def reader(path: str) -> Any:
        reads.append(path)
        return {"$.a.b": "B", "$.list[1]": 7}[path]

    assert (
        ev("'x' + `$.a.b` + str(`$.list[1]`) + '`not a path`'", read_path=reader)
        == "xB7`not a path`"
    )
    assert reads == ["$.a.b", "$.list[1]"]


def test_backtick_path_missing_is_an_error() -> None:
    def reader(path: str) -> Any:
        raise KeyError(path)

    with pytest.raises(ExpressionError, match=r"\$\.gone"):
        ev("`$.gone`", read_path=reader)


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os').system('true')",
        "foo.__class__",
        "foo.__class__.__mro__",
        "(1).__class__.__bases__",
        "[c for c in ().__class__.__base__.__subclasses__()]",
        "__builtins__",
        "eval('1')",
        "exec('x=1')",
        "open('/etc/passwd')",
        "compile('1', 'f', 'eval')",
        "type(foo)",
        "globals()",
        "lambda: 1",
        "(x := 1)",
        "foo.format_map({})",
        "'{0.__class__}'.format(foo)",
        "'{0.upper}'.format(foo)",
        "list_val.append(4)",
        "object_val.update({'a': 1})",
        "object_val.pop('sub_val1')",
        "{1, 2}",
        "*list_val",
        "max(*list_val)",
        "dict(**object_val)",
        "await foo",
        "1 << 100000",
        "~1",
        "b'bytes'",
        "1j",
    ],
)
def test_unsafe_or_unsupported_constructs_are_refused(source: str) -> None:
    with pytest.raises(ExpressionError):
        ev(source)


@pytest.mark.parametrize(
    "source",
    [
        "2 ** 100000",
        "10 ** 10 ** 10",
        "99999 ** 9999",
        "'a' * 10 ** 9",
        "[0] * 10 ** 9",
        "[x for x in range(10 ** 8)]",
        "'{:99999999999}'.format(1)",
        "'%999999999s' % foo",
        "'x' * 900000 + 'y' * 900000",
        "('a' * 1000000).replace('', 'bb')",
        "[[y for y in range(5000)] for x in range(5000)]",
        "1.0e308 * 10",
        "int('9' * 5000)",
    ],
)
def test_resource_limits(source: str) -> None:
    with pytest.raises(ExpressionError):
        ev(source)


def test_source_size_depth_and_node_limits() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        ev("1 + " * 5000 + "1")
    with pytest.raises(ExpressionError, match=r"deeper|nested|nodes"):
        ev("(" * 80 + "1" + ")" * 80 + " + " + "+".join(["[1]"] * 10), limits=Limits(max_depth=5))
    with pytest.raises(ExpressionError, match="nodes"):
        ev("+".join(["1"] * 300), limits=Limits(max_nodes=100))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing_name", "not present"),
        ("object_val.nope", "not present"),
        ("files[5]", "out of range"),
        ("1 / 0", "ZeroDivisionError"),
        ("foo(", "syntax error"),
        ("len(1)", "len()"),
        ("foo.nosuchmethod()", "no attribute"),
        ("files.path", "no attribute"),
    ],
)
def test_errors_are_explained(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message) as info:
        ev(source)
    assert source in str(info.value)


def test_result_must_be_json_data() -> None:
    with pytest.raises(ExpressionError, match="function"):
        ev("foo.upper")
    with pytest.raises(ExpressionError, match="finite"):
        ev("float('nan')")


def test_compile_is_cached_and_reusable() -> None:
    compiled = compile_expression("a + 1")
    assert compile_expression("a + 1") is compiled
    assert evaluate(compiled, {"a": 1}) == 2
    assert evaluate(compiled, {"a": 41}) == 42


def test_evaluation_does_not_modify_the_state() -> None:
    state: dict[str, Any] = {"items": [3, 1, 2], "d": {"k": 1}}
    evaluate("sorted(items) + [d.get('k')]", state)
    assert state == {"items": [3, 1, 2], "d": {"k": 1}}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/foo/bar/blech", ["/foo/bar", "blech"]),
        ("/foo/bar/", ["/foo", "bar"]),
        ("/foo", ["/", "foo"]),
        ("/~/path", ["/~/", "path"]),
        ("/~/", ["/~/", ""]),
        ("/~/a/b", ["/~/a", "b"]),
        ("relative/name", ["relative", "name"]),
        ("name", ["", "name"]),
    ],
)
def test_pathsplit(path: str, expected: list[str]) -> None:
    assert pathsplit(path) == expected
