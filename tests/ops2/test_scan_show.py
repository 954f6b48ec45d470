"""`dichroism scan show PATH`: every version, its runs with web-app links, steps, tape
location, prune times, the last error, and what tape verification proves."""

from __future__ import annotations

import json
import re

from dichroism_control.operations.story import TAPE_NOTE
from tests.lifecycle.conftest import DAY, T0
from tests.ops2.conftest import Ops

CAUSE = {
    "line": "TransferFailed: VERIFY_CHECKSUM: mismatch",
    "step": "TransferFailed",
    "message": "VERIFY_CHECKSUM: mismatch",
    "remedy": None,
    "detail": {"caught": {"path": "$.error", "error": {"Error": "ActionFailedException"}}},
}


def test_scan_show_tells_every_version_and_its_runs(ops: Ops) -> None:
    world = ops.world
    (first_run,) = ops.on_disk(["P1/a.h5"])
    world.finish([first_run])
    world.lifecycle().run_once()
    world.clock.now = T0 + 3600
    world.lifecycle().run_once()  # archive group formed and started
    (archive,) = world.runs_of("archive", "ACTIVE")
    world.finish([archive["run_id"]])
    world.clock.now = T0 + DAY
    world.lifecycle().run_once()  # archived; the compute-dtn prune of the closed day
    world.clock.now = T0 + 2 * DAY
    world.lifecycle().run_once()  # the CFS prune of the day it was archived
    # A second version of the same path, whose transfer failed.
    with world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET superseded_at = ?", (T0 + DAY,))
        conn.execute(
            "INSERT INTO scans (beamline, path, rel, version, size, mtime, checksum, state,"
            " failed_step, last_error, run_id, attempts, created_at, updated_at)"
            " SELECT beamline, path, rel, 2, 99, mtime, 'ffffffffffffffffffffffffffffffff',"
            " 'failed', 'new_file', 'after 3 attempt(s): TransferFailed: VERIFY_CHECKSUM:"
            " mismatch — next: retry', 'run-v2', 3, ?, ? FROM scans",
            (T0 + DAY, T0 + DAY),
        )
        conn.execute(
            "INSERT INTO run_failures (run_id, flow, subject, status, reason, failed_at, cause)"
            " SELECT 'run-v2', 'new_file', 'scan:' || id, 'FAILED', 'VERIFY_CHECKSUM', ?, ?"
            " FROM scans WHERE version = 2",
            (T0 + DAY, json.dumps(CAUSE)),
        )

    result = ops("-F", "json", "scan", "show", ops.path("P1/a.h5"))
    assert result.code == 0, result.err
    doc = result.json()
    assert doc["rel"] == "P1/a.h5" and doc["latest_version"] == 2
    assert doc["tape_verification"] == TAPE_NOTE
    v2, v1 = doc["versions"]
    assert (v2["version"], v2["state"], v2["superseded"]) == (2, "failed", False)
    assert v2["checksum_md5"] == "f" * 32 and v2["size"] == 99
    assert v2["last_error"]["line"].startswith("after 3 attempt(s): TransferFailed")
    assert v2["last_error"]["cause"] == CAUSE  # the whole recorded cause, for --format json
    assert [r["status"] for r in v2["runs"]["new_file"]] == ["FAILED"]
    assert (v1["version"], v1["state"], v1["superseded"]) == (1, "archived", True)
    (new_file,) = v1["runs"]["new_file"]
    assert new_file == {
        "run_id": first_run,
        "status": "SUCCEEDED",
        "link": f"https://app.globus.org/runs/{first_run}",
    }
    archive_runs = v1["runs"]["archive"]
    assert archive_runs["state"] == "succeeded"
    assert archive_runs["runs"][0]["run_id"] == archive["run_id"]
    assert archive_runs["runs"][0]["link"].endswith(archive["run_id"])
    assert v1["tape"]["path"].endswith(".tar") and v1["tape"]["member"] == "P1/a.h5"
    steps = v1["steps"]
    assert steps["transferred_at"] and steps["archived_at"] and not steps["pruned_cfs_at"]
    prunes = {p["location"]: p for p in v1["runs"]["prune"]}
    assert set(prunes) == {"compute_dtn", "cfs"}
    for prune in prunes.values():
        assert prune["state"] == "scheduled" and prune["timer_id"] and prune["run_id"] is None
        assert prune["scheduled_for"].startswith(("2026-08-28", "2026-08-29"))  # retention 180 days

    # The prune run Timers starts is linked once the lifecycle has seen it.
    world.clock.now = T0 + 182 * DAY
    started = world.fire_timers()
    world.lifecycle().run_once()
    v1 = ops("-F", "json", "scan", "show", ops.path("P1/a.h5")).json()["versions"][1]
    linked = {p["run_id"] for p in v1["runs"]["prune"] if p["run_id"]}
    assert linked and linked <= set(started)

    text = ops("scan", "show", ops.path("P1/a.h5")).out
    assert re.search(r"^Path:\s+.*/P1/a\.h5$", text, re.M)
    assert re.search(r"^Versions:\s+2 \(latest v2\)$", text, re.M)
    assert re.search(r"^Superseded:\s+yes, at ", text, re.M)
    assert f"https://app.globus.org/runs/{first_run}" in text
    assert "Tape Check:" in text and TAPE_NOTE in text.replace("\n", " ")
    assert re.search(r"^Last Error:\s+after 3 attempt\(s\): TransferFailed", text, re.M)


def test_scan_show_of_an_unknown_path_is_exit_2(ops: Ops) -> None:
    result = ops("scan", "show", "/not/recorded.h5")
    assert result.code == 2
    assert "not in the ledger" in result.err
