"""The lifecycle loop against the in-memory FakeBackend: states, batching, exactly-once."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from dichroism_control.binding import specialise
from dichroism_control.definitions import load_document
from dichroism_control.errors import ConfigError
from tests.conftest import GROUP, IDS
from tests.fakes import FakeBackend
from tests.lifecycle.conftest import DAY, FLOWS, FUNCTIONS, MTIME, T0, World, checksum_of


def _schema(world: World, flow: str) -> dict[str, Any]:
    doc = load_document(world.config.definitions_path / f"{flow}.json", name=flow)
    return specialise(doc, world.config).input_schema


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def test_new_file_success_then_dtn_prune_timer_after_the_day_ends(world: World) -> None:
    runs = world.submitted([("bl402", "P1/a.h5", 10), ("bl402", "P1/b.h5", 20)])
    world.finish(runs)
    summary = world.lifecycle().run_once()
    assert summary["transferred"] == 2
    assert {s["state"] for s in world.scans()} == {"transferred"}
    # The day of confirmation is still open: its batch may still grow, so no timer yet.
    assert world.backend.timer_requests == []

    world.clock.now = T0 + DAY  # next day
    summary = world.lifecycle().run_once()
    assert summary["prune_timers_scheduled"] == 1
    (name, run_at, request) = world.backend.timer_requests[0]
    assert name == request.label == "bl402 prune compute_dtn 2026-08-28"
    assert run_at == datetime(2026, 8, 28, 10, 0, tzinfo=UTC)  # T0 + 180 days
    assert request.flow_id == FLOWS["prune"]
    batch_key = "bl402/compute_dtn/2026-08-28"
    assert request.tags == [
        "dichroism",
        "bl402",
        "prune",
        "compute_dtn",
        f"dichroism-batch:{batch_key}",
    ]
    assert request.run_managers == [GROUP] and request.run_monitors == [GROUP]
    tmp = world.config.base_dir
    assert request.body == {
        "input": {
            "beamline": "bl402",
            "location": "compute_dtn",
            "target": {
                "collection_id": IDS["bl402_dtn"],
                "root": f"{tmp}/data/bl402",
                "files": [
                    {
                        "path": "P1/a.h5",
                        "size": 10,
                        "mtime": MTIME,
                        "checksum": checksum_of("P1/a.h5"),
                        "version": 1,
                    },
                    {
                        "path": "P1/b.h5",
                        "size": 20,
                        "mtime": MTIME,
                        "checksum": checksum_of("P1/b.h5"),
                        "version": 1,
                    },
                ],
            },
            "safe": {"root": f"{tmp}/cfs/4.0.2/raw"},
            "verify": {"endpoint_id": IDS["nersc"], "function_id": FUNCTIONS["cfs_verify"]},
            # run_at + the verifier's (21 600 s) and the delete's (86 400 s) WaitTime + a day
            # for the stat loop.
            "deadline": "2026-08-30T16:00:00+00:00",
        }
    }
    # Timers keeps only body, roles and tags of a flow timer's body.
    assert set(request.timer_body()) == {"body", "tags", "run_monitors", "run_managers"}
    jsonschema.validate(request.body, _schema(world, "prune"))
    (batch,) = world.batches()
    assert batch["state"] == "scheduled" and batch["timer_id"] in world.backend.timers
    assert batch["files"] == 2
    assert {s["dtn_prune_batch"] for s in world.scans()} == {batch["batch"]}


def test_archive_body_then_cfs_prune_and_pruned_state(world: World) -> None:
    runs = world.submitted([("bl402", "P7/x.h5", 5), ("bl402", "P7/y.h5", 6)])
    world.finish(runs)
    world.lifecycle().run_once()
    world.clock.now = T0 + 3600  # archive_quiet_seconds (default 3600) later
    summary = world.lifecycle().run_once()
    assert summary["archive_groups_formed"] == 1 and summary["archive_runs_started"] == 1
    request = world.backend.requests[-1]
    body = request.body["input"]
    assert request.flow_id == FLOWS["archive"]
    assert request.tags == ["dichroism", "bl402", "archive"]
    name = body["hpss"]["archive_name"]
    assert request.label == f"bl402 archive {name}"
    assert name.startswith(f"P7_{_day(T0)}_")
    assert body["files"] == [
        {"path": "P7/x.h5", "size": 5, "checksum": checksum_of("P7/x.h5"), "version": 1},
        {"path": "P7/y.h5", "size": 6, "checksum": checksum_of("P7/y.h5"), "version": 1},
    ]
    tmp = world.config.base_dir
    assert body["cfs_root"] == f"{tmp}/cfs/4.0.2/raw"
    assert body["hpss"]["directory"] == "/home/a/alsdev/data_mover/4.0.2/bl402/raw"
    assert body["hpss"]["endpoint_id"] == IDS["nersc"]
    assert body["hpss"]["function_id"] == FUNCTIONS["hpss_archive"]
    assert body["hpss"]["options"] == {
        "bundle_max_bytes": 1_000_000_000_000,
        "single_file_threshold_bytes": 65 * 2**30,
        "max_sessions": 4,
        "walltime_seconds": 6 * 3600,
    }
    assert body["scicat"] == {
        "endpoint_id": IDS["scicat"],
        "function_id": FUNCTIONS["scicat_add_location"],
    }
    jsonschema.validate(request.body, _schema(world, "archive"))
    assert {s["state"] for s in world.scans()} == {"archive_submitted"}

    world.finish([world.runs_of("archive")[0]["run_id"]])
    summary = world.lifecycle().run_once()
    assert summary["archived"] == 2
    assert {s["state"] for s in world.scans()} == {"archived"}
    tar = f"/home/a/alsdev/data_mover/4.0.2/bl402/raw/P7/{name}.tar"
    assert {(s["tape_path"], s["tape_member"]) for s in world.scans()} == {
        (tar, "P7/x.h5"),
        (tar, "P7/y.h5"),
    }

    world.clock.now = T0 + DAY
    world.lifecycle().run_once()
    cfs = [r for _, _, r in world.backend.timer_requests if "cfs" in r.tags]
    assert len(cfs) == 1
    assert cfs[0].body["input"]["target"]["root"] == f"{tmp}/cfs/4.0.2/raw"
    assert cfs[0].body["input"]["safe"] == {
        "root": "/home/a/alsdev/data_mover/4.0.2/bl402/raw",
        "archives": [tar],
    }
    assert [f["archive"] for f in cfs[0].body["input"]["target"]["files"]] == [0, 0]
    assert cfs[0].body["input"]["verify"]["function_id"] == FUNCTIONS["hpss_verify"]
    jsonschema.validate(cfs[0].body, _schema(world, "prune"))

    # 180 days on, both timers fire and their prune runs succeed.
    world.clock.now = T0 + 181 * DAY
    started = world.fire_timers()
    assert len(started) == 2
    world.lifecycle().run_once()  # sees them running
    assert {b["run_id"] for b in world.batches()} == set(started)
    world.finish(started)
    summary = world.lifecycle().run_once()
    assert summary["prune_succeeded"] == 2
    scans = world.scans()
    assert {s["state"] for s in scans} == {"pruned"}
    assert all(s["dtn_pruned_at"] and s["cfs_pruned_at"] for s in scans)
    assert {b["state"] for b in world.batches()} == {"succeeded"}


def test_5000_scans_over_3_days_timers_grow_with_days_and_batch_size(
    world: World,
) -> None:
    """Timers per (beamline, location, day) = the day's files / 200 (the schemas' batch
    bound, which keeps each run's state under 200 KB), rounded up: never one per scan."""
    items = [
        (("bl402", "bl631")[i % 2], f"P{i % 5}/day{i % 3}/scan_{i:05d}.h5", i) for i in range(5000)
    ]
    runs = world.submitted(items)
    scan_day = {
        run: int(rel.split("/")[1][3]) for run, (_, rel, _) in zip(runs, items, strict=True)
    }
    for day in range(3):
        world.clock.now = T0 + day * DAY
        world.finish([r for r, d in scan_day.items() if d == day])
        world.lifecycle().run_once()
        world.clock.now = T0 + day * DAY + 4 * 3600  # later that day: archive groups go
        world.lifecycle().run_once()
        # archive runs succeed within the day, so CFS prunes batch by the same day
        world.finish([r["run_id"] for r in world.runs_of("archive", "ACTIVE")])
        world.lifecycle().run_once()
    world.clock.now = T0 + 3 * DAY
    world.lifecycle().run_once()

    keys = Counter(
        (r.tags[1], r.tags[3], r.tags[4].split("/")[2].split("#")[0])
        for _, _, r in world.backend.timer_requests
    )
    assert len(keys) == 2 * 2 * 3  # beamlines x locations x days
    files_per_key = Counter(
        (r.tags[1], r.tags[3], r.tags[4].split("/")[2].split("#")[0])
        for _, _, r in world.backend.timer_requests
        for _ in r.body["input"]["target"]["files"]
    )
    for key, count in keys.items():
        assert count == math.ceil(files_per_key[key] / 200), key
    files = Counter(
        r.tags[3]
        for _, _, r in world.backend.timer_requests
        for _ in r.body["input"]["target"]["files"]
    )
    assert files == {"compute_dtn": 5000, "cfs": 5000}
    # Archive groups respect the schema bound and cover every scan once.
    archived = [
        f
        for r in world.backend.requests
        if r.flow_id == FLOWS["archive"]
        for f in r.body["input"]["files"]
    ]
    assert len(archived) == len({f["path"] for f in archived}) == 5000
    assert (
        max(
            len(r.body["input"]["files"])
            for r in world.backend.requests
            if r.flow_id == FLOWS["archive"]
        )
        <= 200
    )
    # And a restart re-reading the same ledger schedules nothing more.
    before = (len(world.backend.timer_requests), len(world.backend.requests))
    world.lifecycle().run_once()
    assert (len(world.backend.timer_requests), len(world.backend.requests)) == before


