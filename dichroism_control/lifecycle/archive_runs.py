"""Archive runs: follow them, and record where each file went on tape when one ends.

A run is found by its id (or, for a group left `submitting` by a crash, by its label); a
finished run moves its members to `archived` with their tape place (`where[i]` of
hpss_archive's result), retries the group, or fails it after `lifecycle.max_attempts`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from typing import Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.lifecycle.base import (
    Step,
    compute_result,
    failure_reason,
    run_output,
    single_tape_path,
)
from dichroism_control.lifecycle.follow import Awaited, Listing

log = logging.getLogger(__name__)


class ArchiveRuns(Step):
    """Follows the archive runs the lifecycle started (see the module docstring)."""

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
            fail_group(conn, group_id, now, f"after {attempts} attempt(s): {reason}")
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


def fail_group(conn: sqlite3.Connection, group_id: int, now: float, reason: str) -> None:
    """The group and its scans fail visibly (`dichroism status` lists failed scans); the
    scans carry the group's attempt count, so every view shows the same number."""
    conn.execute(
        "UPDATE archive_groups SET state = 'failed', last_error = ?, updated_at = ? WHERE id = ?",
        (reason, now, group_id),
    )
    conn.execute(
        "UPDATE scans SET state = 'failed', failed_step = 'archive', last_error = ?,"
        " attempts = (SELECT attempts FROM archive_groups WHERE id = ?), updated_at = ?"
        " WHERE archive_group_id = ? AND state = 'archive_submitted'",
        (reason, group_id, now, group_id),
    )
    log.error("archive group %s failed: %s", group_id, reason)
