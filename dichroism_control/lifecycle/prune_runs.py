"""What a finished prune run did, file by file, and what happens next to each file.

The prune flow (flow_definitions/prune.json) reports by index into its input's files:
`verification.details.result[0]` has `safe` and `kept` ({i, reason, detail}: the safe copy
does not hold the version), and `check` has `delete` (deleted), `changed` (the target is not
that version any more) and `gone` (Transfer could not stat the target). Every file that was
not deleted is left in place, reported with its reason, and re-queued:

compute-dtn (this host sees the target: the watch root is local)
- safe copy not verified -> the file is sent again when it still is this version (new_file
  run), recorded as a new version when it changed, and needs a person when it is gone too;
- changed -> the file is identified here again: a new version, or the same content touched
  (its batch is formed again with the new mtime);
- gone -> not at the source any more while its CFS copy was verified: counted as pruned.
CFS (only NERSC sees the target)
- tape copy not verified (not_on_tape, tape_size_differs) -> archived again;
- the CFS file is not this version (any other reason) -> nothing to do when a newer version
  superseded it; otherwise something outside the pipeline changed CFS: needs a person.
A version left in place MAX_KEPT times stops being re-queued and needs a person.
A FAILED or ENDED run deleted nothing the flow had not verified; the batch is failed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.identity import Identity, IdentityError, identify
from dichroism_control.lifecycle.base import (
    LOCATIONS,
    MAX_KEPT,
    Location,
    Step,
    compute_result,
    failure_reason,
    run_output,
)
from dichroism_control.lifecycle.batches import batch_members
from dichroism_control.routing import RouteError, route
from dichroism_control.versions import Seen, record_in

log = logging.getLogger(__name__)

TAPE_REASONS = frozenset({"not_on_tape", "tape_size_differs"})


@dataclass
class Verdicts:
    """A prune run's outcome by file index."""

    deleted: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    unsafe: dict[int, str] = field(default_factory=dict)  # index -> "reason: detail"


def verdicts(output: dict[str, Any]) -> Verdicts:
    result = Verdicts()
    check = output.get("check")
    if isinstance(check, dict):
        for name in ("delete", "changed", "gone"):
            values = [int(i) for i in check.get(name) or [] if isinstance(i, int)]
            getattr(result, "deleted" if name == "delete" else name).extend(values)
    for item in compute_result(output, "verification").get("kept") or []:
        if isinstance(item, dict) and isinstance(item.get("i"), int):
            reason = str(item.get("reason") or "not verified")
            detail = str(item.get("detail") or "")
            result.unsafe[int(item["i"])] = f"{reason}: {detail}" if detail else reason
    return result


