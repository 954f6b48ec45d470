"""A flight-check run read step by step: remedies that name the login command, the identity
and collection that need access, the endpoint's PATH; the ledger's merged view; a run
waiting for consent is reported and cancelled; the canary directory is never a scan."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dichroism_control.config import Config
from dichroism_control.deploy_state import Deployment
from dichroism_control.flight import canary as canaries
from dichroism_control.flight.runner import check
from dichroism_control.flight.verdict import META_KEY, Who, judge, record
from dichroism_control.ledger import Ledger
from dichroism_control.routing import matches
from tests.conftest import IDS
from tests.fakes import FakeBackend
from tests.lifecycle.conftest import FLOWS, FUNCTIONS

WHO = Who(identity="the service client 7d7d7d7d", login="dichroism login --force")
DEPLOYMENT = Deployment(
    {**FLOWS, "flight_check": "5f1e0000-0000-4000-8000-00000000f004"},
    {**FUNCTIONS, "flight_check_endpoint": "5f1e0000-0000-4000-8000-0000000fc009"},
)


def _canary(config: Config) -> canaries.Canary:
    return canaries.fixed(config, "bl402")


def _action_failed(status: dict[str, Any]) -> dict[str, Any]:
    """A Catch's record of an ActionFailedException: the action status, JSON-dumped."""
    return {"Error": "ActionFailedException", "Cause": json.dumps(status)}


def test_permission_denied_names_the_identity_and_the_collections(config: Config) -> None:
    task = {
        "DATA_TYPE": "task",
        "status": "FAILED",
        "fatal_error": {"code": "PERMISSION_DENIED", "description": "write on /global/cfs"},
    }
    run = {
        "run_id": "r1",
        "status": "FAILED",
        "details": {
            "output": {
                "copy_error": _action_failed({"status": "FAILED", "details": task}),
                "stat": {"details": {"code": "NotFound"}},
            }
        },
    }
    verdict = judge(run, canary=_canary(config), config=config, who=WHO, delete_source=False, at=1)
    steps = {s.step: s for s in verdict.steps}
    assert verdict.verdict == "failed"
    assert steps["transfer"].detail == "PERMISSION_DENIED: write on /global/cfs"
    remedy = steps["transfer"].remedy or ""
    assert remedy.startswith("grant the service client 7d7d7d7d read on bl402-compute-dtn")
    assert f"write on bl402-nersc_alsdev_raw ({IDS['bl402_cfs']})" in remedy
    assert steps["stat"].verdict == "failed" and steps["stat"].detail == "the copy is not at CFS"
    assert steps["delete_source"].verdict == "skipped"
    assert steps["nersc"].verdict == "not_run"


def test_a_run_waiting_for_consent_names_the_login_command(config: Config) -> None:
    run = {
        "run_id": "r2",
        "status": "INACTIVE",
        "details": {
            "code": "ConsentRequired",
            "description": "Missing required data_access consent",
        },
    }
    verdict = judge(run, canary=_canary(config), config=config, who=WHO, delete_source=True, at=1)
    (first, *rest) = verdict.steps
    assert (first.step, first.verdict) == ("run", "failed")
    assert first.detail.startswith("waiting for a person (INACTIVE): ")
    assert "ConsentRequired" in first.detail
    assert first.remedy is not None and "run `dichroism login --force`" in first.remedy
    assert {s.verdict for s in rest} == {"not_run"}


def test_an_endpoint_check_reports_its_own_remedy_and_an_offline_endpoint(
    config: Config,
) -> None:
    def compute(result: dict[str, Any]) -> dict[str, Any]:
        return {"details": {"result": [result], "results": [{"output": result}]}}

    nersc = {
        "ok": False,
        "host": "nid001",
        "checks": [
            {
                "name": "hsi",
                "ok": False,
                "detail": "hsi is not on PATH (/usr/bin)",
                "remedy": "put hsi on the NERSC Compute endpoint's PATH",
            },
            {"name": "htar", "ok": True, "detail": "/usr/bin/htar", "remedy": None},
        ],
    }
    offline = {"Error": "ActionUnableToRun", "Cause": "EndpointNotFound: endpoint is offline"}
    run = {
        "run_id": "r3",
        "status": "FAILED",
        "details": {"output": {"nersc": compute(nersc), "scicat_error": offline}},
    }
    verdict = judge(run, canary=_canary(config), config=config, who=WHO, delete_source=False, at=1)
    steps = {s.step: s for s in verdict.steps}
    assert steps["nersc"].detail == "hsi: hsi is not on PATH (/usr/bin) (host nid001)"
    assert steps["nersc"].remedy == "put hsi on the NERSC Compute endpoint's PATH"
    assert steps["scicat"].verdict == "failed" and "offline" in steps["scicat"].detail
    assert "endpoint is online" in (steps["scicat"].remedy or "")


