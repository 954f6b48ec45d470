"""Archive groups: transferred scans of one (beamline, proposal directory), once quiet, go
to tape in one `archive` run; at most `max_archive_runs_in_flight` at a time.

Exactly once: a group is committed as `submitting` before `run_flow`; a group found in that
state later (a crash, a timeout) is looked up by its label in the run listing, adopted if
its run exists, and only re-opened when a complete listing proves it does not.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from typing import Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.errors import (
    BackendError,
    PermanentBackendError,
    TransientBackendError,
)
from dichroism_control.lifecycle.base import (
    ARCHIVE_MAX_FILES,
    IN_FLIGHT_SCAN_STATES,
    Conflict,
    Step,
    archive_name,
    chunks,
    compute_result,
    failure_reason,
    proposal_directory,
    run_output,
    shorten,
    single_tape_path,
    version_member,
)
from dichroism_control.lifecycle.follow import Awaited, Listing

log = logging.getLogger(__name__)


class ArchiveGroups(Step):
    """Forms, starts and follows archive runs (see the module docstring)."""

    _submitted: dict[str, int]  # run id -> group id, as of the last `awaited()`

    def awaited(self) -> list[Awaited]:
        groups = self.ledger.query(
            "SELECT id, run_id, created_at FROM archive_groups"
            " WHERE state = 'submitted' AND run_id IS NOT NULL"
        )
        self._submitted = {str(row["run_id"]): int(row["id"]) for row in groups}
        submitting = self.ledger.query(
            "SELECT label, created_at FROM archive_groups WHERE state = 'submitting'"
        )
        # Runs we know failed before must not be taken for a retry that carries their label.
        failed = frozenset(
            str(row["run_id"])
            for row in self.ledger.query("SELECT run_id FROM run_failures WHERE flow = 'archive'")
        )
        return [
            Awaited("run_id", str(r["run_id"]), "archive", float(r["created_at"])) for r in groups
        ] + [
            Awaited("label", str(r["label"]), "archive", float(r["created_at"]), failed)
            for r in submitting
        ]

    def follow(self, listing: Listing, summary: Counter[str]) -> None:
        seen: list[tuple[dict[str, Any], str]] = []
        for run_id, group_id in self._submitted.items():
            run = listing.get("run_id", run_id)
            if run is not None:
                seen.append((run, f"group:{group_id}"))
            if run is not None and run.get("status") in FINAL_STATUSES:
                self.finish(group_id, run, summary)
        self.note_waiting("archive", seen, summary)

    def finish(self, group_id: int, run: dict[str, Any], summary: Counter[str]) -> None:
        now = self.clock()
        run_id = run["run_id"]
        if run["status"] == "SUCCEEDED":
            placed = compute_result(run_output(self.backend, run), "archive")
            with self.ledger.transaction() as conn:
                cursor = conn.execute(
                    "UPDATE archive_groups SET state = 'succeeded', last_error = NULL,"
                    " updated_at = ? WHERE id = ? AND run_id = ? AND state = 'submitted'",
                    (now, group_id, run_id),
                )
                if cursor.rowcount == 0:
                    return
                members = conn.execute(
                    "SELECT * FROM scans WHERE archive_group_id = ? ORDER BY rel, version",
                    (group_id,),
                ).fetchall()
                archived = self._record_tape(conn, members, placed, now)
            summary["archive_succeeded"] += 1
            summary["archived"] += archived
            return
        reason = failure_reason(run)
        with self.ledger.transaction() as conn:
            failures = self.record_failure(conn, run, "archive", f"group:{group_id}", reason)
            if failures is None:
                return
            row = conn.execute(
                "SELECT attempts FROM archive_groups WHERE id = ?", (group_id,)
            ).fetchone()
            # One count everywhere (group row, its scans, the reason text, status): failed
            # runs, or more when a submission was refused before any run existed.
            attempts = max(failures, int(row["attempts"]))
            conn.execute(
                "UPDATE archive_groups SET attempts = ? WHERE id = ?", (attempts, group_id)
            )
            if attempts < self.settings.max_attempts:
                conn.execute(
                    "UPDATE archive_groups SET state = 'open', run_id = NULL, last_error = ?,"
                    " updated_at = ? WHERE id = ? AND run_id = ?",
                    (f"attempt {attempts} failed: {reason}", now, group_id, run_id),
                )
                summary["archive_retried"] += 1
                return
            self._fail_group(conn, group_id, f"after {attempts} attempt(s): {reason}")
        summary["archive_failed"] += 1

    def _record_tape(
        self,
        conn: sqlite3.Connection,
        members: list[sqlite3.Row],
        placed: dict[str, Any],
        now: float,
    ) -> int:
        """Where hpss_archive put each member (by index: `where[i]` into `archives`, -1 for a
        single file at its versioned path, None for a file left out because its CFS copy no
        longer was that version). Returns how many members are now archived."""
        from dichroism_control.routing import hpss_directory

        archives = [str(a) for a in placed.get("archives") or []]
        where = placed.get("where")
        if not isinstance(where, list) or len(where) != len(members):
            # Not the result this code expects: record nothing as archived.
            for m in members:
                self._leave_out(conn, m, "the archive run returned no placement for it", now)
            return 0
        archived = 0
        for member, slot in zip(members, where, strict=True):
            if isinstance(slot, int) and 0 <= slot < len(archives):
                tape, name = archives[slot], str(member["rel"])
            elif slot == -1:
                directory = hpss_directory(self.config, str(member["beamline"]))
                tape, name = single_tape_path(directory, member["rel"], member["version"]), None
            else:
                self._leave_out(conn, member, "its CFS copy was not this version", now)
                continue
            # A version superseded while it was being archived is tape history now.
            conn.execute(
                "UPDATE scans SET state = CASE WHEN superseded_at IS NULL THEN 'archived'"
                " ELSE 'superseded' END, archived_at = ?, tape_path = ?, tape_member = ?,"
                " updated_at = ? WHERE id = ? AND state = 'archive_submitted'",
                (now, tape, name, now, member["id"]),
            )
            archived += 1
        return archived

    def _leave_out(
        self, conn: sqlite3.Connection, member: sqlite3.Row, why: str, now: float
    ) -> None:
        if member["superseded_at"] is not None:
            conn.execute(
                "UPDATE scans SET state = 'superseded', updated_at = ? WHERE id = ?",
                (now, member["id"]),
            )
            return
        # Not superseded, yet CFS does not hold it: a person decides (`dichroism retry`
        # sends it again from the source, if it is still there).
        conn.execute(
            "UPDATE scans SET state = 'failed', failed_step = 'archive', last_error = ?,"
            " updated_at = ? WHERE id = ?",
            (f"not archived: {why} (MD5 {member['checksum']})", now, member["id"]),
        )
        log.error("%s (version %s): not archived: %s", member["path"], member["version"], why)

    def _fail_group(self, conn: sqlite3.Connection, group_id: int, reason: str) -> None:
        """The group and its scans fail visibly (`dichroism status` lists failed scans);
        the scans carry the group's attempt count, so every view shows the same number."""
        now = self.clock()
        conn.execute(
            "UPDATE archive_groups SET state = 'failed', last_error = ?, updated_at = ?"
            " WHERE id = ?",
            (reason, now, group_id),
        )
        conn.execute(
            "UPDATE scans SET state = 'failed', failed_step = 'archive', last_error = ?,"
            " attempts = (SELECT attempts FROM archive_groups WHERE id = ?), updated_at = ?"
            " WHERE archive_group_id = ? AND state = 'archive_submitted'",
            (reason, group_id, now, group_id),
        )
        log.error("archive group %s failed: %s", group_id, reason)

    def resolve_submitting(self, listing: Listing, summary: Counter[str]) -> None:
        """Groups left in 'submitting' by a crash or a timeout: adopt their run, or retry."""
        for group in self.ledger.query("SELECT * FROM archive_groups WHERE state = 'submitting'"):
            run = listing.get("label", group["label"])
            now = self.clock()
            if run is not None:
                with self.ledger.transaction() as conn:
                    conn.execute(
                        "UPDATE archive_groups SET state = 'submitted', run_id = ?,"
                        " updated_at = ? WHERE id = ? AND state = 'submitting'",
                        (run["run_id"], now, group["id"]),
                    )
                summary["archive_runs_adopted"] += 1
                if run.get("status") in FINAL_STATUSES:
                    self.finish(group["id"], run, summary)
            elif listing.complete:
                # Proven absent: the attempt never reached the service, so it is not counted.
                with self.ledger.transaction() as conn:
                    conn.execute(
                        "UPDATE archive_groups SET state = 'open', attempts = MAX(attempts - 1, 0),"
                        " updated_at = ? WHERE id = ? AND state = 'submitting'",
                        (now, group["id"]),
                    )

    def form(self, summary: Counter[str]) -> None:
        now = self.clock()
        quiet = self.settings.archive_quiet_seconds
        candidates: dict[tuple[str, str], list[sqlite3.Row]] = {}
        proposals: dict[tuple[str, str], str] = {}
        for row in self.ledger.query(
            "SELECT id, beamline, rel, version, checksum, transferred_at FROM scans"
            " WHERE state = 'transferred' AND archive_group_id IS NULL"
            " AND superseded_at IS NULL AND checksum IS NOT NULL ORDER BY rel, version"
        ):
            settings = self.config.beamlines.get(row["beamline"])
            if settings is None:
                continue
            directory, proposal = proposal_directory(settings, row["rel"])
            candidates.setdefault((row["beamline"], directory), []).append(row)
            proposals[(row["beamline"], directory)] = proposal
        if not candidates:
            return
        last_change = {
            key: max(float(r["transferred_at"] or 0) for r in rows)
            for key, rows in candidates.items()
        }
        # A directory still receiving scans is not quiet, even if its transferred ones are.
        placeholders = ", ".join("?" for _ in IN_FLIGHT_SCAN_STATES)
        for row in self.ledger.query(
            f"SELECT beamline, rel, created_at FROM scans WHERE state IN ({placeholders})",
            IN_FLIGHT_SCAN_STATES,
        ):
            settings = self.config.beamlines.get(row["beamline"])
            if settings is None:
                continue
            key = (row["beamline"], proposal_directory(settings, row["rel"])[0])
            if key in last_change:
                last_change[key] = max(last_change[key], float(row["created_at"]))
        for key, rows in sorted(candidates.items()):
            if now - last_change[key] < quiet:
                continue
            beamline, directory = key
            for members in chunks(rows, ARCHIVE_MAX_FILES):
                self._create_group(beamline, directory, proposals[key], members, summary)

    def _create_group(
        self,
        beamline: str,
        directory: str,
        proposal: str,
        members: list[sqlite3.Row],
        summary: Counter[str],
    ) -> None:
        now = self.clock()
        newest = max(float(m["transferred_at"] or now) for m in members)
        versions = [version_member(m["rel"], m["version"], m["checksum"]) for m in members]
        name = archive_name(beamline, proposal, versions, newest)
        label = shorten(f"{beamline} archive {name}")
        try:
            with self.ledger.transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO archive_groups (beamline, proposal, directory, archive_name,"
                    " state, label, attempts, last_change_at, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 'open', ?, 0, ?, ?, ?)",
                    (beamline, proposal, directory, name, label, newest, now, now),
                )
                group_id = cursor.lastrowid
                cursor = conn.executemany(
                    "UPDATE scans SET archive_group_id = ?, state = 'archive_submitted',"
                    " updated_at = ? WHERE id = ? AND state = 'transferred'"
                    " AND archive_group_id IS NULL",
                    [(group_id, now, m["id"]) for m in members],
                )
                if cursor.rowcount != len(members):
                    raise Conflict
        except (Conflict, sqlite3.IntegrityError):
            log.warning("archive group %s: members changed while forming it; next pass", name)
            return
        summary["archive_groups_formed"] += 1

    def submit(self, flows: dict[str, str], summary: Counter[str], errors: list[str]) -> None:
        limit = self.settings.max_archive_runs_in_flight
        in_flight = int(
            self.ledger.query(
                "SELECT COUNT(*) AS n FROM archive_groups"
                " WHERE state IN ('submitting', 'submitted')"
            )[0]["n"]
        )
        waiting = self.ledger.query("SELECT * FROM archive_groups WHERE state = 'open' ORDER BY id")
        for index, group in enumerate(waiting):
            if in_flight >= limit:
                summary["archive_groups_waiting"] += len(waiting) - index
                return
            outcome = self._submit_group(flows["archive"], group, summary, errors)
            if outcome == "stop":
                return
            if outcome == "started":
                in_flight += 1

    def _archive_body(self, group: sqlite3.Row, members: list[sqlite3.Row]) -> dict[str, Any]:
        from dichroism_control.routing import cfs_root_path, hpss_directory

        beamline = group["beamline"]
        archive = self.settings.archive
        endpoints = self.config.globus.compute_endpoints
        return {
            "input": {
                "beamline": beamline,
                "proposal": group["proposal"],
                "cfs_root": cfs_root_path(self.config, beamline),
                "files": [
                    {
                        "path": m["rel"],
                        "size": int(m["size"]),
                        "checksum": m["checksum"],
                        "version": int(m["version"]),
                    }
                    for m in members
                ],
                "hpss": {
                    "endpoint_id": endpoints.nersc,
                    "function_id": self.deployment.function_id("hpss_archive"),
                    "directory": hpss_directory(self.config, beamline),
                    "archive_name": group["archive_name"],
                    "options": {
                        "bundle_max_bytes": archive.bundle_max_bytes,
                        "single_file_threshold_bytes": archive.single_file_threshold_bytes,
                        "max_sessions": archive.max_hpss_sessions,
                        "walltime_seconds": archive.walltime_seconds,
                    },
                },
                "scicat": {
                    "endpoint_id": endpoints.scicat,
                    "function_id": self.deployment.function_id("scicat_add_location"),
                },
            }
        }

    def _submit_group(
        self, flow_id: str, group: sqlite3.Row, summary: Counter[str], errors: list[str]
    ) -> str:
        group_id = group["id"]
        members = self.ledger.query(
            "SELECT rel, size, checksum, version FROM scans WHERE archive_group_id = ?"
            " ORDER BY rel, version",
            (group_id,),
        )
        if not members:
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE archive_groups SET state = 'failed', last_error = 'no member scans',"
                    " updated_at = ? WHERE id = ?",
                    (self.clock(), group_id),
                )
            return "skipped"
        body = self._archive_body(group, members)
        invalid = self.validate("archive", body)
        if invalid:
            with self.ledger.transaction() as conn:
                self._fail_group(conn, group_id, invalid)
            summary["archive_failed"] += 1
            return "skipped"
        with self.ledger.transaction() as conn:
            cursor = conn.execute(
                "UPDATE archive_groups SET state = 'submitting', attempts = attempts + 1,"
                " updated_at = ? WHERE id = ? AND state = 'open'",
                (self.clock(), group_id),
            )
            if cursor.rowcount == 0:
                return "skipped"
        request = self.run_request(
            flow_id, body, group["label"], ["dichroism", group["beamline"], "archive"]
        )
        try:
            run = self.backend.run_flow(request)
        except TransientBackendError as exc:
            # The run may exist (a 502 after the service acted): stay 'submitting', so the
            # next pass looks it up by label before starting anything.
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE archive_groups SET last_error = ?, updated_at = ? WHERE id = ?",
                    (str(exc), self.clock(), group_id),
                )
            errors.append(f"archive {group['archive_name']}: {exc}")
            return "stop"
        except BackendError as exc:
            # Refused outright (400, 403): no run exists; counts as an attempt.
            with self.ledger.transaction() as conn:
                attempts = int(group["attempts"]) + 1
                if attempts >= self.settings.max_attempts:
                    self._fail_group(
                        conn, group_id, f"after {attempts} attempt(s): run_flow refused: {exc}"
                    )
                    summary["archive_failed"] += 1
                else:
                    conn.execute(
                        "UPDATE archive_groups SET state = 'open', last_error = ?, updated_at = ?"
                        " WHERE id = ?",
                        (f"run_flow refused: {exc}", self.clock(), group_id),
                    )
            errors.append(f"archive {group['archive_name']}: {exc}")
            return "stop" if isinstance(exc, PermanentBackendError) else "skipped"
        with self.ledger.transaction() as conn:
            conn.execute(
                "UPDATE archive_groups SET state = 'submitted', run_id = ?, last_error = NULL,"
                " updated_at = ? WHERE id = ?",
                (run["run_id"], self.clock(), group_id),
            )
        summary["archive_runs_started"] += 1
        return "started"
