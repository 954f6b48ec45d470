"""The flight check end to end on the local backend: the real flight_check definition, the
local Transfer and Compute providers, the fake hsi/htar and the SciCat stand-in; `dichroism
check` and the recurring timer the lifecycle keeps."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.cli.context import Context
from dichroism_control.config import CANARY_DIR
from dichroism_control.flight import canary as canaries
from dichroism_control.health import assess
from dichroism_control.ledger import Ledger
from dichroism_control.lifecycle import Lifecycle
from dichroism_control.lifecycle.flight import TIMERS_KEY
from dichroism_control.routing import cfs_root_path
from tests.deploy.helpers import run_cli
from tests.e2e.conftest import Stack

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setattr(Context, "backend", lambda self, **kwargs: stack.backend)
    monkeypatch.setattr(Context, "deployment", lambda self: stack.deployment)
    config_path = Path(stack.config.base_dir) / "config.yml"

    def run(*args: str) -> tuple[int, str, str]:
        return run_cli(["--config", str(config_path), *args], capsys)

    return run


def _cfs_canaries(stack: Stack, beamline: str) -> list[str]:
    folder = Path(cfs_root_path(stack.config, beamline)) / CANARY_DIR
    return sorted(os.listdir(folder)) if folder.exists() else []


def _source_canaries(stack: Stack, beamline: str) -> list[str]:
    folder = canaries.directory(stack.config, beamline)
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_check_round_trip_passes_and_leaves_nothing_behind(stack: Stack, cli: Cli) -> None:
    # A leftover of a check that died an hour ago, and the timer's canary, which stays.
    leftover = canaries.fresh(stack.config, "bl402", now=time.time() - 7200)
    os.utime(leftover.local_path, (time.time() - 7200, time.time() - 7200))
    fixed, _ = canaries.keep_fixed(stack.config, "bl402")

    code, out, err = cli("-F", "json", "check")
    assert code == 0, (out, err)
    doc = json.loads(out)
    # The dead check's canary went; the timer's stays.
    assert doc["leftovers_removed"] == [str(leftover.local_path)]
    assert doc["verdict"] == "ok" and [b["beamline"] for b in doc["beamlines"]] == [
        "bl402",
        "bl631",
    ]
    for item in doc["beamlines"]:
        assert item["status"] == "SUCCEEDED"
        assert item["link"] == f"https://app.globus.org/runs/{item['run_id']}"
        assert {s["step"]: s["verdict"] for s in item["steps"]} == {
            "transfer": "ok",
            "stat": "ok",
            "delete_cfs": "ok",
            "delete_source": "ok",
            "nersc": "ok",
            "scicat": "ok",
        }
        # Deleted at both ends; nothing of a check is left here either.
        assert _cfs_canaries(stack, item["beamline"]) == []
    assert _source_canaries(stack, "bl402") == [fixed.local_path.name]
    assert _source_canaries(stack, "bl631") == []
    code, out, _ = cli("check")
    assert code == 0 and out.rstrip().endswith("flight check: ok")
    assert re.search(r"^Copy compute-dtn -> CFS, MD5 verified:\s+ok: \d+ bytes copied", out, re.M)
    assert re.search(r"^Delete the canary at compute-dtn:\s+ok: deleted$", out, re.M)

    ledger = Ledger(stack.config.ledger_path)
    meta = ledger.get_meta("last_flight_check")
    assert meta["verdict"] == "ok" and meta["detail"] is None
    assert {s["beamline"] for s in meta["steps"]} == {"bl402", "bl631"}
    assert set(meta["beamlines"]) == {"bl402", "bl631"}
    report = assess(stack.config, ledger)
    assert report.flight_check["verdict"] == "ok"
    assert "flight_check" not in {p.code for p in report.problems}
    status = json.loads(cli("-F", "json", "status")[1])
    assert status["health"]["flight_check"]["verdict"] == "ok"
    # The canary directory is never a scan: no scan was ever recorded from it.
    assert ledger.query("SELECT COUNT(*) FROM scans")[0][0] == 0


def test_a_failing_check_names_each_step_and_its_remedy(
    stack: Stack, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HPSS down at NERSC, and a CFS canary directory the copy cannot go into.
    monkeypatch.setenv("FAKE_HPSS_FAIL", "hsi")
    blocker = Path(cfs_root_path(stack.config, "bl402")) / CANARY_DIR
    blocker.write_text("not a directory")

    code, out, err = cli("-F", "json", "check", "--beamline", "bl402")
    assert code == 1, err
    doc = json.loads(out)
    assert doc["verdict"] == "failed"
    (item,) = doc["beamlines"]
    steps = {s["step"]: s for s in item["steps"]}
    assert steps["transfer"]["verdict"] == "failed" and steps["transfer"]["remedy"]
    assert steps["nersc"]["verdict"] == "failed"
    assert "hpss: `hsi -q ls -d" in steps["nersc"]["detail"]
    assert "check HPSS" in steps["nersc"]["remedy"]
    # The steps that did not depend on the copy still ran and passed.
    assert steps["scicat"]["verdict"] == "ok" and steps["delete_source"]["verdict"] == "ok"
    assert _source_canaries(stack, "bl402") == []

    ledger = Ledger(stack.config.ledger_path)
    meta = ledger.get_meta("last_flight_check")
    assert meta["verdict"] == "failed" and meta["detail"].startswith("bl402 transfer: ")
    code, out, _ = cli("status", "--check")
    assert code == 1 and "flight check: failed" in out
    text = cli("check", "--beamline", "bl402")[1]
    assert "FAILED" in text and "next: check HPSS" in text


def test_check_before_the_flow_is_deployed_is_a_one_line_error(
    stack: Stack, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dichroism_control.deploy_state import Deployment

    flows = {k: v for k, v in stack.deployment.flows.items() if k != "flight_check"}
    monkeypatch.setattr(
        Context, "deployment", lambda self: Deployment(flows, stack.deployment.functions)
    )
    code, out, err = cli("check")
    assert code == 2 and out == ""
    assert err.strip() == (
        "dichroism: error: flow 'flight_check' is not deployed: run `dichroism deploy` (or pin"
        " globus.flows.flight_check.id in config.yml)"
    )
    assert _source_canaries(stack, "bl402") == []


class _Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _fire_now(stack: Stack) -> list[str]:
    """What Timers does when a timer is due: start its run (the local store's timers fire
    on real time; the test brings their next run forward instead of waiting for it). The
    backend's own timer thread may start some of them: the new runs are read back."""
    flight = [stack.flows["flight_check"]]
    before = {r["run_id"] for r in stack.backend.iter_runs(flow_ids=flight)}
    stack.backend.store.execute(
        "UPDATE local_timers SET run_at = ? WHERE status = 'loaded'", (time.time() - 1,)
    )
    due = len(_flight_timers(stack))
    deadline = time.monotonic() + 30
    while True:
        new = {r["run_id"] for r in stack.backend.iter_runs(flow_ids=flight)} - before
        if len(new) >= due or time.monotonic() > deadline:
            return sorted(new)
        time.sleep(0.05)


