"""A finished prune run, file by file: the exact note each kept file gets, the pass's
counters, and the boundaries (MAX_KEPT, a detail that holds a colon, a path that left its
beamline's root).

Issue 13 (mutation testing of the deletion path): test_prune_outcomes.py checks where each
file goes next; these tests pin what an operator reads (the scan's last_error, the pass
counters that `lifecycle run` prints) and the cases that test file leaves open. Two files
per case wherever a counter is checked, so a counter that is set instead of added fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dichroism_control.lifecycle.base import MAX_KEPT
from dichroism_control.lifecycle.prune_runs import PruneRuns, Verdicts, verdicts
from tests.lifecycle.conftest import World, compute, prune_output
from tests.lifecycle.test_prune_outcomes import (
    _archived,
    _fire_cfs_prune,
    _fire_dtn_prune,
    _scan,
    _slow_archive,
    _transferred,
)

NOTE = "kept by prune compute_dtn: "
TWO = ["P1/a.h5", "P1/b.h5"]


def counters(summary: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: summary.get(name, 0) for name in names}


def test_verdicts_read_only_well_formed_entries() -> None:
    output = {
        "check": {"delete": [0, "1", None], "changed": [2], "gone": None},
        "verification": compute(
            {
                "safe": [0],
                "kept": [
                    {"i": 3, "reason": "size_differs", "detail": "4 bytes, expected 5"},
                    {"i": 4},  # no reason: still kept, as not verified
                    {"reason": "missing"},  # no index: cannot be placed
                    "junk",
                    {"i": "5", "reason": "missing"},
                ],
            }
        ),
    }
    assert verdicts(output) == Verdicts(
        deleted=[0],
        changed=[2],
        gone=[],
        unsafe={3: "size_differs: 4 bytes, expected 5", 4: "not verified"},
    )


def test_kept_reason_of_each_kind() -> None:
    outcome = Verdicts(deleted=[0], changed=[1, 4], gone=[2, 4], unsafe={3: "missing", 4: "x"})
    assert [PruneRuns._kept_reason(outcome, i) for i in range(6)] == [
        None,
        ("changed", "the target is not the version recorded (size or mtime)"),
        ("gone", "Transfer could not stat the target"),
        ("unsafe", "missing"),
        ("unsafe", "x"),  # the verifier's reason wins over the stat loop's
        ("unsafe", "not reported by the prune run"),
    ]


def test_targets_gone_after_verification_count_as_pruned(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    root = Path(world.config.beamlines["bl402"].watch.root)
    for rel in TWO:
        (root / rel).unlink()
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0, 1], delete=[], gone=[0, 1]))
    summary = world.lifecycle().run_once()
    assert counters(summary, "pruned_compute_dtn", "prune_succeeded", "prune_kept") == {
        "pruned_compute_dtn": 2,
        "prune_succeeded": 1,
        "prune_kept": 2,
    }
    for rel in TWO:
        scan = _scan(world, rel)
        assert scan["last_error"] == NOTE + "Transfer could not stat the target"
        assert (scan["kept"], scan["dtn_prune_batch"]) == (1, None)
        assert scan["dtn_pruned_at"] == world.clock.now
    (batch,) = world.batches()
    assert (batch["state"], batch["kept"], batch["last_error"]) == (
        "succeeded",
        2,
        "2 file(s) left in place (see the scans)",
    )


def test_changed_targets_touched_only_are_batched_again(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    root = Path(world.config.beamlines["bl402"].watch.root)
    for rel in TWO:
        (root / rel).touch()
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0, 1], delete=[], changed=[0, 1]))
    summary = world.lifecycle().run_once()
    assert summary["kept_rebatched"] == 2
    for rel in TWO:
        scan = _scan(world, rel)
        assert scan["last_error"] == NOTE + "the target is not the version recorded (size or mtime)"
        assert scan["mtime_ns"] == (root / rel).stat().st_mtime_ns


def test_files_the_run_did_not_report_are_sent_again(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[], delete=[]))
    summary = world.lifecycle().run_once()
    assert summary["kept_resent"] == 2
    for rel in TWO:
        scan = _scan(world, rel)
        assert scan["last_error"] == NOTE + "not reported by the prune run"
        assert scan["state"] in ("detected", "submitting", "submitted")


def test_a_file_kept_once_less_than_the_limit_is_still_requeued(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, ["P1/a.h5"])
    with world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET kept = ?", (MAX_KEPT - 2,))
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0], delete=[], changed=[0]))
    summary = world.lifecycle().run_once()
    scan = _scan(world, "P1/a.h5")
    assert scan["state"] != "failed" and scan["kept"] == MAX_KEPT - 1
    assert "prune_kept_for_good" not in summary


def test_files_kept_for_the_last_time_need_a_person(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    with world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET kept = ?", (MAX_KEPT - 1,))
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0, 1], delete=[], changed=[0, 1]))
    summary = world.lifecycle().run_once()
    assert summary["prune_kept_for_good"] == 2
    scan = _scan(world, "P1/a.h5")
    assert scan["last_error"] == (
        f"{NOTE}the target is not the version recorded (size or mtime) ({MAX_KEPT} times)"
    )


def test_a_scan_whose_path_left_its_beamlines_root_needs_a_person(make_world: Any) -> None:
    """Re-identified only under its own beamline: a path now under another beamline's root
    is not read as if it were that beamline's file."""
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    other = Path(world.config.beamlines["bl631"].watch.root)
    for rel in TWO:
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / rel).write_bytes(b"bytes of another beamline")
    with world.ledger.transaction() as conn:
        conn.execute("UPDATE scans SET path = ? || '/' || rel", (str(other),))
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0, 1], delete=[], changed=[0, 1]))
    world.lifecycle().run_once()
    for rel in TWO:
        scan = _scan(world, rel)
        assert scan["state"] == "failed" and scan["failed_step"] == "prune"
        assert scan["last_error"].startswith(
            NOTE + "the target is not the version recorded (size or mtime); cannot read it"
            f" here: {other}/{rel}: outside the watch root of bl402"
        )


