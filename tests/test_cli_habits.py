"""Habits of `globus` CLI users: -h, --version, -F after the subcommand, JSON errors with
the same exit codes, shell completion, key: value records, and network failures that name
the unreachable service after a bounded wait."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.cli.context import Context
from dichroism_control.cli.main import hoist_format, requested_format
from tests.deploy.helpers import CLIENT_SECRET, client_env, run_cli, started_mock, token_callback
from tests.fakes import FakeBackend
from tests.test_causes import ARCHIVE_TRACEBACK, _action, _caught
from tests.watcher.conftest import pin_ids


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status", "-F", "json"], ["--format", "json", "status"]),
        (
            ["--config", "c.yml", "runs", "list", "--format=json"],
            ["--config", "c.yml", "--format", "json", "runs", "list"],
        ),
        (["runs", "show", "R1", "-Fjson"], ["--format", "json", "runs", "show", "R1"]),
        # a global -F before the command stays; a later one comes after it (and wins)
        (["-F", "text", "status", "-F", "json"], ["-F", "text", "--format", "json", "status"]),
        # after `--` nothing is an option
        (["run-local", "--", "-F", "json"], ["run-local", "--", "-F", "json"]),
    ],
)
def test_hoist_format(args: list[str], expected: list[str]) -> None:
    assert hoist_format(args) == expected


def test_requested_format_is_the_last_one() -> None:
    assert requested_format(["-F", "text", "status", "-F", "json"]) == "json"
    assert requested_format(["status"]) == "text"


@pytest.fixture
def config_path(write_config: Callable[..., Path]) -> Path:
    return write_config(pin_ids)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()
    monkeypatch.setattr(Context, "backend", lambda self, **kwargs: backend)
    return backend


def test_help_version_and_format_after_the_subcommand(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("-h", "--help"):
        code, out, _ = run_cli([flag], capsys)
        assert code == 0 and out.startswith("Usage: dichroism [OPTIONS] COMMAND")
    code, out, _ = run_cli(["runs", "list", "-h"], capsys)
    assert code == 0 and "Usage: dichroism runs list" in out and "--limit" in out

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("dichroism 0.1.0 (python 3.")

    code, out, _ = run_cli(["--config", str(config_path), "status", "-F", "json"], capsys)
    assert code == 0 and set(json.loads(out)) == {
        "beamlines",
        "failures",
        "batch_failures",
        "health",
    }


def test_shell_completion(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--show-completion", "bash"], capsys)
    assert code == 0 and "_dichroism_completion" in out and "complete " in out


def test_errors_under_json_are_one_document_with_the_same_exit_codes(
    tmp_path: Path, config_path: Path, fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yml"
    code, out, err = run_cli(["--config", str(missing), "status", "-F", "json"], capsys)
    assert code == 2 and err == ""
    assert json.loads(out) == {
        "error": {
            "message": f"{missing}: config file not found",
            "exit_code": 2,
            "kind": "ConfigError",
        }
    }
    code, text_out, err = run_cli(["--config", str(missing), "status"], capsys)
    assert (code, text_out) == (2, "")
    assert err == f"dichroism: error: {missing}: config file not found\n"

    # A usage error: exit 2, as JSON too.
    code, out, _ = run_cli(["-F", "json", "status", "--no-such-option"], capsys)
    assert code == 2
    assert json.loads(out)["error"] == {
        "message": "No such option: --no-such-option",
        "exit_code": 2,
        "kind": "usage",
    }
    code, out, err = run_cli(["status", "--no-such-option"], capsys)
    assert code == 2 and out == "" and "No such option: --no-such-option" in err

    # An operation that failed: exit 1, with what the service said.
    code, out, _ = run_cli(
        ["--config", str(config_path), "runs", "show", "nope", "-F", "json"], capsys
    )
    assert code == 1
    error = json.loads(out)["error"]
    assert error["exit_code"] == 1 and error["http_status"] == 404
    assert error["kind"] == "PermanentBackendError" and "404 NOT_FOUND" in error["message"]


def test_a_command_that_printed_its_document_keeps_stdout_one_document(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # status --check prints its report, then exits 1: stdout still parses as one document.
    code, out, _ = run_cli(
        ["--config", str(config_path), "-F", "json", "status", "--check"], capsys
    )
    assert code == 1
    report = json.loads(out)
    assert report["healthy"] is False and report["problems"][0]["code"] == "watcher"


def test_runs_show_is_a_record_and_logs_carry_the_cause(
    config_path: Path, fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    from dichroism_control.backend import RunRequest

    fake.add_flow("f")  # the fake starts runs only of flows it knows, as Flows does (404)
    run = fake.run_flow(RunRequest("f", {}, "bl402 archive P1_x", ["dichroism", "archive"]))
    action = _action({"exception": ARCHIVE_TRACEBACK}, state="ArchiveToTape")
    fake.runs[run["run_id"]].update(
        status="FAILED",
        start_time="2026-01-01T00:00:00+00:00",
        completion_time="2026-01-01T00:05:00+00:00",
        details={
            "state_name": "ArchiveFailed",
            "error": "ArchiveFailed",
            "cause": "... The error details are in the run's output under $.error.",
            "output": {"error": _caught(action)},
        },
    )
    code, out, _ = run_cli(["--config", str(config_path), "runs", "show", run["run_id"]], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"Run ID:       {run['run_id']}"
    assert "Run Label:    bl402 archive P1_x" in lines
    assert "Run Tags:     dichroism, archive" in lines and "Status:       FAILED" in lines
    local = datetime.fromisoformat("2026-01-01T00:00:00+00:00").astimezone()
    assert f"Started At:   {local:%Y-%m-%d %H:%M:%S}" in lines  # local time, as `globus` prints
    assert "Cause:        ArchiveFailed: NotADirectoryError: [Errno 20] Not a directory: " in out
    assert "Next Step:    check that the path exists" in out

    def logs(run_id: str) -> Iterator[dict[str, Any]]:
        yield {"time": "2026-01-01T00:00:00+00:00", "code": "FlowStarted", "description": "go"}
        yield {
            "time": "2026-01-01T00:04:00+00:00",
            "code": "ActionFailed",
            "description": "State ArchiveToTape of type Action failed",
            "details": {"state_name": "ArchiveToTape", "error": _caught(action)},
        }

    fake.iter_run_logs = logs  # type: ignore[method-assign]
    code, out, _ = run_cli(["--config", str(config_path), "runs", "logs", run["run_id"]], capsys)
    assert code == 0
    assert (
        "ActionFailed: State ArchiveToTape of type Action failed\n    cause: NotADirectoryError"
        in out
    )
    code, out, _ = run_cli(
        ["--config", str(config_path), "runs", "logs", run["run_id"], "-F", "json"], capsys
    )
    # JSON: the entries as the service gave them, the Cause string untouched.
    assert json.loads(out)["entries"][1]["details"]["error"]["Cause"] == _caught(action)["Cause"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_service_is_named_after_a_bounded_wait(
    config_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(monkeypatch)
    port = _closed_port()
    flows = f"http://127.0.0.1:{port}/"
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_FLOWS", flows)
    with started_mock() as mock:
        from globus_sdk.config import get_service_url

        mock.add_callback(
            "POST",
            get_service_url("auth").rstrip("/") + "/v2/oauth2/token",
            callback=token_callback,
            content_type="application/json",
        )
        mock.add_passthru(flows.rstrip("/"))  # the real, closed port
        started = time.monotonic()
        code, out, err = run_cli(["--config", str(config_path), "runs", "list"], capsys)
        waited = time.monotonic() - started
        assert code == 1
        assert err.startswith(
            f"dichroism: error: Globus Flows unreachable at {flows} (connection refused); "
        )
        assert "GLOBUS_SDK_SERVICE_URL_FLOWS" in err and "proxy" in err
        # The SDK's default retries took ~13 s of silence; one short retry remains.
        assert waited < 5.0, waited

        code, out, _ = run_cli(["--config", str(config_path), "-F", "json", "runs", "list"], capsys)
        assert code == 1
        error = json.loads(out)["error"]
        assert (
            error["kind"] == "TransientBackendError"
            and "Globus Flows unreachable" in error["message"]
        )
        assert CLIENT_SECRET not in out + err


def test_an_unreachable_auth_service_is_named_too(
    config_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(monkeypatch)
    port = _closed_port()
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", f"http://127.0.0.1:{port}/")
    with started_mock() as mock:
        mock.add_passthru(f"http://127.0.0.1:{port}")
        started = time.monotonic()
        code, _, err = run_cli(["--config", str(config_path), "runs", "list"], capsys)
        waited = time.monotonic() - started
    assert code == 1 and "Globus Auth unreachable at http://127.0.0.1:" in err
    assert "GLOBUS_SDK_SERVICE_URL_AUTH" in err
    assert waited < 5.0, waited