class PruneRuns(Step):
    """Follows the runs the prune timers start (found by their batch tag)."""

    def follow(self, batch: str, run: dict[str, Any], summary: Counter[str]) -> None:
        rows = self.ledger.query(
            "SELECT * FROM prune_timers WHERE batch = ? AND state IN ('scheduling', 'scheduled')",
            (batch,),
        )
        if not rows:
            return
        row = rows[0]
        status = run.get("status")
        now = self.clock()
        self.note_waiting("prune", [(run, f"batch:{batch}")], summary)
        if status not in FINAL_STATUSES:
            # The timer fired: the batch is scheduled whatever the ledger said before.
            self.ledger.execute(
                "UPDATE prune_timers SET state = 'scheduled', run_id = ?, updated_at = ?"
                " WHERE batch = ?",
                (run["run_id"], now, batch),
            )
            return
        if status != "SUCCEEDED":
            self._failed(row, run, summary)
            return
        outcome = verdicts(run_output(self.backend, run))
        members = batch_members(self.ledger, row)
        location = LOCATIONS[row["location"]]
        kept = 0
        with self.ledger.transaction() as conn:
            for index in outcome.deleted:
                if 0 <= index < len(members):
                    self._pruned(conn, location, members[index], now)
            summary[f"pruned_{location.name}"] += len(outcome.deleted)
            for index, member in enumerate(members):
                why = self._kept_reason(outcome, index)
                if why is None:
                    continue
                kept += 1
                self._kept(conn, location, member, why, now, summary)
            conn.execute(
                "UPDATE prune_timers SET state = 'succeeded', run_id = ?, kept = ?,"
                " last_error = ?, updated_at = ? WHERE batch = ?",
                (
                    run["run_id"],
                    kept,
                    f"{kept} file(s) left in place (see the scans)" if kept else None,
                    now,
                    batch,
                ),
            )
        summary["prune_succeeded"] += 1
        if kept:
            summary["prune_kept"] += kept
            log.warning("prune batch %s: %d file(s) left in place", batch, kept)

    @staticmethod
    def _kept_reason(outcome: Verdicts, index: int) -> tuple[str, str] | None:
        """(kind, reason) of a file the run did not delete, None for a deleted one."""
        if index in outcome.deleted:
            return None
        if index in outcome.unsafe:
            return "unsafe", outcome.unsafe[index]
        if index in outcome.changed:
            return "changed", "the target is not the version recorded (size or mtime)"
        if index in outcome.gone:
            return "gone", "Transfer could not stat the target"
        return "unsafe", "not reported by the prune run"

    def _failed(self, row: sqlite3.Row, run: dict[str, Any], summary: Counter[str]) -> None:
        # The flow deletes only what passed its checks, and fails before deleting on any
        # doubt; the scans keep their state and the batch shows as failed until a person acts.
        reason = failure_reason(run)
        with self.ledger.transaction() as conn:
            self.record_failure(conn, run, "prune", f"batch:{row['batch']}", reason)
            conn.execute(
                "UPDATE prune_timers SET state = 'failed', run_id = ?, last_error = ?,"
                " updated_at = ? WHERE batch = ?",
                (run["run_id"], reason, self.clock(), row["batch"]),
            )
        summary["prune_failed"] += 1
        log.error("prune batch %s failed: %s", row["batch"], reason)

    def _pruned(
        self, conn: sqlite3.Connection, location: Location, member: sqlite3.Row, now: float
    ) -> None:
        conn.execute(
            f"UPDATE scans SET {location.pruned} = ?, updated_at = ? WHERE id = ?",
            (now, now, member["id"]),
        )
        conn.execute(
            "UPDATE scans SET state = 'pruned', updated_at = ? WHERE id = ?"
            " AND dtn_pruned_at IS NOT NULL AND cfs_pruned_at IS NOT NULL AND state = 'archived'",
            (now, member["id"]),
        )

    def _kept(
        self,
        conn: sqlite3.Connection,
        location: Location,
        member: sqlite3.Row,
        why: tuple[str, str],
        now: float,
        summary: Counter[str],
    ) -> None:
        kind, reason = why
        note = f"kept by prune {location.name}: {reason}"
        # Out of the batch in any case: the next pass forms a new one if the file qualifies.
        conn.execute(
            f"UPDATE scans SET {location.batch} = NULL, kept = kept + 1, last_error = ?,"
            " updated_at = ? WHERE id = ?",
            (note, now, member["id"]),
        )
        if member["superseded_at"] is not None:
            return  # a newer version took its place: nothing of this one is to be done
        if int(member["kept"]) + 1 >= MAX_KEPT:
            self._needs_person(conn, member, f"{note} ({MAX_KEPT} times)", now)
            summary["prune_kept_for_good"] += 1
            return
        if location.name == "compute_dtn":
            self._kept_at_source(conn, member, kind, note, now, summary)
        elif kind == "unsafe" and reason.split(":", 1)[0] in TAPE_REASONS:
            conn.execute(
                "UPDATE scans SET state = 'transferred', archive_group_id = NULL,"
                " archived_at = NULL, tape_path = NULL, tape_member = NULL, updated_at = ?"
                " WHERE id = ?",
                (now, member["id"]),
            )
            summary["rearchive"] += 1
        else:
            self._needs_person(
                conn,
                member,
                f"{note}; the CFS copy no longer is this version (MD5 {member['checksum']});"
                f" the tape holds it at {member['tape_path']}",
                now,
            )

    def _kept_at_source(
        self,
        conn: sqlite3.Connection,
        member: sqlite3.Row,
        kind: str,
        note: str,
        now: float,
        summary: Counter[str],
    ) -> None:
        path = str(member["path"])
        if not os.path.lexists(path):
            if kind == "unsafe":
                self._needs_person(
                    conn, member, f"{note}; and the file is gone from the source", now
                )
            else:
                # Gone from the source while its CFS copy was verified: nothing to delete.
                conn.execute(
                    "UPDATE scans SET dtn_pruned_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, member["id"]),
                )
                summary["pruned_compute_dtn"] += 1
            return
        try:
            found = route(self.config, path, beamline=str(member["beamline"]))
            identity = identify(found.local_path, real_path=found.real_path)
        except (RouteError, IdentityError) as exc:
            self._needs_person(conn, member, f"{note}; cannot read it here: {exc}", now)
            return
        if identity.checksum != member["checksum"]:
            # Another content: a new version (it supersedes this one in the same transaction).
            self._record_version(conn, member, found.rel, identity, now)
            summary["kept_new_version"] += 1
        elif kind == "unsafe":
            # Still this version, but its CFS copy does not hold it: send it again.
            conn.execute(
                "UPDATE scans SET state = 'detected', run_id = NULL, submit_started_at = NULL,"
                " attempts = 0, next_attempt_at = ?, transferred_at = NULL, updated_at = ?"
                " WHERE id = ?",
                (now, now, member["id"]),
            )
            summary["kept_resent"] += 1
        else:
            conn.execute(
                "UPDATE scans SET size = ?, mtime = ?, mtime_ns = ?, inode = ?, updated_at = ?"
                " WHERE id = ?",
                (
                    identity.size,
                    identity.mtime,
                    identity.mtime_ns,
                    identity.inode,
                    now,
                    member["id"],
                ),
            )
            summary["kept_rebatched"] += 1

    @staticmethod
    def _record_version(
        conn: sqlite3.Connection, member: sqlite3.Row, rel: str, identity: Identity, now: float
    ) -> None:
        seen = Seen(str(member["beamline"]), str(member["path"]), rel, identity)
        record_in(conn, [seen], now=now)

    def _needs_person(
        self, conn: sqlite3.Connection, member: sqlite3.Row, reason: str, now: float
    ) -> None:
        conn.execute(
            "UPDATE scans SET state = 'failed', failed_step = 'prune', last_error = ?,"
            " updated_at = ? WHERE id = ?",
            (reason, now, member["id"]),
        )
        log.error("%s (version %s): %s", member["path"], member["version"], reason)