def test_tape_reasons_with_a_colon_in_the_detail_are_archived_again(world: World) -> None:
    _archived(world, TWO)
    run = _fire_cfs_prune(world)
    tar = world.backend.runs[run["run_id"]]["body"]["input"]["safe"]["archives"][0]
    kept = [
        {"i": 0, "reason": "not_on_tape", "detail": f"nothing at {tar}:P1/a.h5"},
        {"i": 1, "reason": "tape_size_differs", "detail": "tape 3 bytes, expected 1"},
    ]
    world.finish([run["run_id"]], **prune_output(safe=[], delete=[], kept=kept))
    summary = world.lifecycle().run_once()
    assert summary["rearchive"] == 2
    assert _scan(world, "P1/a.h5")["last_error"] == (
        f"kept by prune cfs: not_on_tape: nothing at {tar}:P1/a.h5"
    )


def test_a_failed_prune_run_is_recorded_against_its_batch(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], "FAILED")
    summary = world.lifecycle().run_once()
    assert summary["prune_failed"] == 1
    (batch,) = world.batches()
    rows = world.ledger.query("SELECT flow, subject, status FROM run_failures")
    assert [tuple(r) for r in rows] == [("prune", f"batch:{batch['batch']}", "FAILED")]
    assert batch["state"] == "failed" and batch["run_id"] == run["run_id"]
    assert json.dumps(batch["last_error"])  # a reason is shown
    assert all(_scan(world, rel)["dtn_pruned_at"] is None for rel in TWO)


def test_one_pass_forms_and_schedules_a_batch_per_beamline(make_world: Any) -> None:
    world = make_world(_slow_archive)
    world.finish(world.submitted([("bl402", "P1/a.h5", 1), ("bl631", "P1/a.h5", 1)]))
    world.lifecycle().run_once()
    world.clock.now += 86400
    summary = world.lifecycle().run_once()
    assert counters(summary, "prune_batches_formed", "prune_timers_scheduled") == {
        "prune_batches_formed": 2,
        "prune_timers_scheduled": 2,
    }
    assert [(b["beamline"], b["state"]) for b in world.batches()] == [
        ("bl402", "scheduled"),
        ("bl631", "scheduled"),
    ]


def test_a_file_kept_twice_gets_a_third_batch_key(make_world: Any) -> None:
    """Batch keys are never reused: after `day` and `day#2` comes `day#3`."""
    world = make_world(_slow_archive)
    _transferred(world, ["P1/a.h5"])
    root = Path(world.config.beamlines["bl402"].watch.root)
    run = _fire_dtn_prune(world)
    for expected in ("#2", "#3"):
        (root / "P1" / "a.h5").touch()
        world.finish([run["run_id"]], **prune_output(safe=[0], delete=[], changed=[0]))
        world.lifecycle().run_once()
        scan = _scan(world, "P1/a.h5")
        assert scan["dtn_prune_batch"].endswith(expected)
        (run_id,) = world.fire_timers()
        run = world.backend.runs[run_id]
    assert [b["batch"][-2:] for b in world.batches()] == ["28", "#2", "#3"]


