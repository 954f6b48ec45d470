"""Configs that would lose data or hang the loader are refused: one line, the key, exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import run_cli


def _error(message: str) -> str:
    return f"dichroism: error: {message}\n"


def _validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, the error line); any other stderr line must be a warning."""
    code, _, err = run_cli(["--config", str(path), "validate"], capsys)
    lines = err.splitlines(keepends=True)
    assert all(line.startswith("dichroism: warning: ") for line in lines[:-1]), err
    return code, lines[-1] if lines else ""


def test_destination_root_on_the_watch_root_is_refused(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def mutate(data: dict[str, Any]) -> None:
        cfs = data["globus"]["endpoints"]["bl402-nersc_alsdev_raw"]
        cfs["root_path"] = data["beamlines"]["bl402"]["watch"]["root"]

    path = write_config(mutate)
    root = yaml.safe_load(path.read_text())["beamlines"]["bl402"]["watch"]["root"]
    assert _validate(path, capsys) == (
        2,
        _error(
            f"beamlines.bl402.destination: its root {root} overlaps beamlines.bl402.watch.root"
            " (the watched directory: the copy would land on what it copies)"
        ),
    )


def test_destination_inside_the_source_root_of_the_same_collection_is_refused(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def mutate(data: dict[str, Any]) -> None:
        endpoints = data["globus"]["endpoints"]
        # The same collection (uuid) on both sides, the destination below the source root.
        endpoints["bl402-nersc_alsdev_raw"]["uuid"] = endpoints["bl402-compute-dtn"]["uuid"]
        endpoints["bl402-nersc_alsdev_raw"]["root_path"] = "/export/bl402/cfs"
        endpoints["bl402-nersc_alsdev_raw"]["local_path"] = str(tmp_path / "elsewhere")
        data["beamlines"]["bl402"]["source_root"] = "/export/bl402"

    code, err = _validate(write_config(mutate), capsys)
    assert code == 2
    assert err == _error(
        "beamlines.bl402.destination: its root /export/bl402/cfs overlaps beamlines.bl402.source"
        " (the source root: the copy would land on what it copies)"
    )


def test_two_beamlines_sharing_a_destination_are_refused(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl631"]["destination"] = "bl402-nersc_alsdev_raw"

    path = write_config(mutate)
    cfs = yaml.safe_load(path.read_text())["globus"]["endpoints"]["bl402-nersc_alsdev_raw"]
    assert _validate(path, capsys) == (
        2,
        _error(
            f"beamlines.bl402.destination: its root {cfs['root_path']} overlaps"
            " beamlines.bl631.destination (another beamline's destination: one overwrites"
            " the other)"
        ),
    )


def test_nested_destinations_of_two_beamlines_are_refused(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def mutate(data: dict[str, Any]) -> None:
        endpoints = data["globus"]["endpoints"]
        inner = endpoints["bl402-nersc_alsdev_raw"]["root_path"] + "/bl631"
        endpoints["bl631-nersc_alsdev_raw"]["root_path"] = inner

    code, err = _validate(write_config(mutate), capsys)
    assert code == 2 and "overlaps beamlines.bl631.destination" in err


def test_a_missing_watch_root_is_refused_and_never_created(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nfs" / "bl402"  # an unmounted share, say

    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["watch"]["root"] = str(missing)

    path = write_config(mutate)
    missing.rmdir()  # write_config creates the roots it names
    expected = _error(
        f"beamlines.bl402.watch.root: {missing} does not exist (not mounted?); create or mount"
        " it first, `dichroism watch` never creates it"
    )
    assert _validate(path, capsys) == (2, expected)
    code, _, err = run_cli(["--config", str(path), "--backend", "local", "watch"], capsys)
    assert (code, err.splitlines()[-1] + "\n") == (2, expected)
    assert not missing.exists()


def test_a_watch_root_that_is_a_file_is_refused(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    afile = tmp_path / "not-a-dir"

    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl631"]["watch"]["root"] = str(afile)

    path = write_config(mutate)
    afile.rmdir()
    afile.write_text("x")
    assert _validate(path, capsys) == (
        2,
        _error(f"beamlines.bl631.watch.root: {afile} is not a directory"),
    )


@pytest.mark.parametrize("name", ["BL402", "bl 402", "a" * 33, "bl.402"])
def test_beamline_names_the_flow_schemas_would_refuse(
    name: str, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"][name] = data["beamlines"].pop("bl631")

    code, err = _validate(write_config(mutate), capsys)
    assert (code, err) == (
        2,
        _error(
            f"beamlines.{name}: a beamline name is 1-32 of a-z 0-9 _ - (the flows' input"
            " schemas accept nothing else)"
        ),
    )


@pytest.mark.parametrize(
    ("where", "key"),
    [
        (("beamlines", "bl402", "watch"), "settle_seconds"),
        (("beamlines", "bl402", "retention_days"), "cfs"),
        (("lifecycle",), "max_attempts"),
    ],
)
def test_booleans_where_numbers_belong(
    where: tuple[str, ...],
    key: str,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for part in where:
            node = node.setdefault(part, {})
        node[key] = True

    code, err = _validate(write_config(mutate), capsys)
    assert (code, err) == (2, _error(f"{'.'.join(where)}.{key}: must be a number, not true"))


def test_duplicate_keys_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yml"
    path.write_text("backend: local\nstate_dir: /tmp/a\nbackend: globus\n")
    assert _validate(path, capsys) == (
        2,
        _error(f"{path}: line 3: duplicate key 'backend' (first at line 1)"),
    )


def test_an_alias_bomb_stops_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Nine levels of ten aliases each: 10**9 values if anything walked it naively.
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    path = tmp_path / "config.yml"
    path.write_text("\n".join(lines) + "\n")
    assert _validate(path, capsys) == (
        2,
        _error(
            "config: more than 100000 values once aliases are expanded (an alias bomb?);"
            " write the values out"
        ),
    )


def test_an_oversized_file_is_not_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yml"
    path.write_text("# padding\n" * 120_000)
    size = path.stat().st_size
    assert _validate(path, capsys) == (
        2,
        _error(f"{path}: {size} bytes; a config file is at most 1048576"),
    )


def test_a_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yml"
    path.write_bytes(b"backend: local\nstate_dir: /tmp/caf\xe9\n")
    assert _validate(path, capsys) == (2, _error(f"{path}: line 2: not UTF-8 text"))


def test_an_empty_variable_in_a_path_is_refused(
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("DICHROISM_TEST_BASE", raising=False)
    monkeypatch.chdir(tmp_path)  # write_config makes the (unexpanded) root it is given

    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["watch"]["root"] = "${DICHROISM_TEST_BASE:-}/bl402"

    assert _validate(write_config(mutate), capsys) == (
        2,
        _error(
            "beamlines.bl402.watch.root: ${DICHROISM_TEST_BASE} expands to an empty string in"
            " a path ('${DICHROISM_TEST_BASE:-}/bl402'); set DICHROISM_TEST_BASE"
        ),
    )


def test_a_default_covers_an_empty_variable_as_in_the_shell(
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DICHROISM_TEST_BASE", "")
    monkeypatch.chdir(tmp_path)  # write_config makes the (unexpanded) root it is given
    root = tmp_path / "elsewhere" / "bl402"
    root.mkdir(parents=True)

    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["watch"]["root"] = f"${{DICHROISM_TEST_BASE:-{root}}}"

    code, out, err = run_cli(["--config", str(write_config(mutate)), "validate"], capsys)
    assert code == 0 and "config: ok" in out and "error" not in err
