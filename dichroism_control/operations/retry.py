"""`dichroism retry`: put failed scans, archive groups and prune batches back in the queue.

What a retry does, by what failed (nothing is ever deleted by a retry itself):

- a scan whose new_file run or submission failed (or was cancelled): the SAME version is
  sent again (`detected`, the launcher starts a new_file run with the same label, CFS path
  and SciCat record; never a new version). Refused when that version cannot be sent any
  more: the file is gone from the source, its size changed (then it is a new version, which
  the watcher records), or its compute-dtn copy was pruned;
- a scan left out of a successful archive run (its CFS copy was not that version): sent
  again the same way, then archived in a new group;
- a scan whose failure is its archive group's: the group is re-opened (below);
- a scan a prune left in place for a person: it goes back to the state that schedules its
  prune again (`archived`, `transferred`, ...); the prune flow re-verifies at run time. A
  version kept `MAX_KEPT` times goes back, with its counter reset, only when a person names
  it (`retry PATH`); a filter (`--failed`, ...) skips it and says so;
- an archive group: re-opened (`open`, attempts 0), its failed members back to
  `archive_submitted`; members superseded meanwhile leave the group (`superseded`);
- a prune batch: its unpruned files are released for a new batch (the code `timers cancel`
  uses), the batch kept as `retried`.

A superseded version is never retried. Failed runs before a retry stop counting as
attempts (`run_failures.cleared_at`); an acknowledgement of the subject is removed; the
retry is recorded (`interventions`) with who and when.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dichroism_control.lifecycle.base import MAX_KEPT
from dichroism_control.operations.selection import (
    Selection,
    Skip,
    batch_name,
    group_name,
    scan_name,
)

if TYPE_CHECKING:
    from dichroism_control.ledger import Ledger

_LIVE_GROUP_STATES = ("open", "submitting", "submitted")


@dataclass
class ScanRetry:
    row: sqlite3.Row
    to_state: str
    note: str
    reset_kept: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": f"scan:{self.row['id']}",
            "path": self.row["path"],
            "beamline": self.row["beamline"],
            "rel": self.row["rel"],
            "version": self.row["version"],
            "failed_step": self.row["failed_step"],
            "to_state": self.to_state,
            "kept_reset": self.reset_kept,
            "note": self.note,
        }


@dataclass
class GroupRetry:
    row: sqlite3.Row
    members: list[sqlite3.Row]
    retired: list[sqlite3.Row]

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": f"group:{self.row['id']}",
            "name": self.row["archive_name"],
            "beamline": self.row["beamline"],
            "scans": len(self.members),
            "superseded_left_out": len(self.retired),
            "note": f"re-opened: {len(self.members)} scan(s) archived again by the next pass",
        }


@dataclass
class BatchRetry:
    row: sqlite3.Row
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": f"batch:{self.row['batch']}",
            "batch": self.row["batch"],
            "beamline": self.row["beamline"],
            "location": self.row["location"],
            "files": self.files,
            "note": f"{self.files} file(s) released for a new prune batch",
        }


@dataclass
class RetryPlan:
    scans: list[ScanRetry] = field(default_factory=list)
    groups: list[GroupRetry] = field(default_factory=list)
    batches: list[BatchRetry] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.scans) + len(self.groups) + len(self.batches)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scans": [s.as_dict() for s in self.scans],
            "groups": [g.as_dict() for g in self.groups],
            "batches": [b.as_dict() for b in self.batches],
            "skipped": [s.as_dict() for s in self.skipped],
            "requeued": self.count,
        }


def plan(ledger: Ledger, selection: Selection, *, explicit: bool) -> RetryPlan:
    """What a retry of `selection` would do; nothing is written."""
    result = RetryPlan(skipped=list(selection.skipped))
    groups: dict[int, sqlite3.Row] = {int(g["id"]): g for g in selection.groups}
    for row in selection.scans:
        group = _group_of(ledger, row)
        failed_with_group = row["state"] == "failed" and row["failed_step"] == "archive"
        if failed_with_group and group is not None and group["state"] == "failed":
            groups.setdefault(int(group["id"]), group)  # the group's failure: re-open it
            continue
        outcome = _plan_scan(row, group, explicit=explicit)
        if isinstance(outcome, Skip):
            result.skipped.append(outcome)
        else:
            result.scans.append(outcome)
    for group in groups.values():
        planned = _plan_group(ledger, group)
        if isinstance(planned, Skip):
            result.skipped.append(planned)
        else:
            result.groups.append(planned)
    for batch in selection.batches:
        if batch["state"] != "failed":
            result.skipped.append(
                Skip(f"batch:{batch['batch']}", batch_name(batch), _not_failed(batch["state"]))
            )
            continue
        result.batches.append(BatchRetry(batch, _unpruned_members(ledger, batch)))
    return result


def _not_failed(state: str) -> str:
    return f"is {state}, not failed: nothing to retry"


def _group_of(ledger: Ledger, row: sqlite3.Row) -> sqlite3.Row | None:
    if row["archive_group_id"] is None:
        return None
    rows = ledger.query("SELECT * FROM archive_groups WHERE id = ?", (row["archive_group_id"],))
    return rows[0] if rows else None


def _plan_scan(row: sqlite3.Row, group: sqlite3.Row | None, *, explicit: bool) -> ScanRetry | Skip:
    subject, what = f"scan:{row['id']}", scan_name(row)
    if row["state"] != "failed":
        return Skip(subject, what, _not_failed(row["state"]))
    if row["superseded_at"] is not None:
        return Skip(
            subject, what, "superseded by a newer version: a superseded version is never retried"
        )
    if row["failed_step"] == "prune":
        if int(row["kept"]) >= MAX_KEPT and not explicit:
            return Skip(
                subject,
                what,
                f"a prune left it in place {row['kept']} times: only a person naming it"
                f" (`dichroism retry {row['path']}`) sends it back, with its count reset",
            )
        state = _state_before_prune(row, group)
        if state != "detected":
            return ScanRetry(
                row,
                state,
                f"back to {state}: its prune is scheduled again and re-verified at run time",
                reset_kept=explicit,
            )
    refusal = _cannot_resend(row)
    if refusal is not None:
        return Skip(subject, what, refusal)
    return ScanRetry(
        row,
        "detected",
        f"new_file run again: the same version (MD5 {row['checksum']}), the same CFS path"
        " and SciCat record",
        reset_kept=explicit and row["failed_step"] == "prune",
    )


def _state_before_prune(row: sqlite3.Row, group: sqlite3.Row | None) -> str:
    """Where a version a prune left for a person was in the pipeline (the failure kept no
    note of it): what its timestamps and its archive group say."""
    if row["archived_at"] is not None and row["tape_path"] is not None:
        return "archived"
    if group is not None and group["state"] in _LIVE_GROUP_STATES:
        return "archive_submitted"
    if row["transferred_at"] is not None:
        return "transferred"
    return "detected"


def _cannot_resend(row: sqlite3.Row) -> str | None:
    """Why this version can no longer be sent from the source, or None."""
    if row["dtn_pruned_at"] is not None:
        return "its compute-dtn copy was pruned: there is nothing to send again"
    path = str(row["path"])
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return f"the file is gone from the source ({path}): there is nothing to send again"
    except OSError as exc:
        return f"cannot read the file at the source ({path}: {exc.strerror})"
    if size != int(row["size"]):
        return (
            f"the file at the source changed (size {size}, this version {row['size']}): the"
            " watcher records it as a new version; this one cannot be sent again"
        )
    return None


def _plan_group(ledger: Ledger, group: sqlite3.Row) -> GroupRetry | Skip:
    subject, what = f"group:{group['id']}", group_name(group)
    if group["state"] != "failed":
        return Skip(subject, what, _not_failed(group["state"]))
    failed = ledger.query(
        "SELECT * FROM scans WHERE archive_group_id = ? AND state = 'failed'"
        " AND failed_step = 'archive' ORDER BY rel, version",
        (group["id"],),
    )
    members = [m for m in failed if m["superseded_at"] is None]
    retired = [m for m in failed if m["superseded_at"] is not None]
    if not members:
        return Skip(subject, what, "every failed member was superseded: nothing to archive again")
    return GroupRetry(group, members, retired)


def _unpruned_members(ledger: Ledger, batch: sqlite3.Row) -> int:
    from dichroism_control.lifecycle.base import LOCATIONS

    location = LOCATIONS[batch["location"]]
    (row,) = ledger.query(
        f"SELECT COUNT(*) AS n FROM scans WHERE {location.batch} = ? AND {location.pruned} IS NULL",
        (batch["batch"],),
    )
    return int(row["n"])


# -- applying ------------------------------------------------------------------------------
def apply(ledger: Ledger, retry: RetryPlan, *, by: str, now: float | None = None) -> RetryPlan:
    """Carry out `retry` in one transaction; what changed meanwhile (the lifecycle moved it)
    is moved to `skipped`. Returns what was done."""
    now = time.time() if now is None else now
    done = RetryPlan(skipped=list(retry.skipped))
    with ledger.transaction() as conn:
        for scan in retry.scans:
            if _apply_scan(conn, scan, now):
                _record(conn, f"scan:{scan.row['id']}", by, scan.note, now)
                done.scans.append(scan)
            else:
                done.skipped.append(_moved(f"scan:{scan.row['id']}", scan_name(scan.row)))
        for group in retry.groups:
            if _apply_group(conn, group, by, now):
                _record(conn, f"group:{group.row['id']}", by, group.as_dict()["note"], now)
                for member in group.members:
                    _clear(conn, f"scan:{member['id']}")
                done.groups.append(group)
            else:
                done.skipped.append(_moved(f"group:{group.row['id']}", group_name(group.row)))
        for batch in retry.batches:
            released = _apply_batch(conn, batch, by, now)
            if released is None:
                done.skipped.append(_moved(f"batch:{batch.row['batch']}", batch_name(batch.row)))
                continue
            batch.files = released
            _record(conn, f"batch:{batch.row['batch']}", by, batch.as_dict()["note"], now)
            done.batches.append(batch)
    return done


def _moved(subject: str, what: str) -> Skip:
    return Skip(subject, what, "changed while retrying it (the lifecycle moved it): look again")


def _record(conn: sqlite3.Connection, subject: str, by: str, note: str, now: float) -> None:
    from dichroism_control.ledger import Ledger

    _clear(conn, subject, now)
    Ledger.record_intervention(conn, action="retry", subject=subject, by=by, note=note, now=now)


def _clear(conn: sqlite3.Connection, subject: str, now: float | None = None) -> None:
    """The subject's failures stop counting as attempts; its acknowledgement goes."""
    if now is not None:
        conn.execute(
            "UPDATE run_failures SET cleared_at = ? WHERE subject = ? AND cleared_at IS NULL",
            (now, subject),
        )
    conn.execute("DELETE FROM acknowledged WHERE subject = ?", (subject,))


