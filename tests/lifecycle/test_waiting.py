"""INACTIVE runs need a person: the lifecycle records them (`Ledger.waiting_runs`) and never
counts them as progress."""

from __future__ import annotations

import copy
from typing import Any

from globus_sdk.testing import RegisteredResponse, get_response_set

from dichroism_control.ledger import WaitingRun
from tests.lifecycle.conftest import DAY, T0, World
from tests.lifecycle.test_http import globus_backend

# A run that went INACTIVE for a missing consent, as the Flows API describes it: status
# INACTIVE (FlowRun.status), the reason in `details.code` / `details.description`
# ("an Action state is INACTIVE with a code value of 'ConsentRequired'": globus-sdk-javascript
# src/open-api/types/flows.ts, POST /runs/{run_id}/resume).
CONSENT = {
    "code": "ConsentRequired",
    "description": "The action requires a consent the run's identity has not given",
}


def _inactive(world: World, run_id: str, details: dict[str, Any] | None = None) -> None:
    world.backend.runs[run_id]["status"] = "INACTIVE"
    world.backend.runs[run_id]["details"] = dict(details or CONSENT)


def test_an_inactive_new_file_run_is_recorded_and_is_not_progress(world: World) -> None:
    """Source of the run document's shape: Flows OpenAPI `FlowRun` (status INACTIVE,
    `details`) and the resume operation's description of `ConsentRequired` (flows.ts)."""
    runs = world.submitted([("bl402", "P1/a.h5", 1), ("bl402", "P1/b.h5", 2)])
    (waiting_id, scan_id), (done_id, _) = list(runs.items())
    _inactive(world, waiting_id)
    world.finish([done_id])

    summary = world.lifecycle().run_once()
    assert summary["transferred"] == 1 and summary["runs_inactive"] == 1
    assert world.ledger.waiting_runs() == [
        WaitingRun(
            run_id=waiting_id,
            kind="new_file",
            subject=f"scan:{scan_id}",
            since=T0,
            code="ConsentRequired",
            reason="ConsentRequired: The action requires a consent the run's identity has"
            " not given",
        )
    ]
    scan = world.scans("id = ?", (scan_id,))[0]
    assert scan["state"] == "submitted" and scan["transferred_at"] is None

    world.clock.now = T0 + DAY  # still INACTIVE a day later: `since` does not move
    world.lifecycle().run_once()
    assert [w.since for w in world.ledger.waiting_runs()] == [T0]
    assert world.scans("id = ?", (scan_id,))[0]["state"] == "submitted"

    # Someone logged in and resumed it: it runs, then succeeds.
    world.backend.runs[waiting_id]["status"] = "ACTIVE"
    world.lifecycle().run_once()
    assert world.ledger.waiting_runs() == []
    world.finish([waiting_id])
    assert world.lifecycle().run_once()["transferred"] == 1


def test_inactive_archive_and_prune_runs_are_recorded_with_their_subjects(world: World) -> None:
    """Same source (flows.ts FlowRun / resume). A prune run is started by Timers and found by
    its label; an INACTIVE one has fired but deleted nothing yet."""
    world.finish(world.submitted([("bl402", "P7/x.h5", 5)]))
    world.lifecycle().run_once()
    world.clock.now = T0 + 3600
    world.lifecycle().run_once()  # archive group formed and started
    (archive,) = world.runs_of("archive")
    _inactive(world, archive["run_id"], {"code": "ActivationRequired"})
    world.clock.now = T0 + 181 * DAY
    world.lifecycle().run_once()  # compute-dtn prune timer scheduled
    world.clock.now = T0 + 362 * DAY
    (prune_run,) = world.fire_timers()
    _inactive(world, prune_run)

    summary = world.lifecycle().run_once()
    assert summary["runs_inactive"] == 2
    waiting = {w.kind: w for w in world.ledger.waiting_runs()}
    assert set(waiting) == {"archive", "prune"}
    assert waiting["archive"].run_id == archive["run_id"]
    assert waiting["archive"].subject.startswith("group:")
    assert (waiting["archive"].code, waiting["archive"].reason) == (
        "ActivationRequired",
        "ActivationRequired",
    )
    (batch,) = world.batches()
    assert waiting["prune"].subject == f"batch:{batch['batch']}"
    assert waiting["prune"].code == "ConsentRequired"
    # Not progress: nothing archived, nothing pruned.
    (scan,) = world.scans()
    assert scan["state"] == "archive_submitted" and scan["dtn_pruned_at"] is None
    assert batch["state"] == "scheduled"


def test_an_inactive_run_from_the_flows_listing(world: World, mocked_http: None) -> None:
    """Through GlobusBackend: the run document is the SDK's `flows.list_runs` fixture run,
    made INACTIVE with `details.code` ConsentRequired as the Flows OpenAPI describes
    (flows.ts FlowRun.status, resume-run description)."""
    del mocked_http
    world.backend = globus_backend()  # type: ignore[assignment]
    run = copy.deepcopy(get_response_set("flows.list_runs").lookup("default").json["runs"][0])  # type: ignore[union-attr]
    run.update(status="INACTIVE", display_status="INACTIVE", details=dict(CONSENT))
    with world.ledger.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO scans (beamline, path, rel, size, mtime, state, run_id,"
            " submit_started_at, created_at, updated_at)"
            " VALUES ('bl402', '/x/P1/a.h5', 'P1/a.h5', 1, 0, 'submitted', ?, 0, 0, 0)",
            (run["run_id"],),
        )
    RegisteredResponse(
        service="flows", path="/runs", json={"runs": [run], "has_next_page": False}
    ).add()

    world.lifecycle().run_once()
    (waiting,) = world.ledger.waiting_runs()
    assert (waiting.run_id, waiting.kind, waiting.subject) == (
        run["run_id"],
        "new_file",
        f"scan:{cursor.lastrowid}",
    )
    assert waiting.reason == f"ConsentRequired: {CONSENT['description']}"
    assert world.scans()[0]["state"] == "submitted"
