"""The flight check through GlobusBackend at the HTTP level (responses + the SDK's fixtures):
the recurring timer the lifecycle creates, and the run `dichroism check` starts and reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_sdk.config import get_service_url
from globus_sdk.testing import RegisteredResponse, load_response
from globus_sdk.transport import RetryConfig

from dichroism_control.config import Config
from dichroism_control.deploy_state import Deployment
from dichroism_control.flight import canary as canaries
from dichroism_control.flight.runner import check
from dichroism_control.flight.verdict import Who
from dichroism_control.globus_backend import GlobusBackend
from dichroism_control.ledger import Ledger
from dichroism_control.lifecycle import Lifecycle
from tests.conftest import GROUP, IDS
from tests.lifecycle.conftest import FLOWS, FUNCTIONS, T0, Clock

FLIGHT_FUNCTION = "5f1e0000-0000-4000-8000-0000000fc009"


pytestmark = pytest.mark.usefixtures("mocked_http")


def _backend(flight_flow: str) -> GlobusBackend:
    """A GlobusBackend whose clients need no login (a NullAuthorizer, no retries)."""
    backend = GlobusBackend(object(), timer_flow_ids=[FLOWS["prune"], flight_flow])  # type: ignore[arg-type]
    retry = RetryConfig(max_retries=0)
    auth = globus_sdk.NullAuthorizer()
    backend.__dict__["timers"] = globus_sdk.TimersClient(authorizer=auth, retry_config=retry)
    backend.__dict__["flows"] = globus_sdk.FlowsClient(authorizer=auth, retry_config=retry)
    backend._specific[flight_flow] = globus_sdk.SpecificFlowClient(
        flight_flow, authorizer=auth, retry_config=retry
    )
    return backend


def _deployment(flight_flow: str) -> Deployment:
    return Deployment(
        {**FLOWS, "flight_check": flight_flow},
        {**FUNCTIONS, "flight_check_endpoint": FLIGHT_FUNCTION},
    )


def _input(config: Config, beamline: str, number: str, source: dict[str, Any]) -> dict[str, Any]:
    base = config.base_dir
    return {
        "beamline": beamline,
        "source": source,
        "destination": {
            "collection_id": IDS[f"{beamline}_cfs"],
            "directory": f"{base}/cfs/{number}/raw/.dichroism-canary",
        },
        "nersc": {
            "endpoint_id": IDS["nersc"],
            "function_id": FLIGHT_FUNCTION,
            "hpss_dir": f"/home/a/alsdev/data_mover/{number}/{beamline}/raw",
        },
        "scicat": {"endpoint_id": IDS["scicat"], "function_id": FLIGHT_FUNCTION},
    }


def test_the_recurring_timer_payload(config: Config) -> None:
    fixture = load_response("timer.create_timer", case="flow_timer_success")
    flight_flow = "5f1e0000-0000-4000-8000-00000000f004"
    ledger = Ledger(config.ledger_path)
    clock = Clock(T0)
    loop = Lifecycle(config, ledger, _backend(flight_flow), _deployment(flight_flow), clock=clock)
    summary = loop.flights.ensure({**FLOWS, "flight_check": flight_flow}, _counter(), [])
    del summary
    posts = [c for c in responses.calls if c.request.url.endswith("/v2/timer")]
    assert len(posts) == 2
    sent = [json.loads(c.request.body) for c in posts]
    fixed = canaries.fixed(config, "bl402")
    assert sent[0] == {
        "timer": {
            "timer_type": "flow",
            "flow_id": flight_flow,
            "name": "bl402 flight check",
            # RecurringTimerSchedule: every 12 h from a minute after the pass.
            "schedule": {
                "type": "recurring",
                "interval_seconds": 43200,
                "start": "2026-03-01T10:01:00+00:00",
            },
            "body": {
                "body": {
                    "input": _input(
                        config,
                        "bl402",
                        "4.0.2",
                        {
                            "collection_id": IDS["bl402_dtn"],
                            "path": f"{config.base_dir}/data/bl402/.dichroism-canary/bl402.dat",
                            "size": fixed.size,
                            "checksum": canaries.FIXED_MD5,
                            "delete": False,
                        },
                    )
                },
                "tags": ["dichroism", "bl402", "flight_check", "dichroism-flight:bl402"],
                "run_monitors": [GROUP],
                "run_managers": [GROUP],
            },
        }
    }
    assert sent[1]["timer"]["name"] == "bl631 flight check"
    entries = ledger.get_meta("flight_check_timers")
    assert {e["timer_id"] for e in entries.values()} == {fixture.metadata["timer_id"]}
    assert {e["state"] for e in entries.values()} == {"scheduled"}
    # The canary the body names is there, with the content its MD5 says.
    assert fixed.local_path.read_bytes() == canaries.FIXED_BYTES


def _counter() -> Any:
    from collections import Counter

    return Counter()


def _compute(result: dict[str, Any]) -> dict[str, Any]:
    return {"status": "SUCCEEDED", "details": {"result": [result], "results": [{"output": result}]}}


def test_check_starts_and_reads_the_run_with_exact_payloads(config: Config) -> None:
    fixture = load_response("flows.run_flow")
    flow_id = fixture.metadata["flow_id"]
    run_id = fixture.json["run_id"]  # type: ignore[attr-defined]
    backend = _backend(flow_id)
    seen: dict[str, Any] = {}

    def finished(request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(responses.calls[0].request.body)["body"]["input"]
        seen["size"] = body["source"]["size"]
        checks = [{"name": "hsi", "ok": True, "detail": "/usr/bin/hsi", "remedy": None}]
        output = {
            "input": body,
            "copy": {"status": "SUCCEEDED"},
            "stat": {"details": {"size": body["source"]["size"], "type": "file"}},
            "delete_cfs": {"status": "SUCCEEDED"},
            "delete_source": {"status": "SUCCEEDED"},
            "nersc": _compute({"ok": True, "host": "nid001", "checks": checks}),
            "scicat": _compute({"ok": True, "host": "scicat", "checks": checks}),
        }
        run = {**fixture.json, "status": "SUCCEEDED", "details": {"output": output}}  # type: ignore[attr-defined]
        return 200, {"Content-Type": "application/json"}, json.dumps(run)

    url = get_service_url("flows").rstrip("/") + f"/runs/{run_id}"
    responses.add_callback(responses.GET, url, callback=finished)
    ledger = Ledger(config.ledger_path)
    who = Who(identity="the service client x", login="dichroism login --force")
    report = check(
        config, ledger, backend, _deployment(flow_id), who=who, beamlines=["bl402"], timeout=5
    )
    assert report.ok, report.as_dict()
    calls = [(c.request.method, c.request.path_url) for c in responses.calls]
    assert calls == [("POST", f"/flows/{flow_id}/run"), ("GET", f"/runs/{run_id}")]
    sent = json.loads(responses.calls[0].request.body)
    source = sent["body"]["input"]["source"]
    assert sent["body"]["input"] == _input(config, "bl402", "4.0.2", source)
    assert source["collection_id"] == IDS["bl402_dtn"] and source["delete"] is True
    assert Path(source["path"]).parent == Path(f"{config.base_dir}/data/bl402/.dichroism-canary")
    assert source["size"] == seen["size"] > canaries.FRESH_BYTES
    assert sent["label"].startswith("bl402 flight check ")
    assert sent["tags"] == ["dichroism", "bl402", "flight_check", "dichroism-check:bl402"]
    assert sent["run_monitors"] == [GROUP] and sent["run_managers"] == [GROUP]
    assert sent["activity_notification_policy"] == {"status": ["INACTIVE", "FAILED"]}
    # The canary it wrote is gone here once the check ended.
    assert not Path(source["path"]).exists()


def test_a_changed_interval_deletes_the_old_timer_then_creates_the_new_one(
    config: Config,
) -> None:
    """DELETE /jobs/{id} (SDK fixture `timer.delete_job`), then POST /v2/timer."""
    created = load_response("timer.create_timer", case="flow_timer_success")
    deleted = load_response("timer.delete_job")
    flight_flow = "5f1e0000-0000-4000-8000-00000000f004"
    flows = {**FLOWS, "flight_check": flight_flow}
    ledger = Ledger(config.ledger_path)
    backend = _backend(flight_flow)
    Lifecycle(config, ledger, backend, _deployment(flight_flow), clock=Clock(T0)).flights.ensure(
        flows, _counter(), []
    )
    # As if the first timers had been created with the fixture's id for the delete.
    entries = ledger.get_meta("flight_check_timers")
    assert {e["timer_id"] for e in entries.values()} == {created.metadata["timer_id"]}
    entries["bl402"]["timer_id"] = deleted.metadata["job_id"]
    ledger.set_meta("flight_check_timers", entries)
    # bl631's timer is already gone: Timers answers 404 for it.
    gone = created.metadata["timer_id"]
    RegisteredResponse(
        service="timer",
        method="DELETE",
        path=f"/jobs/{gone}",
        status=404,
        json={"detail": "Not Found"},
    ).add()
    responses.calls.reset()  # type: ignore[no-untyped-call]

    every_6h = config.model_copy(
        update={"flight_check": config.flight_check.model_copy(update={"interval_hours": 6})}
    )
    errors: list[str] = []
    loop = Lifecycle(every_6h, ledger, backend, _deployment(flight_flow), clock=Clock(T0))
    loop.flights.ensure(flows, _counter(), errors)
    calls = [(c.request.method, c.request.path_url) for c in responses.calls]
    assert calls[:2] == [("DELETE", f"/jobs/{deleted.metadata['job_id']}"), ("POST", "/v2/timer")]
    assert json.loads(responses.calls[1].request.body)["timer"]["schedule"]["interval_seconds"] == (
        6 * 3600
    )
    # The 404 is taken as already gone, and the new timer is created all the same.
    assert calls[2:] == [("DELETE", f"/jobs/{gone}"), ("POST", "/v2/timer")]
    assert errors == []