def test_the_recurring_timer_checks_with_the_canary_the_lifecycle_keeps(stack: Stack) -> None:
    ledger = Ledger(stack.config.ledger_path)
    clock = _Clock()
    # Every 36 s: the runs the test fires one after the other are each the one due.
    every = stack.config.flight_check.model_copy(update={"interval_hours": 0.01})
    config = stack.config.model_copy(update={"flight_check": every})
    loop = Lifecycle(config, ledger, stack.backend, stack.deployment, clock=clock)
    summary = loop.run_once()
    assert summary["flight_timers_scheduled"] == 2 and summary["flight_canaries_written"] == 2
    timers = [t for t in stack.backend.iter_timers() if t["name"].endswith("flight check")]
    assert sorted(t["name"] for t in timers) == ["bl402 flight check", "bl631 flight check"]
    assert {t["schedule"]["type"] for t in timers} == {"recurring"}
    assert {t["schedule"]["interval_seconds"] for t in timers} == {36}
    fixed = canaries.fixed(stack.config, "bl402")
    assert fixed.local_path.read_bytes() == canaries.FIXED_BYTES
    # Nothing changed: the next pass creates nothing.
    assert "flight_timers_scheduled" not in loop.run_once()

    first = _fire_now(stack)
    assert len(first) == 2
    runs = [stack.backend.wait(run_id, timeout=60) for run_id in first]
    assert {r["status"] for r in runs} == {"SUCCEEDED"}
    clock.offset = 120  # past the time the first runs were due
    summary = loop.run_once()
    assert summary["flight_check_ok"] == 2, summary
    meta = ledger.get_meta("last_flight_check")
    assert meta["verdict"] == "ok"
    steps = {(s["beamline"], s["step"]): s["verdict"] for s in meta["steps"]}
    assert steps[("bl402", "delete_source")] == "skipped"
    assert steps[("bl402", "transfer")] == "ok" and steps[("bl631", "scicat")] == "ok"
    # The source canary stays for the next run; nothing stays at CFS.
    assert fixed.local_path.read_bytes() == canaries.FIXED_BYTES
    assert _cfs_canaries(stack, "bl402") == [] and _cfs_canaries(stack, "bl631") == []

    # The next run, same fixed body: another CFS name (from its run id), recorded too.
    entries = ledger.get_meta(TIMERS_KEY)
    assert entries["bl402"]["last_run_id"] in first
    second = _fire_now(stack)
    runs += [stack.backend.wait(run_id, timeout=60) for run_id in second]
    names = {r["details"]["output"]["canary"]["destination_path"] for r in runs}
    assert len(names) == 4 and all(f"/{CANARY_DIR}/" in n for n in names)
    assert loop.run_once()["flight_check_ok"] == 2
    assert ledger.get_meta(TIMERS_KEY)["bl402"]["last_run_id"] in second


