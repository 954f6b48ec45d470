"""Prune batches and their timers: confirmed copies are batched per (beamline, location,
day) into one Globus Timer each, which starts the `prune` flow after the retention.

Exactly once: a batch is committed as `scheduling` before `create_flow_timer`; a batch found
in that state later is looked up by timer name (and by its run, should the timer have
fired) before a timer is ever created again.

Batch closing rule (prune timers carry a body fixed at creation, so a batch must be complete
before its timer exists): a day's batch closes once that UTC day of confirmation has ended,
and its timer fires at (newest member's confirmation + retention), so no file is pruned before
its own retention has passed and there is at most one timer per (beamline, location, day).
With retention 0 or `retention_unit: seconds` waiting for the day's end would defeat the
point, so there a batch closes once no scan has joined it for `prune_batch_quiet_seconds`
(several batches a day are then possible, each labelled with its closing time).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from dichroism_control.binding import LOCATION_VERIFIER
from dichroism_control.definitions import wait_time
from dichroism_control.errors import BackendError
from dichroism_control.identity import iso_utc, transfer_time
from dichroism_control.lifecycle.base import (
    CLOCK_SKEW_SECONDS,
    LOCATIONS,
    PRUNE_MAX_FILES,
    Conflict,
    Location,
    Step,
    shorten,
    timer_id_of,
    utc,
    utc_day,
)
from dichroism_control.lifecycle.batches import batch_chunks, batch_members, batch_tag
from dichroism_control.lifecycle.follow import Awaited, Listing
from dichroism_control.lifecycle.prune_runs import PruneRuns

# The per-file stat loop of a prune run (a Transfer stat each, seconds apiece) is given a day.
STAT_LOOP_ALLOWANCE_SECONDS = 86400.0

log = logging.getLogger(__name__)


class PruneBatches(Step):
    """Forms prune batches, schedules their timers and follows the runs the timers start."""

    _batches: list[str]  # the batches awaited, as of the last `awaited()`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs = PruneRuns(*args, **kwargs)
        self._allowance: float | None = None

    def awaited(self) -> list[Awaited]:
        # A prune run cannot exist before its timer fires: only batches due by now are looked
        # for, so a timer 180 days out does not make every pass read the whole history.
        rows = self.ledger.query(
            "SELECT batch, run_at, created_at FROM prune_timers"
            " WHERE state IN ('scheduling', 'scheduled') AND run_at <= ?",
            (self.clock() + CLOCK_SKEW_SECONDS,),
        )
        self._batches = [str(r["batch"]) for r in rows]
        return [
            Awaited(
                "tag",
                batch_tag(str(r["batch"])),
                "prune",
                min(float(r["run_at"]), float(r["created_at"])),
            )
            for r in rows
        ]

    def follow(self, listing: Listing, summary: Counter[str]) -> None:
        for batch in self._batches:
            run = listing.get("tag", batch_tag(batch))
            if run is not None:
                self.runs.follow(batch, run, summary)

    def _retention(self, beamline: str, location: str) -> tuple[timedelta, bool]:
        """(retention, quiet_mode) for one (beamline, location)."""
        amount = int(getattr(self.config.beamline(beamline).retention_days, location))
        seconds_mode = self.settings.retention_unit == "seconds"
        delta = timedelta(seconds=amount) if seconds_mode else timedelta(days=amount)
        return delta, seconds_mode or amount == 0

    def resolve_scheduling(self, summary: Counter[str], errors: list[str]) -> list[str]:
        """Batches left in 'scheduling' by an earlier pass: adopt their timer or recreate it.

        Returns the batches that still need a timer. A batch whose timer cannot be looked up
        this pass (Timers unreachable) is left for the next one: never create blind.
        """
        rows = self.ledger.query("SELECT * FROM prune_timers WHERE state = 'scheduling'")
        if not rows:
            return []
        try:
            timers = {t.get("name"): t for t in self.backend.iter_timers()}
        except BackendError as exc:
            errors.append(f"listing timers: {exc}")
            return []
        pending: list[str] = []
        for row in rows:
            # A batch whose timer has already fired is not here: `follow`, earlier in this
            # pass, found its run by the batch's tag and recorded it (even when the timer is
            # gone from the listing by now).
            timer = timers.get(row["label"])
            if timer is None:
                pending.append(row["batch"])
                continue
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'scheduled', timer_id = ?, last_error = NULL,"
                    " updated_at = ? WHERE batch = ? AND state = 'scheduling'",
                    (timer_id_of(timer), self.clock(), row["batch"]),
                )
            summary["prune_timers_adopted"] += 1
        return pending

    def form(self, summary: Counter[str]) -> list[str]:
        """Close the batches that are complete; returns their keys (rows in 'scheduling')."""
        now = self.clock()
        created: list[str] = []
        quiet = self.settings.prune_batch_quiet_seconds
        for location in LOCATIONS.values():
            # Only a version whose content is known and still current is pruned; a CFS
            # prune also needs the tape location the archive run recorded.
            tape = " AND tape_path IS NOT NULL" if location.name == "cfs" else ""
            rows = self.ledger.query(
                f"SELECT id, beamline, rel, version, tape_path, tape_member,"
                f" {location.confirmed} AS confirmed FROM scans"
                f" WHERE {location.confirmed} IS NOT NULL AND {location.batch} IS NULL"
                f" AND {location.pruned} IS NULL AND checksum IS NOT NULL"
                f" AND superseded_at IS NULL AND state NOT IN ('failed', 'superseded'){tape}"
                f" ORDER BY rel, version"
            )
            by_beamline: dict[str, list[sqlite3.Row]] = {}
            for row in rows:
                if row["beamline"] in self.config.beamlines:
                    by_beamline.setdefault(row["beamline"], []).append(row)
            for beamline, members in sorted(by_beamline.items()):
                retention, quiet_mode = self._retention(beamline, location.name)
                if quiet_mode:
                    newest = max(float(m["confirmed"]) for m in members)
                    if now - newest < quiet and len(members) < PRUNE_MAX_FILES:
                        continue
                    day = utc(now).strftime("%Y-%m-%dT%H:%M:%SZ")
                    created += self._create_batches(
                        beamline, location, day, members, retention, summary
                    )
                    continue
                by_day: dict[str, list[sqlite3.Row]] = {}
                for member in members:
                    by_day.setdefault(utc_day(float(member["confirmed"])), []).append(member)
                today = utc_day(now)
                for confirmed_day, day_members in sorted(by_day.items()):
                    if confirmed_day >= today:
                        continue  # the day is still open: more scans may join its batch
                    # Keyed by the day the prune is due (confirmation day + retention),
                    # which is the day its timer fires unless we are running late.
                    due = (
                        datetime.fromisoformat(confirmed_day).replace(tzinfo=UTC) + retention
                    ).date()
                    created += self._create_batches(
                        beamline, location, due.isoformat(), day_members, retention, summary
                    )
        return created

    def _create_batches(
        self,
        beamline: str,
        location: Location,
        day: str,
        members: list[sqlite3.Row],
        retention: timedelta,
        summary: Counter[str],
    ) -> list[str]:
        now = self.clock()
        created: list[str] = []
        base = f"{beamline}/{location.name}/{day}"
        existing = {
            row["batch"]
            for row in self.ledger.query(
                "SELECT batch FROM prune_timers WHERE batch = ? OR batch LIKE ?",
                (base, base + "#%"),
            )
        }
        number = 0
        for chunk in batch_chunks(members, cfs=location.name == "cfs"):
            # Keys are never reused (a cancelled batch keeps its key), so a prune run's label
            # always names exactly one batch.
            while True:
                number += 1
                batch = base if number == 1 else f"{base}#{number}"
                if batch not in existing:
                    break
            suffix = "" if number == 1 else f" #{number}"
            label = shorten(f"{beamline} prune {location.name} {day}{suffix}")
            newest = max(float(m["confirmed"]) for m in chunk)
            # Whole seconds, rounded up: Timers truncates to seconds and a file must never be
            # pruned a moment before its retention has passed.
            run_at = float(math.ceil(max(newest + retention.total_seconds(), now)))
            try:
                with self.ledger.transaction() as conn:
                    conn.execute(
                        "INSERT INTO prune_timers (batch, beamline, location, day, label, run_at,"
                        " files, state, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, 'scheduling', ?, ?)",
                        (batch, beamline, location.name, day, label, run_at, len(chunk), now, now),
                    )
                    cursor = conn.executemany(
                        f"UPDATE scans SET {location.batch} = ?, updated_at = ?"
                        f" WHERE id = ? AND {location.batch} IS NULL",
                        [(batch, now, m["id"]) for m in chunk],
                    )
                    if cursor.rowcount != len(chunk):
                        raise Conflict
            except (Conflict, sqlite3.IntegrityError):
                log.warning("prune batch %s: members changed while forming it; next pass", batch)
                return created
            existing.add(batch)
            created.append(batch)
            summary["prune_batches_formed"] += 1
        return created

    def _prune_body(self, row: sqlite3.Row, members: list[sqlite3.Row]) -> dict[str, Any]:
        """The prune input: each member as the version recorded, and where it is safe."""
        from dichroism_control.routing import cfs_root_path, hpss_directory, source_root_path

        beamline = row["beamline"]
        settings = self.config.beamline(beamline)
        cfs = row["location"] == "cfs"
        archives = sorted({m["tape_path"] for m in members if cfs and m["tape_member"]})
        index = {path: i for i, path in enumerate(archives)}
        files = []
        for m in members:
            item: dict[str, Any] = {
                "path": m["rel"],
                "size": int(m["size"]),
                "mtime": transfer_time(int(m["mtime_ns"])),
                "checksum": m["checksum"],
                "version": int(m["version"]),
            }
            if cfs:
                item["archive"] = index[m["tape_path"]] if m["tape_member"] else -1
            files.append(item)
        if cfs:
            target = {
                "collection_id": self.config.endpoint(settings.destination).uuid,
                "root": cfs_root_path(self.config, beamline),
                "files": files,
            }
            safe: dict[str, Any] = {"root": hpss_directory(self.config, beamline)}
            safe["archives"] = archives
        else:
            target = {
                "collection_id": self.config.endpoint(settings.source).uuid,
                "root": source_root_path(self.config, beamline),
                "files": files,
            }
            safe = {"root": cfs_root_path(self.config, beamline)}
        verifier = LOCATION_VERIFIER[row["location"]]
        return {
            "input": {
                "beamline": beamline,
                "location": row["location"],
                "target": target,
                "safe": safe,
                "verify": {
                    "endpoint_id": self.config.globus.compute_endpoints.nersc,
                    "function_id": self.deployment.function_id(verifier),
                },
                "deadline": iso_utc(float(row["run_at"]) + self._delete_allowance()),
            }
        }

    def _delete_allowance(self) -> float:
        """How long after the timer fires the delete task may still start and run: the
        verifier's and the delete's WaitTime plus a day for the per-file stat loop (Transfer
        gives a task ~24 h unless told; GLOBUS_NOTES). A run held up longer (an INACTIVE run
        waiting for consent) fails its delete and deletes nothing."""
        if self._allowance is None:
            states = ("VerifyCFSCopies", "DeleteUnchanged")
            waits = [wait_time(self.config, "prune", state) for state in states]
            self._allowance = sum(waits) + STAT_LOOP_ALLOWANCE_SECONDS
        return self._allowance

    def schedule(
        self,
        flows: dict[str, str],
        pending: list[str],
        summary: Counter[str],
        errors: list[str],
    ) -> None:
        # Only batches this pass created, or looked up by name and did not find, get a
        # timer; a 'scheduling' row whose lookup failed waits for the next pass.
        wanted = set(pending)
        rows = self.ledger.query(
            "SELECT * FROM prune_timers WHERE state = 'scheduling' ORDER BY run_at, batch"
        )
        for row in rows:
            if row["batch"] in wanted and not self._schedule_one(
                flows["prune"], row, summary, errors
            ):
                return

    def _schedule_one(
        self, flow_id: str, row: sqlite3.Row, summary: Counter[str], errors: list[str]
    ) -> bool:
        """Create one batch's timer; False when the backend is in trouble (stop this pass)."""
        members = batch_members(self.ledger, row)
        now = self.clock()
        if not members:
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'cancelled', last_error = 'no member scans',"
                    " updated_at = ? WHERE batch = ?",
                    (now, row["batch"]),
                )
            return True
        body = self._prune_body(row, members)
        invalid = self.validate("prune", body)
        if invalid:
            # Shown by `timers list` and in the failures; the scans keep their copies.
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'failed', last_error = ?, updated_at = ?"
                    " WHERE batch = ?",
                    (invalid, now, row["batch"]),
                )
            summary["prune_failed"] += 1
            return True
        # Timers starts the run with only body, tags and roles (its FlowStartDocument): the
        # batch is found again by its tag, never by a label.
        tags = ["dichroism", row["beamline"], "prune", row["location"], batch_tag(row["batch"])]
        request = self.run_request(flow_id, body, row["label"], tags)
        try:
            timer = self.backend.create_flow_timer(
                name=row["label"], run_at=utc(float(row["run_at"])), request=request
            )
        except BackendError as exc:
            # The row stays 'scheduling': the next pass looks the timer up by name first
            # (it may exist after a timeout) and creates it only if it does not.
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET last_error = ?, updated_at = ? WHERE batch = ?",
                    (str(exc), self.clock(), row["batch"]),
                )
            errors.append(f"timer {row['label']}: {exc}")
            return False
        with self.ledger.transaction() as conn:
            conn.execute(
                "UPDATE prune_timers SET state = 'scheduled', timer_id = ?, last_error = NULL,"
                " updated_at = ? WHERE batch = ? AND state = 'scheduling'",
                (timer_id_of(timer), self.clock(), row["batch"]),
            )
        summary["prune_timers_scheduled"] += 1
        return True