def test_record_merges_beamlines_worst_verdict_and_oldest_time(config: Config) -> None:
    ledger = Ledger(config.ledger_path)
    ok = {"run_id": "a", "status": "SUCCEEDED", "details": {"output": {}}}
    good = judge(ok, canary=_canary(config), config=config, who=WHO, delete_source=False, at=100)
    # An empty output: no step reached; "SUCCEEDED" without results is not "ok".
    assert good.verdict == "unknown"
    bad_run = {"run_id": "b", "status": "FAILED", "details": {"output": {"nersc_error": "boom"}}}
    canary631 = canaries.fixed(config, "bl631")
    bad = judge(bad_run, canary=canary631, config=config, who=WHO, delete_source=False, at=50)
    record(ledger, [good])
    value = record(ledger, [bad])
    assert value["verdict"] == "failed" and value["at"] == 50
    assert set(value["beamlines"]) == {"bl402", "bl631"}
    assert value["detail"] == ("bl402 run: the run succeeded without reporting every step")
    steps = {(s["beamline"], s["step"]): s["verdict"] for s in value["steps"]}
    assert steps[("bl631", "nersc")] == "failed" and steps[("bl402", "run")] == "unknown"
    assert ledger.get_meta(META_KEY) == value


def test_check_cancels_a_run_that_waits_for_consent(config: Config) -> None:
    """It cannot finish by waiting, and its canary is gone once the check ends."""
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import load_document

    ledger = Ledger(config.ledger_path)
    backend = FakeBackend()
    doc = load_document(config.definitions_path / "flight_check.json", name="flight_check")
    schema = specialise(doc, config, functions=DEPLOYMENT.functions).input_schema
    backend.add_flow(DEPLOYMENT.flows["flight_check"], schema)
    real_run = backend.run_flow

    def inactive(request: Any) -> dict[str, Any]:
        run = real_run(request)
        backend.make_inactive(run["run_id"], description="consent for data_access")
        return run

    backend.run_flow = inactive  # type: ignore[method-assign]
    report = check(config, ledger, backend, DEPLOYMENT, who=WHO, beamlines=["bl402"], timeout=5)
    (verdict,) = report.verdicts
    assert verdict.verdict == "failed" and verdict.status == "INACTIVE"
    assert "dichroism login --force" in (verdict.steps[0].remedy or "")
    (run,) = backend.runs.values()
    assert run["status"] == "FAILED"  # cancelled: Flows ends it FAILED (FlowCanceled)
    assert report.removed and not any(canaries.directory(config, "bl402").iterdir())
    # Its request: a fresh canary, deleted at both ends, found by the check's own tag.
    (request,) = backend.requests
    source = request.body["input"]["source"]
    assert source["delete"] is True and "/.dichroism-canary/bl402-" in source["path"]
    assert request.tags == ["dichroism", "bl402", "flight_check", "dichroism-check:bl402"]
    assert request.label.startswith("bl402 flight check ")


def test_a_refused_run_and_an_unwritable_watch_root(config: Config) -> None:
    from dichroism_control.errors import PermanentBackendError

    ledger = Ledger(config.ledger_path)
    backend = FakeBackend()
    backend.fail_next = [
        PermanentBackendError("403 FORBIDDEN: not a flow starter", http_status=403)
    ]
    report = check(config, ledger, backend, DEPLOYMENT, who=WHO, beamlines=["bl402"], timeout=5)
    (verdict,) = report.verdicts
    assert verdict.steps[0].step == "run" and "not a flow starter" in verdict.steps[0].detail
    assert not any(canaries.directory(config, "bl402").iterdir())  # its canary removed

    root = canaries.directory(config, "bl631").parent
    root.rmdir()  # the share is not mounted
    report = check(config, ledger, backend, DEPLOYMENT, who=WHO, beamlines=["bl631"], timeout=5)
    (verdict,) = report.verdicts
    assert verdict.steps[0].step == "canary" and "not mounted" in verdict.steps[0].detail
    assert not root.exists()  # never created here


@pytest.mark.parametrize("ignore", [[], ["*.tmp"]])
def test_the_canary_directory_is_never_a_scan(config: Config, ignore: list[str]) -> None:
    beamline = config.beamlines["bl402"].model_copy(
        update={"watch": config.beamlines["bl402"].watch.model_copy(update={"ignore": ignore})}
    )
    assert not matches(beamline, ".dichroism-canary/bl402.dat")
    assert not matches(beamline, "P1/.dichroism-canary/x.dat")
    assert matches(beamline, "P1/scan.h5")
