"""config.yml errors: one line naming the key path, exit 2, through the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.config import load_config
from tests.deploy.helpers import run_cli

KNOWN_ENDPOINTS = (
    "bl402-compute-dtn, bl402-nersc_alsdev_raw, bl631-compute-dtn, bl631-nersc_alsdev_raw"
)


def _set(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _nest(data: dict[str, Any]) -> None:
    data["beamlines"]["bl631"]["watch"]["root"] = data["beamlines"]["bl402"]["watch"]["root"] + "/x"


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "unknown key",
        _set("beamlines", "bl402", "colour", value="red"),
        "beamlines.bl402.colour: unknown key",
    ),
    ("unknown top key", _set("extra", value=1), "extra: unknown key"),
    (
        "negative retention",
        _set("beamlines", "bl402", "retention_days", "cfs", value=-1),
        "beamlines.bl402.retention_days.cfs: must be >= 0",
    ),
    (
        "bad uuid",
        _set("globus", "endpoints", "bl402-compute-dtn", "uuid", value="not-a-uuid"),
        "globus.endpoints.bl402-compute-dtn.uuid: must be a UUID",
    ),
    (
        "bad compute endpoint uuid",
        _set("globus", "compute_endpoints", "nersc", value="1234"),
        "globus.compute_endpoints.nersc: must be a UUID",
    ),
    (
        "unknown endpoint reference",
        _set("beamlines", "bl631", "destination", value="bl631-cfs"),
        f"beamlines.bl631.destination: unknown endpoint 'bl631-cfs' (known: {KNOWN_ENDPOINTS})",
    ),
    (
        "missing variable",
        _set("state_dir", value="${DICHROISM_TEST_NOT_SET}/state"),
        "state_dir: environment variable DICHROISM_TEST_NOT_SET is not set",
    ),
    (
        "nested watch roots",
        _nest,
        "beamlines.bl631.watch.root: lies inside beamlines.bl402.watch.root",
    ),
    (
        "invalid principal",
        _set("globus", "roles", "run_managers", value=["bob@example.org"]),
        "globus.roles.run_managers: 'bob@example.org' is not a principal URN "
        "(urn:globus:auth:identity:<id> or urn:globus:groups:id:<id>)",
    ),
    (
        "relative watch root",
        _set("beamlines", "bl402", "watch", "root", value="data/bl402"),
        "beamlines.bl402.watch.root: must be an absolute path",
    ),
    ("bad backend", _set("backend", value="aws"), "backend: must be one of 'globus' or 'local'"),
    (
        "missing key",
        lambda d: d["globus"].pop("compute_endpoints"),
        "globus.compute_endpoints: required key is missing",
    ),
    (
        "unknown pinned function",
        _set("globus", "functions", value={"scicat": "1b2c3d4e-0000-4000-8000-000000000402"}),
        "globus.functions: unknown function 'scicat' (known: scicat_ingest, scicat_add_location, "
        "hpss_archive, hpss_verify, cfs_verify, flight_check_endpoint)",
    ),
    (
        "endpoint name differs from key",
        _set("globus", "endpoints", "bl402-compute-dtn", "name", value="dtn"),
        "globus.endpoints.bl402-compute-dtn.name: must equal its key 'bl402-compute-dtn'",
    ),
]


@pytest.mark.parametrize(("label", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_config_errors_name_the_key_path_and_exit_2(
    label: str,
    mutate: Callable[[dict[str, Any]], None],
    message: str,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DICHROISM_TEST_NOT_SET", raising=False)
    code, out, err = run_cli(["--config", str(write_config(mutate)), "validate"], capsys)
    assert (code, out, err) == (2, "", f"dichroism: error: {message}\n")


def test_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yml"
    path.write_text("backend: globus\nglobus:\n  endpoints: [\n    a: b\n")
    code, out, err = run_cli(["--config", str(path), "deploy"], capsys)
    assert (code, out, err) == (2, "", f"dichroism: error: {path}: line 5 not valid YAML\n")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yml"
    code, _, err = run_cli(["--config", str(path), "validate"], capsys)
    assert (code, err) == (2, f"dichroism: error: {path}: config file not found\n")


def test_environment_variables_and_defaults(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DICHROISM_TEST_STATE", str(tmp_path / "elsewhere"))

    def mutate(data: dict[str, Any]) -> None:
        data["state_dir"] = "${DICHROISM_TEST_STATE}"
        data["beamlines"]["bl402"]["scicat"]["owner_group"] = "${DICHROISM_TEST_UNSET_GROUP:-als}"
        del data["beamlines"]["bl402"]["retention_days"]

    config = load_config(write_config(mutate))
    assert config.state_path == tmp_path / "elsewhere"
    assert config.deploy_state_path == tmp_path / "elsewhere" / "deploy-state.json"
    assert config.beamlines["bl402"].scicat.owner_group == "als"
    assert config.beamlines["bl402"].retention_days.cfs == 180
    assert config.beamlines["bl402"].retention_days.compute_dtn == 180


def test_config_path_from_environment(
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DICHROISM_CONFIG", str(write_config()))
    code, out, _ = run_cli(["validate"], capsys)
    assert code == 0 and "new_file: ok" in out


def test_shipped_config_validates_but_holds_placeholders() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "config.yml")
    assert config.placeholders()[0] == "globus.endpoints.bl402-compute-dtn.uuid"
    assert set(config.beamlines) == {"bl402", "bl631"}
    assert set(config.globus.endpoints) == {
        "bl402-compute-dtn",
        "bl402-nersc_alsdev_raw",
        "bl631-compute-dtn",
        "bl631-nersc_alsdev_raw",
    }


@pytest.mark.parametrize("location", ["compute_dtn", "cfs"])
def test_retention_is_bounded_below_the_timers_one_year_limit(
    location: str,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Globus Timers refuses a start more than a year after submission.

    Source: the Timers OpenAPI (globus-sdk-javascript `src/open-api/types/timers.ts`,
    `"/jobs/"` post, "Submit Job": "Jobs must be scheduled to start after 1970-01-01 and
    within one year of when it is submitted"). A prune timer fires `retention` after its
    batch's newest member, and a batch spans a UTC day, so the bound is 365 - 1 = 364 days.
    """
    ok = load_config(
        write_config(_set("beamlines", "bl402", "retention_days", location, value=364))
    )
    assert getattr(ok.beamlines["bl402"].retention_days, location) == 364

    path = write_config(_set("beamlines", "bl402", "retention_days", location, value=365))
    code, out, err = run_cli(["--config", str(path), "validate"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"dichroism: error: beamlines.bl402.retention_days.{location}: must be <= 364 days:"
        " Globus Timers refuses a schedule more than a year out, and a prune batch closes only"
        " at the end of its UTC day\n"
    )


def test_retention_bound_in_seconds_mode(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Same bound (Timers OpenAPI `timers.ts`, "Submit Job") when retention is in seconds."""

    def seconds(value: int) -> Callable[[dict[str, Any]], None]:
        def mutate(data: dict[str, Any]) -> None:
            data["lifecycle"] = {"retention_unit": "seconds"}
            data["beamlines"]["bl631"]["retention_days"]["cfs"] = value

        return mutate

    assert load_config(write_config(seconds(364 * 86400))).beamlines["bl631"]
    code, _, err = run_cli(
        ["--config", str(write_config(seconds(364 * 86400 + 1))), "validate"], capsys
    )
    assert code == 2
    assert err.startswith(
        "dichroism: error: beamlines.bl631.retention_days.cfs: must be <= 31449600 seconds"
        " (364 days): Globus Timers refuses"
    )
