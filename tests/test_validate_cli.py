"""`dichroism validate [--remote]` through the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from tests.deploy.helpers import FakeGlobus, client_env, run_cli, started_mock

REPO = Path(__file__).resolve().parents[1]
NO_SUBSCRIPTION_WARNING = (
    "dichroism: warning: globus.subscription_id is not set: flows without a subscription"
    " expire after 30 days and an identity may own only one such flow, so the four flows"
    " need one (docs.globus.org/api/flows/limits)\n"
)


def _broken_copy(tmp_path: Path) -> Path:
    target = tmp_path / "flows"
    shutil.copytree(REPO / "flow_definitions", target)
    path = target / "archive.json"
    data = json.loads(path.read_text())
    first = data["definition"]["StartAt"]
    data["definition"]["States"][first]["OutputPath"] = "$.x"
    path.write_text(json.dumps(data))
    return target


@pytest.fixture
def mocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    client_env(monkeypatch)
    with started_mock() as mock:
        yield mock


@pytest.fixture
def fake_globus(mocked: responses.RequestsMock) -> FakeGlobus:
    return FakeGlobus(mocked)


def test_validate_ok(write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config()
    code, out, err = run_cli(["--config", str(config_path), "validate"], capsys)
    assert code == 0, err
    assert out == (
        f"config: ok ({config_path})\n"
        "new_file: ok (structure)\narchive: ok (structure)\nprune: ok (structure)\n"
        "flight_check: ok (structure)\n"
    )


def test_validate_reports_structural_errors(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flows = _broken_copy(tmp_path)

    def mutate(data: dict[str, Any]) -> None:
        data["flow_definitions_dir"] = str(flows)

    code, out, err = run_cli(["--config", str(write_config(mutate)), "validate"], capsys)
    assert code == 2
    assert (
        "archive: INVALID (structure)\n  - archive: States.ArchiveToTape.OutputPath: not "
        "supported by Globus Flows; use ResultPath\n" in out
    )
    assert err == NO_SUBSCRIPTION_WARNING + "dichroism: error: 1 problem(s) found\n"


def test_validate_json_is_one_document(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        ["--config", str(write_config()), "--format", "json", "validate"], capsys
    )
    assert code == 0
    report = json.loads(out)
    assert report["valid"] is True
    assert report["flows"]["prune"] == {"local_errors": []}


def test_validate_remote_shows_the_service_errors(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    code, out, _ = run_cli(["--config", str(config_path), "validate", "--remote"], capsys)
    assert code == 0
    assert "new_file: ok (structure + service)" in out
    assert len(fake_globus.calls("POST", "/flows/validate")) == 4
    body = json.loads(fake_globus.calls("POST", "/flows/validate")[0].request.body)
    assert set(body) == {"definition", "input_schema"}
    assert fake_globus.service_writes() == fake_globus.calls("POST", "/flows/validate")

    fake_globus.validate_errors = [
        {
            "loc": ["definition", "States", "TransferToCFS"],
            "msg": "A state of type 'Action' must be defined as either terminal or transitional",
            "type": "value_error",
        }
    ]
    code, out, err = run_cli(["--config", str(config_path), "validate", "--remote"], capsys)
    assert code == 2
    assert (
        "new_file: INVALID (structure + service)\n  - (service) definition.States.TransferToCFS: "
        "A state of type 'Action' must be defined as either terminal or transitional\n"
    ) in out
    # The fake service answers the same error for every flow it is asked about.
    assert err == NO_SUBSCRIPTION_WARNING + "dichroism: error: 4 problem(s) found\n"


def test_validate_remote_refuses_placeholders(
    mocked: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DICHROISM_STATE_DIR", str(tmp_path))
    code, _, err = run_cli(["--config", str(REPO / "config.yml"), "validate", "--remote"], capsys)
    assert code == 2
    assert "placeholder UUID; set the real id before talking to Globus" in err
    assert len(mocked.calls) == 0


def test_validate_warns_when_the_globus_backend_has_no_subscription(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Flows without a subscription expire after 30 days and an identity may own only one
    (docs.globus.org/api/flows/limits): `validate` says so on the globus backend only."""
    warning = (
        "globus.subscription_id is not set: flows without a subscription expire after 30 days"
        " and an identity may own only one such flow, so the four flows need one"
        " (docs.globus.org/api/flows/limits)"
    )
    config_path = write_config()
    code, out, err = run_cli(["--config", str(config_path), "--format", "json", "validate"], capsys)
    assert code == 0
    assert json.loads(out)["warnings"] == [warning]
    assert err == f"dichroism: warning: {warning}\n"

    code, out, err = run_cli(["--config", str(config_path), "validate"], capsys)
    assert code == 0 and err == f"dichroism: warning: {warning}\n"

    code, out, err = run_cli(
        ["--config", str(config_path), "--backend", "local", "--format", "json", "validate"],
        capsys,
    )
    assert code == 0 and err == "" and json.loads(out)["warnings"] == []

    def subscribed(data: dict[str, Any]) -> None:
        data["globus"]["subscription_id"] = "5a05c000-0000-4000-8000-000000000001"

    code, out, err = run_cli(
        ["--config", str(write_config(subscribed)), "--format", "json", "validate"], capsys
    )
    assert code == 0 and err == "" and json.loads(out)["warnings"] == []
