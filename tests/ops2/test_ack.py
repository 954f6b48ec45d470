"""`dichroism ack`: acknowledged failures leave status's failure list, the health problems
and the alert digest; the scan stays failed, marked with who and when; a retry clears it."""

from __future__ import annotations

from dichroism_control.health import assess
from dichroism_control.notify import collect
from tests.lifecycle.conftest import DAY, T0
from tests.ops2.conftest import Ops


def _two_failed(ops: Ops) -> None:
    ops.fail_new_file(list(ops.on_disk(["P1/a.h5", "P1/b.h5"])))


def test_ack_path_takes_the_failure_off_status_health_and_alerts(ops: Ops) -> None:
    _two_failed(ops)
    config, ledger = ops.world.config, ops.world.ledger
    status = ops("-F", "json", "status").json()
    assert sorted(f["rel"] for f in status["failures"]) == ["P1/a.h5", "P1/b.h5"]
    digest = [i.key for i in collect(config, ledger, assess(config, ledger))]
    assert sum(k.startswith("scan_failed:") for k in digest) == 2

    result = ops("ack", ops.path("P1/a.h5"), "--by", "bob", "--note", "file was a test")
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["acknowledged 1 failure(s) as bob", "  bl402 P1/a.h5 v1"]

    status = ops("-F", "json", "status").json()
    assert [f["rel"] for f in status["failures"]] == ["P1/b.h5"]
    assert status["beamlines"]["bl402"]["states"]["failed"] == 2  # still failed
    report = assess(config, ledger)
    assert report.beamlines["bl402"]["failed"] == 1
    assert report.beamlines["bl402"]["acknowledged"] == 1
    digest = [i.key for i in collect(config, ledger, report)]
    a_id = ops.scan("P1/a.h5")["id"]
    assert not any(k.startswith(f"scan_failed:{a_id}:") for k in digest)
    assert sum(k.startswith("scan_failed:") for k in digest) == 1
    story = ops("-F", "json", "scan", "show", ops.path("P1/a.h5")).json()
    (version,) = story["versions"]
    assert version["state"] == "failed"
    assert version["acknowledged"]["by"] == "bob"
    assert version["acknowledged"]["note"] == "file was a test"
    assert "Acknowledged:" in ops("scan", "show", ops.path("P1/a.h5")).out

    # Again: already acknowledged, said so, exit 0.
    doc = ops("-F", "json", "ack", ops.path("P1/a.h5")).json()
    assert doc["count"] == 0 and doc["already_acknowledged"][0]["by"] == "bob"

    # Every failure acknowledged: healthy again as far as failures go.
    ops("ack", "--failed")
    codes = {p.code for p in assess(config, ledger).problems}
    assert "failed:bl402" not in codes

    # A retry removes the mark, so a later failure shows again.
    ops("retry", ops.path("P1/a.h5"))
    assert ledger.acknowledgement(f"scan:{a_id}") is None


def test_ack_group_and_batch(ops: Ops) -> None:
    ops.world.finish(ops.on_disk(["P1/a.h5"]))
    ops.world.lifecycle().run_once()
    ops.world.clock.now = T0 + 3600
    for _ in range(3):
        ops.world.lifecycle().run_once()
        (live,) = ops.world.runs_of("archive", "ACTIVE")
        ops.world.finish([live["run_id"]], "FAILED", error={"Error": "E", "Cause": "down"})
    ops.world.lifecycle().run_once()
    (group,) = ops.world.ledger.query("SELECT * FROM archive_groups")
    assert group["state"] == "failed"
    doc = ops("-F", "json", "ack", "--group", group["archive_name"]).json()
    assert {t["subject"] for t in doc["acknowledged"]} == {
        f"group:{group['id']}",
        f"scan:{ops.scan('P1/a.h5')['id']}",
    }
    status = ops("-F", "json", "status").json()
    assert status["failures"] == [] and status["batch_failures"] == []
    assert "failed_archive_groups" not in {p["code"] for p in status["health"]["problems"]}

    ops.world.finish(ops.on_disk(["P2/c.h5"]))
    ops.world.lifecycle().run_once()
    ops.world.clock.now = T0 + 181 * DAY
    ops.world.lifecycle().run_once()
    (run_id,) = ops.world.fire_timers()
    ops.world.finish([run_id], "FAILED", error={"Error": "VerificationFailed", "Cause": "x"})
    ops.world.lifecycle().run_once()
    (batch,) = [b for b in ops.world.batches() if b["state"] == "failed"]
    config, ledger = ops.world.config, ops.world.ledger
    assert any(
        i.key.startswith("prune_failed:") for i in collect(config, ledger, assess(config, ledger))
    )
    assert ops("ack", "--batch", batch["batch"]).code == 0
    report = assess(config, ledger)
    assert not any(i.key.startswith("prune_failed:") for i in collect(config, ledger, report))
    assert report.failed_batches == 0
    # Not failed: nothing to acknowledge, exit 1, one line.
    result = ops("ack", ops.path("P2/c.h5"))
    assert result.code == 1 and "not failed: nothing to acknowledge" in result.err