def test_changing_or_disabling_the_flight_check_replaces_or_removes_its_timers(
    stack: Stack,
) -> None:
    ledger = Ledger(stack.config.ledger_path)
    loop = Lifecycle(stack.config, ledger, stack.backend, stack.deployment)
    loop.run_once()
    before = {t["job_id"] for t in _flight_timers(stack)}
    assert len(before) == 2

    faster = stack.config.model_copy(
        update={"flight_check": stack.config.flight_check.model_copy(update={"interval_hours": 6})}
    )
    summary = Lifecycle(faster, ledger, stack.backend, stack.deployment).run_once()
    assert summary["flight_timers_scheduled"] == 2
    after = _flight_timers(stack)
    assert not before & {t["job_id"] for t in after}
    assert {t["schedule"]["interval_seconds"] for t in after} == {6 * 3600}

    off = faster.model_copy(
        update={"flight_check": faster.flight_check.model_copy(update={"enabled": False})}
    )
    summary = Lifecycle(off, ledger, stack.backend, stack.deployment).run_once()
    assert summary["flight_timers_deleted"] == 2
    assert _flight_timers(stack) == [] and ledger.get_meta(TIMERS_KEY) == {}


def _flight_timers(stack: Stack) -> list[dict[str, Any]]:
    return [t for t in stack.backend.iter_timers() if t["name"].endswith("flight check")]


def test_a_recurring_timer_fires_once_per_due_time_whoever_claims_it(stack: Stack) -> None:
    """Two claimers that read the same due list (the timer thread and a listing, or two
    processes): the first moves the timer to its next time, the second finds nothing due."""
    from dichroism_control.flight.request import flight_tag
    from dichroism_control.flight.request import request as flight_request

    canary, _ = canaries.keep_fixed(stack.config, "bl402")
    request = flight_request(
        stack.config,
        stack.deployment,
        canary,
        delete_source=False,
        label="x",
        tag=flight_tag("bl402"),
    )
    from datetime import UTC, datetime

    start = datetime.fromtimestamp(time.time() - 5, UTC)
    timer = stack.backend.create_recurring_flow_timer(
        name="t", interval_seconds=3600, start=start, request=request
    )
    # The backend's own timer thread may claim it too (it wakes on a new timer): so much
    # the better, three claimers for one due time.
    now = time.time()
    claims = [stack.backend.timers._fire(timer["job_id"], now) for _ in range(2)]
    assert claims.count(None) >= 1
    runs = list(stack.backend.iter_runs(flow_ids=[stack.flows["flight_check"]]))
    (run,) = runs
    assert stack.backend.wait(run["run_id"], timeout=60)["status"] == "SUCCEEDED"
    (doc,) = [t for t in stack.backend.iter_timers() if t["job_id"] == timer["job_id"]]
    assert doc["status"] == "loaded" and doc["n_runs"] == 1  # fixture V2_FLOW_TIMER
    assert datetime.fromisoformat(doc["next_run"]).timestamp() == start.timestamp() + 3600
