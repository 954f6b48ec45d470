"""`dichroism retry`: the same version again, groups re-opened, batches released; the kept
guard, superseded versions, dry runs, filters, one-line errors and exit codes."""

from __future__ import annotations

import os
from pathlib import Path

from dichroism_control.launcher import Launcher
from dichroism_control.lifecycle.base import MAX_KEPT
from tests.lifecycle.conftest import DAY, T0, prune_output
from tests.ops2.conftest import Ops


def _snapshot(ops: Ops) -> list[list[object]]:
    ledger = ops.world.ledger
    tables = ("scans", "archive_groups", "prune_timers", "run_failures", "acknowledged")
    return [[tuple(r) for r in ledger.query(f"SELECT * FROM {t} ORDER BY 1")] for t in tables]


def test_retry_path_sends_the_same_version_again_with_its_attempts_reset(ops: Ops) -> None:
    runs = ops.on_disk(["P1/a.h5"])
    ops.fail_new_file(list(runs))
    before = ops.scan("P1/a.h5")
    assert before["state"] == "failed" and before["attempts"] == 3

    result = ops("--format", "json", "retry", ops.path("P1/a.h5"), "--by", "alice")
    assert result.code == 0, result.err
    doc = result.json()
    assert doc["requeued"] == 1 and doc["by"] == "alice" and not doc["dry_run"]
    (item,) = doc["scans"]
    assert item["version"] == 1 and item["to_state"] == "detected"
    assert before["checksum"] in item["note"]
    after = ops.scan("P1/a.h5")
    assert after["state"] == "detected" and after["attempts"] == 0 and after["run_id"] is None
    assert len(ops.world.scans()) == 1  # never a new version
    # The launcher sends it as before: same label, same CFS path, same content identity.
    launcher = Launcher(ops.world.config, ops.world.ledger, ops.world.backend, ops.world.deployment)
    (outcome,) = launcher.drain(scan_ids=[after["id"]])
    assert outcome.state == "submitted"
    request = ops.world.backend.requests[-1]
    assert request.label == "bl402 P1/a.h5"
    body = request.body["input"]
    assert body["destination"]["path"].endswith("/cfs/4.0.2/raw/P1/a.h5")
    assert body["source"]["checksum"] == before["checksum"] and body["source"]["version"] == 1
    # Earlier failures no longer count: one more failed run is attempt 1 of 3, not the 4th.
    run_id = ops.scan("P1/a.h5")["run_id"]
    ops.world.backend.finish(run_id, "FAILED", {"error": {"Error": "X", "Cause": "again"}})
    summary = ops.world.lifecycle().run_once()
    assert summary["new_file_retried"] == 1 and ops.scan("P1/a.h5")["state"] == "detected"
    story = ops("--format", "json", "scan", "show", ops.path("P1/a.h5")).json()
    (version,) = story["versions"]
    assert [i["action"] for i in version["interventions"]] == ["retry"]
    assert version["interventions"][0]["by"] == "alice"


def test_a_superseded_version_is_never_retried_and_the_reason_says_so(ops: Ops) -> None:
    runs = ops.on_disk(["P1/a.h5"])
    ops.fail_new_file(list(runs))
    with ops.world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET superseded_at = ?", (T0,))
        conn.execute(
            "INSERT INTO scans (beamline, path, rel, version, size, mtime, checksum, state,"
            " transferred_at, created_at, updated_at) SELECT beamline, path, rel, 2, size,"
            " mtime, checksum, 'transferred', ?, ?, ? FROM scans",
            (T0, T0, T0),
        )
    result = ops("retry", ops.path("P1/a.h5"))
    assert result.code == 1 and result.out == ""
    (line,) = result.err.splitlines()
    assert "v1: superseded by v2: a superseded version is never retried" in line
    assert "v2: is transferred, not failed: nothing to retry" in line
    # A filter skips it too, and says why.
    doc = ops("--format", "json", "retry", "--failed").json()
    assert doc["requeued"] == 0
    (skip,) = doc["skipped"]
    assert "never retried" in skip["reason"]
    assert ops.scan("P1/a.h5")["state"] == "failed"


