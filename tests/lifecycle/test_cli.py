"""`dichroism lifecycle --once` and `dichroism timers list|cancel` through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dichroism_control.cli.context import Context
from dichroism_control.cli.main import app
from dichroism_control.config import load_config
from dichroism_control.errors import ConfigError
from tests.lifecycle.conftest import DAY, T0, World


@pytest.fixture
def cli(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[World, Callable[..., Any]]:
    path = write_config()
    world = World(load_config(path))
    monkeypatch.setattr(Context, "backend", lambda self, timer_flows=None: world.backend)
    monkeypatch.setattr(Context, "deployment", lambda self: world.deployment)
    # The command builds Lifecycle with its default clock: make that default the test clock.
    monkeypatch.setattr(
        "dichroism_control.lifecycle.Lifecycle.__init__.__kwdefaults__",
        {"clock": world.clock},
    )

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, ["--config", str(path), *args])

    return world, run


def test_lifecycle_once_and_timers_list_cancel(cli: tuple[World, Callable[..., Any]]) -> None:
    world, run = cli
    world.finish(world.submitted([("bl402", "P1/a.h5", 1), ("bl402", "P1/b.h5", 2)]))
    result = run("--format", "json", "lifecycle", "--once")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["transferred"] == 2
    # A pass run on its own (cron) is stamped too: `status` shows when the last one ran.
    assert world.ledger.get_meta("last_lifecycle_pass")["errors"] == []
    world.clock.now = T0 + DAY
    result = run("lifecycle", "--once")
    assert result.exit_code == 0, result.output
    assert "prune_timers_scheduled=1" in result.stdout

    # A timer someone else made shows too, without a batch.
    world.backend.timers["foreign"] = {
        "job_id": "foreign",
        "name": "flight check",
        "status": "loaded",
        "next_run": None,
    }
    result = run("--format", "json", "timers", "list")
    assert result.exit_code == 0, result.output
    timers = json.loads(result.stdout)["timers"]
    ours = next(t for t in timers if t["batch"])
    assert (
        ours["files"] == 2 and ours["state"] == "scheduled" and ours["id"] in world.backend.timers
    )
    assert any(t["id"] == "foreign" and t["batch"] is None for t in timers)
    text = run("timers", "list").stdout
    assert "Next Run" in text and "Timer ID" in text and ours["name"] in text

    result = run("timers", "cancel", ours["id"])
    assert result.exit_code == 0, result.output
    assert "2 file(s) will be rebatched" in result.stdout
    assert ours["id"] not in world.backend.timers
    result = run("timers", "cancel", ours["id"])
    # (main() turns a ConfigError into exit code 2; CliRunner hands it back as is)
    assert isinstance(result.exception, ConfigError)
    assert "already cancelled" in str(result.exception)
    run("lifecycle", "--once")
    batches = {b["batch"]: b["state"] for b in world.batches()}
    assert sorted(batches.values()) == ["cancelled", "scheduled"]
    assert any(key.endswith("#2") for key in batches)


def test_status_shows_a_failed_prune_batch(cli: tuple[World, Callable[..., Any]]) -> None:
    """A failed prune changes no scan (nothing was deleted): status must still show it."""
    world, run = cli
    world.finish(world.submitted([("bl402", "P1/a.h5", 1)]))
    world.lifecycle().run_once()
    world.clock.now = T0 + 181 * DAY
    world.lifecycle().run_once()
    (run_id,) = world.fire_timers()
    world.finish(
        [run_id], "FAILED", error={"Error": "VerificationFailed", "Cause": "P1/a.h5: size differs"}
    )
    world.lifecycle().run_once()

    result = run("--format", "json", "status")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["failures"] == []
    (batch,) = report["batch_failures"]
    assert batch["step"] == "prune compute_dtn" and "size differs" in batch["reason"]
    assert batch["attempts"] == 1 and batch["files"] == 1
    # --format json: the whole recorded cause, not only its line.
    assert batch["cause"]["detail"]["caught"]["error"]["Error"] == "VerificationFailed"
    text = run("status")
    assert "Failed archive groups / prune batches (1):" in text.stdout
    assert "[1 attempt(s), 1 file(s) kept]: VerificationFailed: P1/a.h5: size differs" in (
        text.stdout
    )
    assert "No failures" not in text.stdout
    # timers list: the same one-line reason; under JSON also the whole cause.
    listed = json.loads(run("--format", "json", "timers", "list").stdout)["timers"]
    (failed,) = [t for t in listed if t["state"] == "failed"]
    assert failed["last_error"] == "VerificationFailed: P1/a.h5: size differs"
    assert failed["cause"]["step"] == "VerificationFailed"
    assert "VerificationFailed: P1/a.h5: size differs" in run("timers", "list").stdout
