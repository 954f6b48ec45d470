"""The health report (`health.assess`): what status, --check, doctor, alerts and metrics share."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dichroism_control.cli.main import app
from dichroism_control.config import Config, load_config
from dichroism_control.health import assess
from dichroism_control.ledger import Ledger
from dichroism_control.liveness import Heartbeat, record_lifecycle_pass

NOW = 1_800_000_000.0
HOUR = 3600.0


def add_scan(
    ledger: Ledger,
    rel: str,
    state: str,
    *,
    beamline: str = "bl402",
    size: int = 1000,
    created: float = NOW,
    **columns: Any,
) -> int:
    fields = {
        "beamline": beamline,
        "path": f"/data/{beamline}/{rel}",
        "rel": rel,
        "size": size,
        "mtime": created,
        "state": state,
        "created_at": created,
        "updated_at": columns.pop("updated_at", created),
        **columns,
    }
    names = ", ".join(fields)
    marks = ", ".join("?" for _ in fields)
    with ledger.transaction() as conn:
        cursor = conn.execute(
            f"INSERT INTO scans ({names}) VALUES ({marks})", tuple(fields.values())
        )
    return int(cursor.lastrowid or 0)


def alive(ledger: Ledger, at: float | None = None, *, now: float = NOW, **components: bool) -> None:
    """A watch service that beat at `at` (default: 2 s before `now`) and passed 30 s ago."""
    at = now - 2 if at is None else at
    ledger.set_meta(
        "heartbeat",
        {"at": at, "pid": 11, "host": "acq", "started_at": at - HOUR, "components": components},
    )
    record_lifecycle_pass(ledger, {}, now=now - 30)


@pytest.fixture
def cfg(write_config: Callable[..., Path]) -> Config:
    return load_config(write_config())


@pytest.fixture
def ledger(cfg: Config) -> Ledger:
    return Ledger(cfg.ledger_path)


def codes(config: Config, ledger: Ledger, **kwargs: Any) -> list[str]:
    return [p.code for p in assess(config, ledger, now=NOW, **kwargs).problems]


def test_an_idle_pipeline_with_a_live_watcher_is_healthy(cfg: Config, ledger: Ledger) -> None:
    alive(ledger, settle=True, dispatch=True)
    report = assess(cfg, ledger, now=NOW)
    assert report.healthy and report.problems == []
    assert report.watcher["state"] == "alive" and report.flight_check == {"verdict": "never"}
    assert report.as_dict()["healthy"] is True


def test_watcher_never_stale_stopped_and_a_dead_thread(cfg: Config, ledger: Ledger) -> None:
    report = assess(cfg, ledger, now=NOW)
    assert report.watcher["state"] == "never" and [p.code for p in report.problems] == ["watcher"]

    alive(ledger, at=NOW - 61)  # threshold: health.heartbeat_stale_seconds = 60
    report = assess(cfg, ledger, now=NOW)
    assert report.watcher["state"] == "stale"
    assert "no heartbeat for 61 s" in report.problems[0].message

    ledger.set_meta("watch_stopped", {"at": NOW - 60, "pid": 11})
    report = assess(cfg, ledger, now=NOW)
    assert report.watcher["state"] == "stopped" and "clean shutdown" in report.problems[0].message

    alive(ledger, settle=True, dispatch=False)  # a newer heartbeat: running again
    report = assess(cfg, ledger, now=NOW)
    assert report.watcher["state"] == "alive"
    assert [p.message for p in report.problems] == [
        "watcher: its dispatch thread is not running (pid 11 on acq)"
    ]


def test_backlog_per_stage_with_the_oldest_item_and_thresholds(cfg: Config, ledger: Ledger) -> None:
    alive(ledger)
    add_scan(ledger, "P1/new.h5", "detected", created=NOW - 60)
    old = add_scan(ledger, "P1/old.h5", "detected", created=NOW - 2 * HOUR, size=5)
    add_scan(ledger, "P1/run.h5", "submitted", created=NOW - 3 * HOUR, submit_started_at=NOW - HOUR)
    add_scan(ledger, "P2/arc.h5", "archived", beamline="bl631", archived_at=NOW - 40 * 86400.0)
    report = assess(cfg, ledger, now=NOW)
    backlog = report.beamlines["bl402"]["backlog"]
    assert backlog["detected"]["count"] == 2 and backlog["detected"]["bytes"] == 1005
    assert backlog["detected"]["oldest_age_seconds"] == 2 * HOUR
    assert backlog["detected"]["oldest_scan_id"] == old
    assert backlog["submitted"]["oldest_age_seconds"] == HOUR  # since it was submitted
    # detected: threshold 15 min -> a problem; submitted: 1 day -> fine; archived scans wait
    # out their retention (180 days) and are not a backlog problem.
    assert [p.code for p in report.problems] == ["backlog:bl402:detected"]
    assert report.problems[0].ref == str(old)
    assert report.problems[0].message == (
        "bl402: 2 scan(s) detected, oldest 2 h 00 min (threshold 15 min)"
    )
    assert report.beamlines["bl631"]["backlog"]["archived"]["count"] == 1


def test_throughput_over_24_hours_and_overdue_prunes(cfg: Config, ledger: Ledger) -> None:
    alive(ledger)
    for i in range(6):
        add_scan(ledger, f"P1/t{i}.h5", "transferred", size=4000, transferred_at=NOW - i * HOUR)
    add_scan(ledger, "P1/yesterday.h5", "transferred", size=10**9, transferred_at=NOW - 25 * HOUR)
    # Transferred 185 days ago (retention 180 d + 2 d overdue allowance) and never pruned.
    add_scan(
        ledger,
        "P0/stale.h5",
        "archived",
        size=1,
        transferred_at=NOW - 185 * 86400.0,
        archived_at=NOW - 184 * 86400.0,
        dtn_pruned_at=None,
    )
    report = assess(cfg, ledger, now=NOW)
    moved = report.beamlines["bl402"]["throughput_24h"]["transferred"]
    assert moved == {"scans": 6, "bytes": 24000, "scans_per_hour": 0.25, "bytes_per_hour": 1000.0}
    assert report.beamlines["bl402"]["prune_overdue"] == {"compute_dtn": 1, "cfs": 1}
    assert {p.code for p in report.problems} >= {
        "prune_overdue:bl402:compute_dtn",
        "prune_overdue:bl402:cfs",
    }


def test_flight_check_never_failed_and_stale(cfg: Config, ledger: Ledger) -> None:
    alive(ledger)
    assert "flight_check" not in codes(cfg, ledger)  # "never" is shown, not a problem
    ledger.set_meta(
        "last_flight_check",
        {"verdict": "failed", "at": NOW - 600, "detail": "canary transfer: PERMISSION_DENIED"},
    )
    report = assess(cfg, ledger, now=NOW)
    assert report.problems[0].message == (
        "flight check: failed 10 min ago: canary transfer: PERMISSION_DENIED"
    )
    # An ISO time is accepted as well; a pass older than a day is a problem too.
    ledger.set_meta("last_flight_check", {"verdict": "ok", "at": "2027-01-13T00:00:00+00:00"})
    report = assess(cfg, ledger, now=NOW)
    assert report.flight_check["verdict"] == "ok"
    assert [p.code for p in report.problems] == ["flight_check"]
    ledger.set_meta("last_flight_check", {"verdict": "ok", "at": NOW - 60})
    assert codes(cfg, ledger) == []


def test_failures_refusals_and_the_waiting_for_a_person_plug_in(
    cfg: Config, ledger: Ledger, tmp_path: Path
) -> None:
    alive(ledger)
    add_scan(ledger, "P1/bad.h5", "failed", failed_step="new_file", last_error="x", attempts=3)
    present = tmp_path / "data" / "bl402" / "weird.h5"
    present.write_bytes(b"x")
    ledger.record_refusals(
        [
            ("bl402", str(present), "resolves outside the watch root"),
            ("bl402", str(tmp_path / "gone.h5"), "renamed away since"),
        ]
    )
    report = assess(cfg, ledger, now=NOW)
    assert [p.code for p in report.problems] == ["failed:bl402", "refusals"]
    assert report.refusals_total == 1 and report.refusals[0]["path"] == str(present)
    os.unlink(present)
    assert codes(cfg, ledger) == ["failed:bl402"]

    def inactive(_: Ledger) -> list[dict[str, Any]]:
        return [{"run_id": "r1", "label": "bl402 P1/a.h5", "cause": "ConsentRequired"}]

    report = assess(cfg, ledger, now=NOW, waiting=inactive)
    assert report.waiting[0]["run_id"] == "r1"
    assert report.problems[-1].message.startswith("1 run(s) waiting for a person (INACTIVE)")


def test_the_heartbeat_detects_a_crashed_predecessor(cfg: Config, ledger: Ledger) -> None:
    now = [NOW]

    def clock() -> float:
        return now[0]

    first = Heartbeat(ledger, interval=60, clock=clock)
    assert first.start() is None  # nothing ran before
    first.stop(clean=False)  # as if killed: no clean-stop record
    now[0] = NOW + 100
    second = Heartbeat(ledger, interval=60, clock=clock)
    crashed = second.start()
    assert crashed is not None and crashed["previous_heartbeat_at"] == NOW
    assert ledger.get_meta("last_unclean_restart")["at"] == NOW + 100
    now[0] = NOW + 101
    second.stop(clean=True)
    assert ledger.get_meta("watch_stopped")["at"] == NOW + 101
    now[0] = NOW + 200
    third = Heartbeat(ledger, interval=60, clock=clock)
    assert third.start() is None  # the previous one stopped cleanly
    third.stop()
    assert ledger.get_meta("last_unclean_restart")["at"] == NOW + 100  # unchanged


def test_status_check_exit_codes_and_one_line_per_problem(
    write_config: Callable[..., Path], cfg: Config, ledger: Ledger
) -> None:
    path = write_config()
    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(path), "status", "--check"])
    assert result.exit_code == 1
    assert result.stdout == "watcher: no heartbeat ever: `dichroism watch` has not run here\n"

    import time

    ledger.set_meta("heartbeat", {"at": time.time(), "pid": 1, "host": "h", "components": {}})
    record_lifecycle_pass(ledger, {})
    result = runner.invoke(app, ["--config", str(path), "status", "--check"])
    assert result.exit_code == 0 and result.stdout == ""  # cron: silent when healthy
    result = runner.invoke(app, ["--config", str(path), "status", "--check", "-F", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["healthy"] is True


def test_health_thresholds_are_strict_config(write_config: Callable[..., Path]) -> None:
    from dichroism_control.errors import ConfigError

    def bad(data: dict[str, Any]) -> None:
        data["health"] = {"backlog_age_warn_seconds": {"submited": 60}}

    with pytest.raises(ConfigError, match=r"^health\.backlog_age_warn_seconds\.submited: unknown"):
        load_config(write_config(bad))

    def good(data: dict[str, Any]) -> None:
        data["health"] = {
            "heartbeat_stale_seconds": 30,
            "backlog_age_warn_seconds": {"detected": 60},
        }

    config = load_config(write_config(good))
    assert config.health.heartbeat_stale_seconds == 30
    assert config.health.backlog_age_warn_seconds.detected == 60
    assert config.health.backlog_age_warn_seconds.submitted == 86400  # the documented default


def test_lifecycle_passes_must_keep_coming(cfg: Config, ledger: Ledger) -> None:
    def beat(started: float) -> None:
        ledger.set_meta("heartbeat", {"at": NOW - 1, "pid": 1, "host": "h", "started_at": started})

    beat(NOW - 60)  # just started: its first pass is not due yet
    assert codes(cfg, ledger) == []
    beat(NOW - 2 * HOUR)
    report = assess(cfg, ledger, now=NOW)
    assert [p.message for p in report.problems] == ["lifecycle: no pass in 2 h 00 min of watch"]
    record_lifecycle_pass(ledger, {"errors": ["listing runs: 503"]}, now=NOW - 1000)
    report = assess(cfg, ledger, now=NOW)
    assert report.lifecycle["errors"] == ["listing runs: 503"]
    assert [p.message for p in report.problems] == [
        "lifecycle: no pass for 16 min (threshold 15 min)"
    ]
    record_lifecycle_pass(ledger, {}, now=NOW - 10)
    assert codes(cfg, ledger) == []


def test_doctor_reports_the_same_problems_on_the_local_backend(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.deploy.helpers import run_cli

    path = write_config(backend="local")
    config = load_config(path)
    ledger = Ledger(config.ledger_path)
    add_scan(ledger, "P1/bad.h5", "failed", failed_step="new_file", attempts=3, last_error="x")
    expected = [p.message for p in assess(config, ledger).problems]
    code, out, _ = run_cli(["--config", str(path), "-F", "json", "doctor", "--offline"], capsys)
    health = [c for c in json.loads(out)["checks"] if c["check"] == "health"]
    assert [c["detail"] for c in health] == expected
    assert {c["status"] for c in health} == {"warn"}
    assert any("1 scan(s) failed permanently" in m for m in expected)
    assert code == 0  # doctor's verdict is about setup; `status --check` judges health


def test_inactive_runs_recorded_by_the_lifecycle_reach_the_report(
    cfg: Config, ledger: Ledger
) -> None:
    """The plug-in is the ledger's `runs_waiting` (written by the lifecycle loop)."""
    alive(ledger)
    scan_id = add_scan(ledger, "P1/a.h5", "submitted", run_id="r-new", label="bl402 P1/a.h5")
    with ledger.transaction() as conn:
        ledger.record_waiting(
            conn,
            run_id="r-new",
            flow="new_file",
            subject=f"scan:{scan_id}",
            code="ConsentRequired",
            reason="ConsentRequired: the data_access consent is missing",
            now=NOW - 600,
        )
    report = assess(cfg, ledger, now=NOW)
    assert report.waiting == [
        {
            "run_id": "r-new",
            "flow": "new_file",
            "beamline": "bl402",
            "label": "bl402 P1/a.h5",
            "since": NOW - 600,
            "cause": "ConsentRequired: the data_access consent is missing",
        }
    ]
    assert report.problems[-1].message.startswith("1 run(s) waiting for a person (INACTIVE)")