def test_retry_group_reopens_the_archive_group(ops: Ops) -> None:
    ops.world.finish(ops.on_disk(["P1/a.h5", "P1/b.h5"]))
    ops.world.lifecycle().run_once()
    ops.world.clock.now = T0 + 3600  # the proposal directory has been quiet for an hour
    for _ in range(3):
        ops.world.lifecycle().run_once()
        (live,) = ops.world.runs_of("archive", "ACTIVE")
        ops.world.finish([live["run_id"]], "FAILED", error={"Error": "E", "Cause": "htar: down"})
    ops.world.lifecycle().run_once()
    (group,) = ops.world.ledger.query("SELECT * FROM archive_groups")
    assert group["state"] == "failed"

    # Naming one member re-opens its whole group (the failure was the group's).
    doc = ops("-F", "json", "retry", ops.path("P1/a.h5")).json()
    assert doc["scans"] == [] and [g["name"] for g in doc["groups"]] == [group["archive_name"]]
    assert doc["groups"][0]["scans"] == 2
    (group,) = ops.world.ledger.query("SELECT * FROM archive_groups")
    assert group["state"] == "open" and group["attempts"] == 0 and group["run_id"] is None
    assert {s["state"] for s in ops.world.scans()} == {"archive_submitted"}
    summary = ops.world.lifecycle().run_once()
    assert summary["archive_runs_started"] == 1
    # Its earlier failed runs stopped counting: one failure now is attempt 1, not a 4th.
    (live,) = ops.world.runs_of("archive", "ACTIVE")
    ops.world.finish([live["run_id"]], "FAILED", error={"Error": "E", "Cause": "htar: down"})
    assert ops.world.lifecycle().run_once()["archive_retried"] == 1
    # --group names a group directly; it is not failed now.
    result = ops("retry", "--group", group["archive_name"])
    assert result.code == 1 and "nothing to retry" in result.err


def test_retry_batch_releases_its_files_as_timers_cancel_does(ops: Ops) -> None:
    ops.world.finish(ops.on_disk(["P1/a.h5"]))
    ops.world.lifecycle().run_once()
    ops.world.clock.now = T0 + 181 * DAY
    ops.world.lifecycle().run_once()
    (run_id,) = ops.world.fire_timers()
    ops.world.finish([run_id], "FAILED", error={"Error": "VerificationFailed", "Cause": "no"})
    ops.world.lifecycle().run_once()
    (batch,) = ops.world.batches()
    assert batch["state"] == "failed"

    doc = ops("-F", "json", "retry", "--batch", batch["batch"]).json()
    assert [b["batch"] for b in doc["batches"]] == [batch["batch"]]
    assert doc["batches"][0]["files"] == 1
    (batch,) = ops.world.batches()
    assert batch["state"] == "retried" and "1 file(s) released" in batch["last_error"]
    assert ops.scan("P1/a.h5")["dtn_prune_batch"] is None
    # Nothing was deleted by the retry: the file is where it was.
    assert os.path.exists(ops.path("P1/a.h5"))
    ops.world.lifecycle().run_once()
    states = {b["batch"]: b["state"] for b in ops.world.batches()}
    assert states == {batch["batch"]: "retried", f"{batch['batch']}#2": "scheduled"}
    listed = ops("-F", "json", "timers", "list", "--all").json()["timers"]
    assert {t["batch"]: t["state"] for t in listed}[batch["batch"]] == "retried"
    # Failed batches leave status once retried.
    status = ops("-F", "json", "status").json()
    assert status["batch_failures"] == []


def _kept_for_good(ops: Ops) -> int:
    ops.world.finish(ops.on_disk(["P1/a.h5"]))
    ops.world.lifecycle().run_once()
    with ops.world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET kept = ?", (MAX_KEPT - 1,))
    ops.world.clock.now = T0 + DAY
    ops.world.lifecycle().run_once()
    ops.world.clock.now = T0 + 181 * DAY
    (run_id,) = ops.world.fire_timers()
    ops.world.finish([run_id], **prune_output(safe=[0], delete=[], changed=[0]))
    ops.world.lifecycle().run_once()
    scan = ops.scan("P1/a.h5")
    assert scan["state"] == "failed" and scan["failed_step"] == "prune"
    assert scan["kept"] == MAX_KEPT
    return int(scan["id"])


def test_a_version_kept_max_times_goes_back_only_when_named(ops: Ops) -> None:
    _kept_for_good(ops)
    doc = ops("-F", "json", "retry", "--failed").json()
    assert doc["requeued"] == 0
    (skip,) = doc["skipped"]
    assert f"left it in place {MAX_KEPT} times" in skip["reason"]
    assert f"dichroism retry {ops.path('P1/a.h5')}" in skip["reason"]
    assert ops.scan("P1/a.h5")["kept"] == MAX_KEPT

    doc = ops("-F", "json", "retry", ops.path("P1/a.h5")).json()
    (item,) = doc["scans"]
    # Its archive run was still going when the prune gave up on it: back where it was.
    assert item["kept_reset"] is True and item["to_state"] == "archive_submitted"
    scan = ops.scan("P1/a.h5")
    assert scan["state"] == "archive_submitted" and scan["kept"] == 0
    assert scan["dtn_prune_batch"] is None and os.path.exists(ops.path("P1/a.h5"))
    (live,) = ops.world.runs_of("archive", "ACTIVE")
    ops.world.finish([live["run_id"]])
    ops.world.lifecycle().run_once()
    scan = ops.scan("P1/a.h5")
    assert scan["state"] == "archived" and scan["tape_path"]
    # ...and a new compute-dtn prune batch takes it (the prune re-verifies at run time).
    ops.world.clock.now += 2 * DAY
    ops.world.lifecycle().run_once()
    assert ops.scan("P1/a.h5")["dtn_prune_batch"] is not None