def test_big_batches_split_into_chunks(world: World) -> None:
    runs = world.submitted([("bl402", f"P1/s{i:05d}.h5", 1) for i in range(2500)])
    world.finish(runs)
    world.lifecycle().run_once()
    world.clock.now = T0 + DAY
    world.lifecycle().run_once()
    # The schemas take at most 200 files per run (the run state stays under 200 KB), and
    # the lifecycle fills them: 12 full groups and one of 100.
    groups = world.ledger.query(
        "SELECT COUNT(*) AS n FROM scans GROUP BY archive_group_id ORDER BY n"
    )
    assert [g["n"] for g in groups] == [100] + [200] * 12
    # ...of which max_archive_runs_in_flight (10) have started.
    archive = [r for r in world.backend.requests if r.flow_id == FLOWS["archive"]]
    assert [len(r.body["input"]["files"]) for r in archive] == [200] * 10
    assert len({r.body["input"]["hpss"]["archive_name"] for r in archive}) == 10
    labels = sorted(name for name, _, _ in world.backend.timer_requests)
    assert labels[:3] == [
        "bl402 prune compute_dtn 2026-08-28",
        "bl402 prune compute_dtn 2026-08-28 #10",
        "bl402 prune compute_dtn 2026-08-28 #11",
    ]
    assert len(labels) == len(set(labels)) == 13
    sizes = sorted(
        len(r.body["input"]["target"]["files"]) for _, _, r in world.backend.timer_requests
    )
    assert sizes == [100] + [200] * 12


