"""`dichroism submit`, `status` and `runs list` through typer's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dichroism_control.cli.context import Context
from dichroism_control.cli.main import app
from tests.fakes import FakeBackend
from tests.watcher.conftest import pin_ids, write_file


@pytest.fixture
def cli(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, fake: FakeBackend
) -> Callable[..., Any]:
    config = write_config(pin_ids)
    monkeypatch.setattr(Context, "backend", lambda self, **kwargs: fake)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["--config", str(config), *args], catch_exceptions=False)

    return run


def test_submit_status_and_runs(cli: Callable[..., Any], tmp_path: Path, fake: FakeBackend) -> None:
    path = write_file(tmp_path / "data" / "bl402" / "P7" / "scan one.h5")
    first = cli("--format", "json", "submit", str(path), "--beamline", "bl402")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["state"] == "submitted" and doc["run_id"] in fake.runs
    assert doc["label"] == "bl402 P7/scan one.h5" and not doc["already_recorded"]

    again = cli("submit", str(path), "--beamline", "bl402")
    assert again.exit_code == 0 and "not submitted again" in again.stdout
    assert len(fake.requests) == 1

    status = cli("--format", "json", "status")
    report = json.loads(status.stdout)
    assert report["beamlines"]["bl402"]["states"]["submitted"] == 1
    assert report["beamlines"]["bl631"]["total"] == 0 and report["failures"] == []
    assert "bl402" in cli("status").stdout

    runs = cli("--format", "json", "runs", "list", "--limit", "5")
    listed = json.loads(runs.stdout)
    assert listed["count"] == 1 and listed["runs"][0]["run_id"] == doc["run_id"]
    assert listed["runs"][0]["flow"] == "new_file"
    assert doc["run_id"] in cli("runs", "list").stdout
    shown = json.loads(cli("--format", "json", "runs", "show", doc["run_id"]).stdout)
    assert shown["label"] == doc["label"]
    assert "FlowStarted" in cli("runs", "logs", doc["run_id"]).stdout
    cancelled = json.loads(cli("--format", "json", "runs", "cancel", doc["run_id"]).stdout)
    # Flows ends a canceled run FAILED, details.code FlowCanceled (SDK fixture
    # globus_sdk/testing/data/flows/cancel_run.py; globus-cli PR #834).
    assert cancelled["status"] == "FAILED"


def test_submit_refuses_paths_outside_the_root(cli: Callable[..., Any], tmp_path: Path) -> None:
    from dichroism_control.errors import ConfigError

    path = write_file(tmp_path / "elsewhere.h5")
    with pytest.raises(ConfigError, match="outside the watch root"):
        cli("submit", str(path), "--beamline", "bl402")


@pytest.mark.parametrize("name", [".hidden.h5", "scan.h5.part", "scan.tmp", "scan.h5~"])
def test_submit_honours_the_ignore_patterns(
    cli: Callable[..., Any], tmp_path: Path, fake: FakeBackend, name: str
) -> None:
    from dichroism_control.errors import ConfigError

    path = write_file(tmp_path / "data" / "bl402" / "P1" / name)
    with pytest.raises(ConfigError, match=r"not a scan for bl402 \(beamlines\.bl402\.watch\."):
        cli("submit", str(path), "--beamline", "bl402")
    assert fake.requests == []


def test_status_lists_failures_with_reasons(
    cli: Callable[..., Any], tmp_path: Path, fake: FakeBackend
) -> None:
    from dichroism_control.errors import DichroismError, PermanentBackendError

    fake.fail_next = [PermanentBackendError("400 BAD_REQUEST: input invalid", http_status=400)]
    path = write_file(tmp_path / "data" / "bl631" / "P1" / "bad.h5")
    with pytest.raises(DichroismError, match="400 BAD_REQUEST"):
        cli("submit", str(path), "--beamline", "bl631")
    text = cli("status").stdout
    assert "Recent failures (1)" in text and "400 BAD_REQUEST: input invalid" in text
    assert "[submit, 1 attempt(s)]" in text
    assert json.loads(cli("--format", "json", "status").stdout)["failures"][0]["step"] == "submit"