def test_dry_run_shows_what_would_be_requeued_and_changes_nothing(ops: Ops) -> None:
    runs = ops.on_disk(["P1/a.h5", "P2/b.h5"])
    ops.fail_new_file(list(runs))
    before = _snapshot(ops)
    result = ops("-F", "json", "retry", "--failed", "--dry-run")
    assert result.code == 0
    doc = result.json()
    assert doc["dry_run"] is True and doc["requeued"] == 2
    assert sorted(s["rel"] for s in doc["scans"]) == ["P1/a.h5", "P2/b.h5"]
    assert _snapshot(ops) == before
    text = ops("retry", "--failed", "--dry-run").out
    assert text.startswith("would re-queue 2 scan(s), 0 archive group(s), 0 prune batch(es)")
    assert "bl402 P1/a.h5 v1: new_file run again" in text


def test_filters_proposal_beamline_and_since(ops: Ops) -> None:
    runs = ops.on_disk(["P1/a.h5", "P2/b.h5"])
    ops.fail_new_file(list(runs))
    later = ops.on_disk(["P1/c.h5"], beamline="bl631")
    with ops.world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET updated_at = ? WHERE state = 'failed'", (T0 - 3 * DAY,))
    ops.fail_new_file(list(later))

    doc = ops("-F", "json", "retry", "--proposal", "P1", "--dry-run").json()
    assert sorted((s["beamline"], s["rel"]) for s in doc["scans"]) == [
        ("bl402", "P1/a.h5"),
        ("bl631", "P1/c.h5"),
    ]
    doc = ops("-F", "json", "retry", "--proposal", "P1", "--beamline", "bl402", "--dry-run").json()
    assert [s["rel"] for s in doc["scans"]] == ["P1/a.h5"]
    iso = "2020-01-01T00:00"
    assert ops("-F", "json", "retry", "--since", iso, "--dry-run").json()["requeued"] == 3
    # A duration is counted back from now; the first two failed "3 days" before T0 (2026).
    doc = ops("-F", "json", "retry", "--since", "1h", "--dry-run").json()
    assert doc["requeued"] == 0


def test_a_version_that_cannot_be_sent_again_is_refused(ops: Ops) -> None:
    runs = ops.on_disk(["P1/gone.h5", "P1/changed.h5"])
    ops.fail_new_file(list(runs))
    Path(ops.path("P1/gone.h5")).unlink()
    Path(ops.path("P1/changed.h5")).write_bytes(b"another content, longer than before")
    doc = ops("-F", "json", "retry", "--failed").json()
    assert doc["requeued"] == 0
    reasons = {s["what"]: s["reason"] for s in doc["skipped"]}
    assert "gone from the source" in reasons["bl402 P1/gone.h5 v1"]
    assert "records it as a new version" in reasons["bl402 P1/changed.h5 v1"]
    result = ops("retry", ops.path("P1/gone.h5"))
    assert result.code == 1 and "gone from the source" in result.err


def test_usage_errors_are_one_line_with_exit_2_also_in_json(ops: Ops) -> None:
    for args, expected in (
        (["retry"], "say what"),
        (["retry", "/nowhere/x.h5"], "not in the ledger"),
        (["retry", "--since", "yesterday-ish"], "--since"),
        (["retry", "--group", "nope"], "no archive group"),
        (["retry", "--batch", "nope"], "no prune batch"),
        (["retry", "/x", "--failed"], "not both"),
        (["retry", "--failed", "--beamline", "bl999"], "unknown beamline"),
        (["ack"], "say what"),
    ):
        result = ops(*args)
        assert result.code == 2, (args, result)
        (line,) = result.err.splitlines()
        assert expected in line, (args, line)
        result = ops("-F", "json", *args)
        assert result.code == 2 and expected in result.json()["error"]["message"]
    assert ops("-F", "json", "retry", "--failed").json()["requeued"] == 0
    assert ops("retry", "--failed").out.strip() == "nothing to retry"