class Crash(BaseException):
    """A process dying mid-call (not an Exception: nothing may catch it)."""


class CrashAfter(FakeBackend):
    """The remote call succeeds, then the process dies before the ledger write."""

    crash_timer = False
    crash_run = False

    def create_flow_timer(self, **kwargs: Any) -> dict[str, Any]:
        timer = super().create_flow_timer(**kwargs)
        if self.crash_timer:
            raise Crash
        return timer

    def run_flow(self, request: Any) -> dict[str, Any]:
        run = super().run_flow(request)
        if self.crash_run and request.flow_id == FLOWS["archive"]:
            raise Crash
        return run


def test_restart_after_crash_between_create_timer_and_ledger_write(
    make_world: Callable[..., World],
) -> None:
    backend = CrashAfter()
    world = make_world(backend=backend)
    world.finish(world.submitted([("bl402", "P1/a.h5", 1), ("bl631", "P2/b.h5", 2)]))
    world.lifecycle().run_once()
    world.clock.now = T0 + DAY
    backend.crash_timer = True
    with pytest.raises(Crash):
        world.lifecycle().run_once()
    assert len(backend.timers) == 1
    assert "scheduling" in {b["state"] for b in world.batches()}
    backend.crash_timer = False
    # A new process: new Lifecycle object, same ledger file.
    summary = world.lifecycle().run_once()
    assert summary["prune_timers_adopted"] == 1
    names = Counter(t["name"] for t in backend.timers.values())
    assert len(names) == 2 and max(names.values()) == 1  # one timer per batch, no duplicate
    batches = world.batches()
    assert {b["state"] for b in batches} == {"scheduled"}
    assert {b["timer_id"] for b in batches} == set(backend.timers)
    for _ in range(3):
        world.lifecycle().run_once()
    assert len(backend.timers) == 2


