"""`dichroism runs cancel`: the scan of a cancelled new_file run stops (failed, cancelled),
is never sent again by itself, and says so; a finished run is refused with exit 1."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import urlparse

import globus_sdk
import pytest
import responses
from globus_sdk.testing import RegisteredResponse, get_last_request, load_response
from globus_sdk.transport import RetryConfig

from dichroism_control.cli.context import Context
from dichroism_control.globus_backend import GlobusBackend
from tests.lifecycle.conftest import T0
from tests.ops2.conftest import Ops


def test_cancelling_a_new_file_run_stops_its_scan(ops: Ops) -> None:
    (run_id,) = ops.on_disk(["P1/a.h5"])
    result = ops("runs", "cancel", run_id, "--by", "carol")
    assert result.code == 0, result.err
    first, second = result.out.splitlines()
    assert first == f"{run_id}: cancel requested (status FAILED)"  # FlowCanceled (fakes)
    assert "stopped: it will not be sent again" in second
    assert f"dichroism retry {ops.path('P1/a.h5')}" in second
    scan = ops.scan("P1/a.h5")
    assert scan["state"] == "failed" and scan["failed_step"] == "cancelled"
    assert scan["last_error"].startswith("cancelled by carol")

    # The lifecycle sees the run end (FAILED, FlowCanceled) and does not re-submit it.
    requests_before = len(ops.world.backend.requests)
    ops.world.lifecycle().run_once()
    ops.world.lifecycle().run_once()
    assert ops.scan("P1/a.h5")["state"] == "failed"
    assert len(ops.world.backend.requests) == requests_before
    status = ops("-F", "json", "status").json()
    (failure,) = status["failures"]
    assert failure["step"] == "cancelled" and "cancelled by carol" in failure["reason"]
    story = ops("-F", "json", "scan", "show", ops.path("P1/a.h5")).json()
    runs = story["versions"][0]["runs"]["new_file"]
    assert [(r["run_id"], r["status"]) for r in runs] == [(run_id, "FAILED")]

    # A person sends it again: the same version.
    assert ops("retry", ops.path("P1/a.h5")).code == 0
    assert ops.scan("P1/a.h5")["state"] == "detected"


def test_cancelling_a_finished_run_says_so_with_exit_1(ops: Ops) -> None:
    (run_id,) = ops.on_disk(["P1/a.h5"])
    ops.world.finish([run_id])
    result = ops("runs", "cancel", run_id)
    assert result.code == 1 and result.out == ""
    assert result.err.strip() == (
        f"dichroism: error: run {run_id} already finished (SUCCEEDED): nothing to cancel"
    )
    doc = ops("-F", "json", "runs", "cancel", run_id).json()
    assert doc["error"]["exit_code"] == 1 and "already finished" in doc["error"]["message"]
    assert ops.scan("P1/a.h5")["state"] == "submitted"  # the lifecycle records the success


def test_a_run_that_succeeds_before_the_cancel_lands_goes_on(ops: Ops) -> None:
    (run_id,) = ops.on_disk(["P1/a.h5"])

    def too_late(ident: str) -> dict[str, Any]:
        ops.world.finish([ident])
        return dict(ops.world.backend.runs[ident])

    ops.world.backend.cancel_run = too_late  # type: ignore[method-assign]
    doc = ops("-F", "json", "runs", "cancel", run_id).json()
    assert doc["status"] == "SUCCEEDED" and "before the cancel took effect" in doc["note"]
    assert ops.scan("P1/a.h5")["state"] == "submitted"
    ops.world.lifecycle().run_once()
    assert ops.scan("P1/a.h5")["state"] == "transferred"


def test_cancelling_an_archive_run_fails_its_group_without_a_new_run(ops: Ops) -> None:
    ops.world.finish(ops.on_disk(["P1/a.h5"]))
    ops.world.lifecycle().run_once()
    ops.world.clock.now = T0 + 3600
    ops.world.lifecycle().run_once()
    (live,) = ops.world.runs_of("archive", "ACTIVE")
    doc = ops("-F", "json", "runs", "cancel", live["run_id"]).json()
    assert doc["subject"]["kind"] == "group" and "--group" in doc["note"]
    ops.world.lifecycle().run_once()
    assert ops.world.runs_of("archive", "ACTIVE") == []
    (group,) = ops.world.ledger.query("SELECT * FROM archive_groups")
    assert group["state"] == "failed" and "cancelled by" in group["last_error"]
    assert ops.scan("P1/a.h5")["state"] == "failed"


def test_cancel_through_globus_sends_exactly_the_flows_calls(
    ops: Ops, mocked_http: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /runs/{id} (is it finished?), then POST /runs/{id}/cancel (SDK fixture)."""
    fixture = load_response("flows.cancel_run")
    run_id = fixture.metadata["run_id"]
    active = copy.deepcopy(fixture.json)  # type: ignore[attr-defined]
    active.update(status="ACTIVE", details={"code": "ActionStarted"})
    RegisteredResponse(service="flows", method="GET", path=f"/runs/{run_id}", json=active).add()
    backend = GlobusBackend(object())  # type: ignore[arg-type]
    backend.__dict__["flows"] = globus_sdk.FlowsClient(
        authorizer=globus_sdk.NullAuthorizer(), retry_config=RetryConfig(max_retries=0)
    )
    monkeypatch.setattr(Context, "backend", lambda self, **kwargs: backend)
    ops.on_disk(["P1/a.h5"])
    with ops.world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET run_id = ?", (run_id,))

    doc = ops("-F", "json", "runs", "cancel", run_id).json()
    calls = [(c.request.method, urlparse(c.request.url).path) for c in responses.calls]
    assert calls == [("GET", f"/runs/{run_id}"), ("POST", f"/runs/{run_id}/cancel")]
    assert get_last_request().body in (None, b"", "")
    # The fixture's run ends FAILED (FlowCanceled): the scan is stopped all the same.
    assert doc["status"] == "FAILED" and doc["subject"]["kind"] == "scan"
    assert ops.scan("P1/a.h5")["failed_step"] == "cancelled"
    assert json.loads(ops.world.ledger.query("SELECT cause FROM run_failures")[0][0])["line"]