def _apply_scan(conn: sqlite3.Connection, scan: ScanRetry, now: float) -> bool:
    kept = ", kept = 0" if scan.reset_kept else ""
    if scan.to_state == "detected":
        # submit_started_at stays: a submission whose outcome was unknown is looked up by
        # its label before it is ever sent again (launcher crash recovery).
        sql = (
            "UPDATE scans SET state = 'detected', run_id = NULL, attempts = 0,"
            " next_attempt_at = ?, failed_step = NULL, transferred_at = NULL,"
            f" archive_group_id = NULL, updated_at = ?{kept}"
            " WHERE id = ? AND state = 'failed' AND superseded_at IS NULL"
        )
        params: tuple[Any, ...] = (now, now, scan.row["id"])
    else:
        detach = ", archive_group_id = NULL" if scan.to_state == "transferred" else ""
        sql = (
            f"UPDATE scans SET state = ?, failed_step = NULL, attempts = 0{detach},"
            f" updated_at = ?{kept} WHERE id = ? AND state = 'failed'"
            " AND superseded_at IS NULL"
        )
        params = (scan.to_state, now, scan.row["id"])
    return conn.execute(sql, params).rowcount == 1


def _apply_group(conn: sqlite3.Connection, group: GroupRetry, by: str, now: float) -> bool:
    reopened = conn.execute(
        "UPDATE archive_groups SET state = 'open', attempts = 0, run_id = NULL,"
        " last_error = ?, updated_at = ? WHERE id = ? AND state = 'failed'",
        (f"retried by {by}: was: {group.row['last_error']}", now, group.row["id"]),
    ).rowcount
    if reopened != 1:
        return False
    conn.executemany(
        "UPDATE scans SET state = 'archive_submitted', failed_step = NULL, attempts = 0,"
        " updated_at = ? WHERE id = ? AND state = 'failed'",
        [(now, m["id"]) for m in group.members],
    )
    # A superseded member is never sent again: it leaves the group and the pipeline.
    conn.executemany(
        "UPDATE scans SET state = 'superseded', archive_group_id = NULL, updated_at = ?"
        " WHERE id = ? AND state = 'failed'",
        [(now, m["id"]) for m in group.retired],
    )
    return True


def _apply_batch(conn: sqlite3.Connection, batch: BatchRetry, by: str, now: float) -> int | None:
    from dichroism_control.lifecycle.timers import release_batch

    row = conn.execute(
        "SELECT * FROM prune_timers WHERE batch = ? AND state = 'failed'", (batch.row["batch"],)
    ).fetchone()
    if row is None:
        return None
    return release_batch(
        conn,
        row,
        state="retried",
        note=f"retried by {by}; {{released}} file(s) released for a new batch",
        now=now,
    )