def test_restart_after_crash_between_run_flow_and_ledger_write(
    make_world: Callable[..., World],
) -> None:
    backend = CrashAfter()
    world = make_world(backend=backend)
    world.finish(world.submitted([("bl402", "P1/a.h5", 1)]))
    world.lifecycle().run_once()
    world.clock.now = T0 + 7200
    backend.crash_run = True
    with pytest.raises(Crash):
        world.lifecycle().run_once()
    backend.crash_run = False
    (group,) = world.ledger.query("SELECT * FROM archive_groups")
    assert group["state"] == "submitting"
    summary = world.lifecycle().run_once()
    assert summary["archive_runs_adopted"] == 1
    assert len(world.runs_of("archive")) == 1
    (group,) = world.ledger.query("SELECT * FROM archive_groups")
    assert (
        group["state"] == "submitted" and group["run_id"] == world.runs_of("archive")[0]["run_id"]
    )


def test_restart_after_crash_before_run_flow_submits_exactly_once(world: World) -> None:
    world.finish(world.submitted([("bl402", "P1/a.h5", 1)]))
    world.lifecycle().run_once()
    world.clock.now = T0 + 7200
    world.backend.fail_next.append(Crash())
    with pytest.raises(Crash):
        world.lifecycle().run_once()
    assert world.runs_of("archive") == []
    world.lifecycle().run_once()
    world.lifecycle().run_once()
    assert len(world.runs_of("archive")) == 1
    (group,) = world.ledger.query("SELECT * FROM archive_groups")
    assert group["state"] == "submitted" and group["attempts"] == 1


def test_archive_runs_in_flight_are_bounded(make_world: Callable[..., World]) -> None:
    def mutate(data: dict[str, Any]) -> None:
        data["lifecycle"] = {"max_archive_runs_in_flight": 4, "archive_quiet_seconds": 0}

    world = make_world(mutate)
    world.finish(world.submitted([("bl402", f"P{i:02d}/a.h5", 1) for i in range(11)]))
    summary = world.lifecycle().run_once()
    assert summary["archive_groups_formed"] == 11
    assert summary["archive_runs_started"] == 4 and summary["archive_groups_waiting"] == 7
    for _ in range(2):
        world.lifecycle().run_once()
        assert len(world.runs_of("archive", "ACTIVE")) == 4
    live = world.runs_of("archive", "ACTIVE")
    world.finish([live[0]["run_id"]])
    world.finish([live[1]["run_id"]], "FAILED")
    summary = world.lifecycle().run_once()
    assert summary["archive_retried"] == 1
    assert len(world.runs_of("archive", "ACTIVE")) == 4
    while world.runs_of("archive", "ACTIVE"):
        world.finish([r["run_id"] for r in world.runs_of("archive", "ACTIVE")])
        world.lifecycle().run_once()
        assert len(world.runs_of("archive", "ACTIVE")) <= 4
    assert {s["state"] for s in world.scans()} == {"archived"}
    assert len(world.runs_of("archive")) == 12  # 11 groups + 1 retry


def _launcher_resubmits(world: World) -> None:
    """What the launcher does with a re-queued scan: a new run, state 'submitted'."""
    for scan in world.scans("state = 'detected'"):
        world.ledger.update_scan(scan["id"], state="submitting")
        run = world.backend.run_flow(world.backend.requests[0])
        world.ledger.update_scan(scan["id"], state="submitted", run_id=run["run_id"])


