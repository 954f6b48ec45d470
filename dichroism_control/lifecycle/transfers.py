"""new_file runs: a finished run moves its scan to `transferred`, back to the queue, or to
`failed` after `lifecycle.max_attempts` failed runs."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.lifecycle.base import Step, failure_reason
from dichroism_control.lifecycle.follow import Awaited, Listing

log = logging.getLogger(__name__)


class NewFileRuns(Step):
    """Follows the new_file runs the launcher started (matched by run id)."""

    _scans: dict[str, int]  # run id -> scan id, as of the last `awaited()`

    def awaited(self) -> list[Awaited]:
        rows = self.ledger.query(
            "SELECT id, run_id, COALESCE(submit_started_at, created_at) AS since"
            " FROM scans WHERE state = 'submitted' AND run_id IS NOT NULL"
        )
        self._scans = {str(row["run_id"]): int(row["id"]) for row in rows}
        return [Awaited("run_id", str(r["run_id"]), "new_file", float(r["since"])) for r in rows]

    def follow(self, listing: Listing, summary: Counter[str]) -> None:
        seen: list[tuple[dict[str, Any], str]] = []
        for run_id, scan_id in self._scans.items():
            run = listing.get("run_id", run_id)
            if run is not None:
                seen.append((run, f"scan:{scan_id}"))
            if run is not None and run.get("status") in FINAL_STATUSES:
                self.finish(scan_id, run, summary)
        self.note_waiting("new_file", seen, summary)

    def finish(self, scan_id: int, run: dict[str, Any], summary: Counter[str]) -> None:
        now = self.clock()
        run_id = run["run_id"]
        if run["status"] == "SUCCEEDED":
            with self.ledger.transaction() as conn:
                # A version superseded while its run was in flight leaves the pipeline: its
                # source copy is another content now, and its CFS copy will be replaced.
                cursor = conn.execute(
                    "UPDATE scans SET state = CASE WHEN superseded_at IS NULL THEN 'transferred'"
                    " ELSE 'superseded' END, transferred_at = ?, last_error = NULL,"
                    " failed_step = NULL, updated_at = ? WHERE id = ? AND state = 'submitted'"
                    " AND run_id = ?",
                    (now, now, scan_id, run_id),
                )
            summary["transferred"] += cursor.rowcount
            return
        reason = failure_reason(run)
        with self.ledger.transaction() as conn:
            retired = conn.execute(
                "UPDATE scans SET state = 'superseded', last_error = ?, updated_at = ?"
                " WHERE id = ? AND state = 'submitted' AND run_id = ?"
                " AND superseded_at IS NOT NULL",
                (f"run ended after a newer version was recorded: {reason}", now, scan_id, run_id),
            )
            if retired.rowcount:
                # Most likely the file changed under its transfer (the checksum no longer
                # matched): the newer version is the one to ship, never this one again.
                summary["superseded"] += 1
                return
            failures = self.record_failure(conn, run, "new_file", f"scan:{scan_id}", reason)
            if failures is None:
                # A run we already counted, yet the scan points at it again: the launcher's
                # crash recovery adopted the old run by its (reused) label. Queue it again
                # without counting a second failure.
                conn.execute(
                    "UPDATE scans SET state = 'detected', run_id = NULL,"
                    " submit_started_at = NULL, attempts = 0, next_attempt_at = ?,"
                    " updated_at = ? WHERE id = ? AND state = 'submitted' AND run_id = ?",
                    (now, now, scan_id, run_id),
                )
                return
            if failures < self.settings.max_attempts:
                # Back into the launcher's queue (the ledger is the queue): the launcher
                # starts the new run through its own exactly-once path.
                conn.execute(
                    "UPDATE scans SET state = 'detected', run_id = NULL, submit_started_at = NULL,"
                    " attempts = 0, next_attempt_at = ?, last_error = ?, updated_at = ?"
                    " WHERE id = ? AND state = 'submitted' AND run_id = ?",
                    (now, f"attempt {failures} failed: {reason}", now, scan_id, run_id),
                )
                summary["new_file_retried"] += 1
                log.warning(
                    "scan %s: new_file run %s failed (%s); retrying", scan_id, run_id, reason
                )
                return
            why = f"after {failures} attempt(s): {reason}"
            conn.execute(
                "UPDATE scans SET state = 'failed', failed_step = 'new_file', last_error = ?,"
                " attempts = ?, updated_at = ? WHERE id = ? AND state = 'submitted' AND run_id = ?",
                (why, failures, now, scan_id, run_id),
            )
        summary["new_file_failed"] += 1
        log.error("scan %s: new_file failed %s", scan_id, why)