def _two_batches_due(make_world: Any, rels: tuple[str, str] = ("P1/a.h5", "P1/a.h5")) -> World:
    """A world where the next pass forms one compute-dtn batch per beamline."""
    world = make_world(_slow_archive)
    world.finish(world.submitted([("bl402", rels[0], 1), ("bl631", rels[1], 1)]))
    world.lifecycle().run_once()
    world.clock.now += 86400
    return world


def _refuse_timers(world: World, attempts: list[str]) -> None:
    from dichroism_control.errors import BackendError

    def refuse(*, name: str, **_: Any) -> Any:
        attempts.append(name)
        raise BackendError("Timers unavailable")

    world.backend.create_flow_timer = refuse  # type: ignore[method-assign]


def test_a_refused_timer_stops_the_pass_and_is_created_next_pass(make_world: Any) -> None:
    """The batch stays 'scheduling' with the error shown; no other timer is tried in that
    pass (the service is in trouble); the next pass creates both."""
    world = _two_batches_due(make_world)
    attempts: list[str] = []
    real = world.backend.create_flow_timer
    _refuse_timers(world, attempts)
    summary = world.lifecycle().run_once()
    assert len(attempts) == 1
    assert f"timer {attempts[0]}: Timers unavailable" in summary["errors"]
    rows = {b["label"]: b for b in world.batches()}
    assert rows[attempts[0]]["state"] == "scheduling"
    assert rows[attempts[0]]["last_error"] == "Timers unavailable"
    world.backend.create_flow_timer = real  # type: ignore[method-assign]
    summary = world.lifecycle().run_once()
    assert summary["prune_timers_scheduled"] == 2
    assert [b["state"] for b in world.batches()] == ["scheduled", "scheduled"]


def test_a_batch_left_without_members_is_cancelled(make_world: Any) -> None:
    world = _two_batches_due(make_world)
    attempts: list[str] = []
    real = world.backend.create_flow_timer
    _refuse_timers(world, attempts)
    world.lifecycle().run_once()
    world.backend.create_flow_timer = real  # type: ignore[method-assign]
    emptied = next(b for b in world.batches() if b["beamline"] == "bl402")
    world.ledger.execute("UPDATE scans SET dtn_prune_batch = NULL WHERE beamline = 'bl402'")
    world.lifecycle().run_once()
    rows = {b["batch"]: b for b in world.batches()}
    assert (rows[emptied["batch"]]["state"], rows[emptied["batch"]]["last_error"]) == (
        "cancelled",
        "no member scans",
    )
    # the pass went on: the other beamline's batch, and the scans' new batch, are scheduled
    others = [b["state"] for key, b in rows.items() if key != emptied["batch"]]
    assert others == ["scheduled", "scheduled"]


def test_invalid_prune_bodies_fail_their_batches_and_the_pass_goes_on(make_world: Any) -> None:
    world = _two_batches_due(make_world, ("P1/../../etc/passwd", "P1/../../etc/shadow"))
    summary = world.lifecycle().run_once()
    assert summary["prune_failed"] == 2
    assert [b["state"] for b in world.batches()] == ["failed", "failed"]
    assert world.backend.timer_requests == []


def test_changed_targets_become_new_versions_of_their_beamline(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    root = Path(world.config.beamlines["bl402"].watch.root)
    for rel in TWO:
        (root / rel).write_bytes(b"new content of " + rel.encode())
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0, 1], delete=[], changed=[0, 1]))
    summary = world.lifecycle().run_once()
    assert summary["kept_new_version"] == 2
    for rel in TWO:
        new = _scan(world, rel, 2)
        assert (new["beamline"], new["rel"], new["path"]) == ("bl402", rel, str(root / rel))


def test_a_batch_with_nothing_kept_shows_no_error(make_world: Any) -> None:
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0, 1], delete=[0, 1]))
    world.lifecycle().run_once()
    (batch,) = world.batches()
    assert (batch["state"], batch["kept"], batch["last_error"]) == ("succeeded", 0, None)


def test_an_index_outside_the_batch_is_ignored(make_world: Any) -> None:
    """A run reporting index 2 of a 2-file batch (a flow bug) marks nothing it cannot
    place, and every real member is still accounted for."""
    world = make_world(_slow_archive)
    _transferred(world, TWO)
    run = _fire_dtn_prune(world)
    world.finish([run["run_id"]], **prune_output(safe=[0, 2], delete=[0, 2]))
    world.lifecycle().run_once()
    a, b = _scan(world, TWO[0]), _scan(world, TWO[1])
    assert a["dtn_pruned_at"] is not None and b["dtn_pruned_at"] is None
    assert b["last_error"] == NOTE + "not reported by the prune run"