def test_failed_new_file_runs_retried_then_failed_with_reason(world: World) -> None:
    (run_id,) = world.submitted([("bl402", "P1/bad.h5", 1)])
    error = {"Error": "TransferFailed", "Cause": "permission denied on /data/bl402/P1/bad.h5"}
    for attempt in range(1, 4):
        world.backend.finish(run_id, "FAILED", {"error": error})
        world.backend.runs[run_id]["details"].update(code="FlowFailed", description="failed")
        summary = world.lifecycle().run_once()
        (scan,) = world.scans()
        if attempt < 3:
            assert summary["new_file_retried"] == 1
            assert scan["state"] == "detected" and scan["run_id"] is None
            assert "permission denied" in scan["last_error"]
            _launcher_resubmits(world)
            run_id = world.scans()[0]["run_id"]
        else:
            assert summary["new_file_failed"] == 1
    (scan,) = world.scans()
    assert scan["state"] == "failed" and scan["failed_step"] == "new_file"
    assert scan["attempts"] == 3
    assert "after 3 attempt(s): TransferFailed: permission denied" in scan["last_error"]
    # The innermost cause and a next step, not the flow-level wrapper ("FlowFailed: failed").
    assert "FlowFailed" not in scan["last_error"] and "next: grant" in scan["last_error"]
    # One attempt count everywhere: the scan row, the reason text, the recorded failures.
    (count,) = world.ledger.query(
        "SELECT COUNT(*) FROM run_failures WHERE subject = ?", (f"scan:{scan['id']}",)
    )[0]
    assert count == scan["attempts"] == 3
    (row,) = world.ledger.recent_failures()
    assert row["failed_step"] == "new_file"
    # Handling the same failed run again (a second pass) changes nothing.
    world.lifecycle().run_once()
    assert world.scans()[0]["state"] == "failed"


def test_failed_archive_retried_then_scans_failed(make_world: Callable[..., World]) -> None:
    world = make_world(
        lambda d: d.update(lifecycle={"archive_quiet_seconds": 0, "max_attempts": 2})
    )
    world.finish(world.submitted([("bl402", "P1/a.h5", 1), ("bl402", "P1/b.h5", 1)]))
    world.lifecycle().run_once()
    for _ in range(2):
        (live,) = world.runs_of("archive", "ACTIVE")
        world.finish(
            [live["run_id"]], "FAILED", error={"Error": "HPSSError", "Cause": "htar: no space"}
        )
        world.lifecycle().run_once()
    assert world.runs_of("archive", "ACTIVE") == []
    (group,) = world.ledger.query("SELECT * FROM archive_groups")
    assert group["state"] == "failed" and "htar: no space" in group["last_error"]
    scans = world.scans()
    assert {s["state"] for s in scans} == {"failed"} and {s["failed_step"] for s in scans} == {
        "archive"
    }
    assert dict(world.ledger.batch_failures()[0])["step"] == "archive"
    # One attempt count everywhere: group row, its scans, the reason text, recorded failures.
    (count,) = world.ledger.query(
        "SELECT COUNT(*) FROM run_failures WHERE subject = ?", (f"group:{group['id']}",)
    )[0]
    assert count == group["attempts"] == 2 and {s["attempts"] for s in scans} == {2}
    assert group["last_error"].startswith("after 2 attempt(s): HPSSError: htar: no space")


def test_failed_prune_keeps_scans_and_shows_then_cancel_reschedules(world: World) -> None:
    from dichroism_control.lifecycle import cancel_timer, list_timers

    world.finish(world.submitted([("bl402", "P1/a.h5", 1)]))
    world.lifecycle().run_once()
    world.clock.now = T0 + 181 * DAY
    world.lifecycle().run_once()  # day closed long ago: batch + timer, due already
    (run_id,) = world.fire_timers()
    world.finish(
        [run_id], "FAILED", error={"Error": "VerificationFailed", "Cause": "P1/a.h5: size differs"}
    )
    summary = world.lifecycle().run_once()
    assert summary["prune_failed"] == 1
    (batch,) = world.batches()
    assert batch["state"] == "failed" and "size differs" in batch["last_error"]
    (scan,) = world.scans()
    assert scan["dtn_pruned_at"] is None and scan["state"] != "failed"
    failure = dict(world.ledger.batch_failures()[0])
    assert failure["step"] == "prune compute_dtn" and "size differs" in failure["last_error"]
    listed = list_timers(world.ledger, world.backend)["timers"]
    assert [t["state"] for t in listed] == ["failed"]

    result = cancel_timer(world.ledger, world.backend, batch["timer_id"], clock=world.clock)
    assert result["released_files"] == 1
    world.lifecycle().run_once()
    states = {b["batch"]: b["state"] for b in world.batches()}
    base = batch["batch"]
    assert states == {base: "cancelled", f"{base}#2": "scheduled"}
    with pytest.raises(ConfigError, match="already cancelled"):
        cancel_timer(world.ledger, world.backend, base)


