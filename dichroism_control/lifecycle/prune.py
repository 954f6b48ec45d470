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

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.errors import BackendError
from dichroism_control.lifecycle.base import (
    CLOCK_SKEW_SECONDS,
    LOCATIONS,
    PRUNE_MAX_FILES,
    Conflict,
    Location,
    Step,
    chunks,
    failure_reason,
    shorten,
    timer_id_of,
    utc,
    utc_day,
)
from dichroism_control.lifecycle.follow import Awaited, Listing

log = logging.getLogger(__name__)


class PruneBatches(Step):
    """Forms prune batches, schedules their timers and follows the runs the timers start."""

    _labels: list[str]  # labels of the batches awaited, as of the last `awaited()`

    def awaited(self) -> list[Awaited]:
        # A prune run cannot exist before its timer fires: only batches due by now are looked
        # for, so a timer 180 days out does not make every pass read the whole history.
        rows = self.ledger.query(
            "SELECT batch, label, run_at, created_at FROM prune_timers"
            " WHERE state IN ('scheduling', 'scheduled') AND run_at <= ?",
            (self.clock() + CLOCK_SKEW_SECONDS,),
        )
        self._labels = [str(r["label"]) for r in rows]
        return [
            Awaited(
                "label", str(r["label"]), "prune", min(float(r["run_at"]), float(r["created_at"]))
            )
            for r in rows
        ]

    def follow(self, listing: Listing, summary: Counter[str]) -> None:
        for label in self._labels:
            run = listing.get("label", label)
            if run is not None:
                self._follow_one(label, run, summary)

    def _follow_one(self, label: str, run: dict[str, Any], summary: Counter[str]) -> None:
        now = self.clock()
        rows = self.ledger.query(
            "SELECT * FROM prune_timers WHERE label = ? AND state IN ('scheduling', 'scheduled')",
            (label,),
        )
        if not rows:
            return
        row = rows[0]
        status = run.get("status")
        self.note_waiting("prune", [(run, f"batch:{row['batch']}")], summary)
        with self.ledger.transaction() as conn:
            if status not in FINAL_STATUSES:
                # The timer fired: the batch is scheduled whatever the ledger said before.
                conn.execute(
                    "UPDATE prune_timers SET state = 'scheduled', run_id = ?, updated_at = ?"
                    " WHERE batch = ?",
                    (run["run_id"], now, row["batch"]),
                )
                return
            if status == "SUCCEEDED":
                location = LOCATIONS[row["location"]]
                conn.execute(
                    "UPDATE prune_timers SET state = 'succeeded', run_id = ?, last_error = NULL,"
                    " updated_at = ? WHERE batch = ?",
                    (run["run_id"], now, row["batch"]),
                )
                cursor = conn.execute(
                    f"UPDATE scans SET {location.pruned} = ?, updated_at = ?"
                    f" WHERE {location.batch} = ? AND {location.pruned} IS NULL",
                    (now, now, row["batch"]),
                )
                conn.execute(
                    "UPDATE scans SET state = 'pruned', updated_at = ? WHERE"
                    " dtn_pruned_at IS NOT NULL AND cfs_pruned_at IS NOT NULL"
                    " AND state = 'archived' AND (dtn_prune_batch = ? OR cfs_prune_batch = ?)",
                    (now, row["batch"], row["batch"]),
                )
                summary[f"pruned_{location.name}"] += cursor.rowcount
                summary["prune_succeeded"] += 1
                return
            # Nothing unverified was deleted (the flow fails before deleting); the scans keep
            # their state and the batch shows as failed until an operator acts.
            reason = failure_reason(run)
            self.record_failure(conn, run, "prune", f"batch:{row['batch']}", reason)
            conn.execute(
                "UPDATE prune_timers SET state = 'failed', run_id = ?, last_error = ?,"
                " updated_at = ? WHERE batch = ?",
                (run["run_id"], reason, now, row["batch"]),
            )
        summary["prune_failed"] += 1
        log.error("prune batch %s failed: %s", row["batch"], reason)

    def _retention(self, beamline: str, location: str) -> tuple[timedelta, bool]:
        """(retention, quiet_mode) for one (beamline, location)."""
        amount = int(getattr(self.config.beamline(beamline).retention_days, location))
        seconds_mode = self.settings.retention_unit == "seconds"
        delta = timedelta(seconds=amount) if seconds_mode else timedelta(days=amount)
        return delta, seconds_mode or amount == 0

    def resolve_scheduling(
        self, listing: Listing, summary: Counter[str], errors: list[str]
    ) -> list[str]:
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
            timer = timers.get(row["label"])
            fired = listing.get("label", row["label"])
            if timer is None and fired is None:
                pending.append(row["batch"])
                continue
            timer_id = timer_id_of(timer) if timer is not None else row["timer_id"]
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'scheduled', timer_id = ?, last_error = NULL,"
                    " updated_at = ? WHERE batch = ? AND state = 'scheduling'",
                    (timer_id, self.clock(), row["batch"]),
                )
            summary["prune_timers_adopted"] += 1
        return pending

    def form(self, summary: Counter[str]) -> list[str]:
        """Close the batches that are complete; returns their keys (rows in 'scheduling')."""
        now = self.clock()
        created: list[str] = []
        quiet = self.settings.prune_batch_quiet_seconds
        for location in LOCATIONS.values():
            rows = self.ledger.query(
                f"SELECT id, beamline, rel, size, {location.confirmed} AS confirmed FROM scans"
                f" WHERE {location.confirmed} IS NOT NULL AND {location.batch} IS NULL"
                f" AND {location.pruned} IS NULL ORDER BY rel"
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
        for chunk in chunks(members, PRUNE_MAX_FILES):
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

    def _prune_body(self, row: sqlite3.Row, files: list[dict[str, Any]]) -> dict[str, Any]:
        from dichroism_control.routing import cfs_root_path, hpss_directory, source_root_path

        beamline = row["beamline"]
        settings = self.config.beamline(beamline)
        nersc = self.config.globus.compute_endpoints.nersc
        if row["location"] == "compute_dtn":
            target = {
                "collection_id": self.config.endpoint(settings.source).uuid,
                "root": source_root_path(self.config, beamline),
                "files": files,
            }
            safe_root = cfs_root_path(self.config, beamline)
            verifier = "cfs_verify"
        else:
            target = {
                "collection_id": self.config.endpoint(settings.destination).uuid,
                "root": cfs_root_path(self.config, beamline),
                "files": files,
            }
            safe_root = hpss_directory(self.config, beamline)
            verifier = "hpss_verify"
        return {
            "input": {
                "beamline": beamline,
                "location": row["location"],
                "target": target,
                "safe": {"root": safe_root},
                "verify": {
                    "endpoint_id": nersc,
                    "function_id": self.deployment.function_id(verifier),
                },
            }
        }

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
        location = LOCATIONS[row["location"]]
        files = [
            {"path": m["rel"], "size": int(m["size"])}
            for m in self.ledger.query(
                f"SELECT rel, size FROM scans WHERE {location.batch} = ? ORDER BY rel",
                (row["batch"],),
            )
        ]
        now = self.clock()
        if not files:
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'cancelled', last_error = 'no member scans',"
                    " updated_at = ? WHERE batch = ?",
                    (now, row["batch"]),
                )
            return True
        body = self._prune_body(row, files)
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
        request = self.run_request(
            flow_id, body, row["label"], ["dichroism", row["beamline"], "prune", row["location"]]
        )
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
