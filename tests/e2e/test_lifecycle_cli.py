"""The ledger's lifecycle on the local backend (launcher + lifecycle loop), and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dichroism_control.cli.main import app
from dichroism_control.ledger import Ledger
from tests.e2e.conftest import Stack

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_scan_goes_through_every_lifecycle_state(stack: Stack) -> None:
    from dichroism_control.launcher import Launcher
    from dichroism_control.lifecycle import Lifecycle

    ledger = Ledger(stack.config.ledger_path)
    launcher = Launcher(stack.config, ledger, stack.backend, stack.deployment)
    path = stack.write_source("P7/scan_1.dat", 2000)
    scan = launcher.detect(str(path), beamline="bl402")
    assert scan is not None
    launcher.drain(scan_ids=[scan.id])
    loop = Lifecycle(stack.config, ledger, stack.backend, stack.deployment)
    states = [ledger.get_scan(str(path)).state]  # type: ignore[union-attr]
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        loop.run_once()
        state = ledger.get_scan(str(path)).state  # type: ignore[union-attr]
        if state != states[-1]:
            states.append(state)
        if state in ("pruned", "failed"):
            break
        time.sleep(0.2)
    assert states[-1] == "pruned", (states, ledger.get_scan(str(path)))
    # With no quiet period one pass may go transferred -> archive_submitted at once; the
    # timestamps prove every step happened.
    row = ledger.query("SELECT * FROM scans WHERE path = ?", (str(path),))[0]
    assert row["transferred_at"] and row["archived_at"]
    assert row["dtn_pruned_at"] and row["cfs_pruned_at"]
    assert "archived" in states
    assert not path.exists() and not stack.cfs("P7/scan_1.dat").exists()
    assert any(stack.config.resolve(stack.config.local.hpss_path).rglob("*.tar"))


def test_run_local_hello_world_tutorial(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DICHROISM_CONFIG", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "--format",
            "json",
            "run-local",
            str(EXAMPLES / "hello_world.json"),
            "--input",
            str(EXAMPLES / "hello_world_input.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["status"] == "SUCCEEDED"
    assert run["details"]["output"]["shout"]["message"] == "HELLO, DICHROISM!"


def test_local_backend_cli_smoke(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = Path(stack.config.base_dir) / "config.yml"
    runner = CliRunner()

    def call(*args: str) -> dict:  # type: ignore[type-arg]
        result = runner.invoke(
            app, ["--config", str(config_path), "--backend", "local", "--format", "json", *args]
        )
        assert result.exit_code == 0, (args, result.output, result.exception)
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    deployed = call("deploy")
    assert {f["name"] for f in deployed["flows"]} == {
        "new_file",
        "archive",
        "prune",
        "flight_check",
    }
    assert call("deploy")["flows"][0]["action"] == "unchanged"  # idempotent
    assert call("runs", "list", "--flow", "all")["count"] == 0
    assert call("timers", "list")["timers"] == []
    status = call("status")
    assert {name: b["total"] for name, b in status["beamlines"].items()} == {
        "bl402": 0,
        "bl631": 0,
    }
    assert status["failures"] == []

    path = stack.write_source("P3/scan_1.dat", 1200)
    call("submit", str(path), "--beamline", "bl402")
    status = call("status")
    states = status["beamlines"]["bl402"]["states"]
    assert status["beamlines"]["bl402"]["total"] == 1
    assert states["submitted"] == 1 and sum(states.values()) == 1
    assert status["beamlines"]["bl631"]["total"] == 0
    listed = call("runs", "list", "--flow", "new_file")
    assert listed["count"] == 1