def test_retention_zero_prunes_as_soon_as_quiet(make_world: Callable[..., World]) -> None:
    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["retention_days"]["compute_dtn"] = 0
        data["lifecycle"] = {"prune_batch_quiet_seconds": 30}

    world = make_world(mutate)
    world.finish(world.submitted([("bl402", "P1/a.h5", 1), ("bl631", "P1/a.h5", 1)]))
    world.lifecycle().run_once()
    assert world.backend.timer_requests == []  # quiet period not over
    world.clock.now = T0 + 30
    world.lifecycle().run_once()
    (name, run_at, request) = world.backend.timer_requests[0]
    assert len(world.backend.timer_requests) == 1  # bl631 keeps 180 days: waits for the day
    assert request.tags[1] == "bl402"
    assert run_at == datetime.fromtimestamp(T0 + 30, UTC)  # now: prune as soon as verified
    assert name.startswith("bl402 prune compute_dtn 2026-03-01T10:00:30Z")


def test_retention_in_seconds_mode(make_world: Callable[..., World]) -> None:
    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["retention_days"] = {"compute_dtn": 45, "cfs": 45}
        data["lifecycle"] = {"retention_unit": "seconds", "prune_batch_quiet_seconds": 0}

    world = make_world(mutate)
    world.finish(world.submitted([("bl402", "P1/a.h5", 1)]))
    world.clock.now = T0 + 0.25
    world.lifecycle().run_once()
    (_, run_at, _) = world.backend.timer_requests[0]
    assert run_at == datetime.fromtimestamp(math.ceil(T0 + 0.25 + 45), UTC)
    assert run_at - timedelta(seconds=45) >= datetime.fromtimestamp(T0 + 0.25, UTC)


def test_negative_retention_is_a_config_error(write_config: Callable[..., Any]) -> None:
    from dichroism_control.config import load_config

    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["retention_days"]["cfs"] = -1

    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(mutate))
    assert str(excinfo.value) == "beamlines.bl402.retention_days.cfs: must be >= 0"


def test_invalid_prune_body_fails_the_batch_visibly(make_world: Callable[..., World]) -> None:
    def slow_archive(data: dict[str, Any]) -> None:
        data["lifecycle"] = {"archive_quiet_seconds": 30 * DAY}  # keep the archive step out

    world = make_world(slow_archive)
    world.finish(world.submitted([("bl402", "P1/../../etc/passwd", 1)]))
    world.lifecycle().run_once()
    world.clock.now = T0 + DAY
    world.lifecycle().run_once()
    assert world.backend.timer_requests == []
    batch = next(b for b in world.batches() if b["location"] == "compute_dtn")
    assert batch["state"] == "failed" and "prune input invalid" in batch["last_error"]


def test_listing_stops_once_every_awaited_run_is_seen(world: World) -> None:
    old = world.submitted([(("bl402", f"P1/old{i}.h5", 1)) for i in range(50)])
    world.finish(old)
    world.lifecycle().run_once()
    (run_id,) = world.submitted([("bl402", "P1/new.h5", 1)])
    summary = world.lifecycle().run_once()
    assert summary["runs_listed"] == 1  # newest first: the one awaited run is the first seen
    del run_id


def test_run_forever_passes_until_told_to_stop(world: World) -> None:
    world.finish(world.submitted([("bl402", "P1/a.h5", 1)]))
    waits: list[float] = []
    passes: list[dict[str, Any]] = []
    world.lifecycle().run_forever(lambda t: waits.append(t) or len(waits) == 2, passes.append)
    assert len(passes) == 2 and passes[0]["transferred"] == 1
    assert waits == [world.config.lifecycle.poll_seconds] * 2
