"""`dichroism runs cancel ID`: cancel a run, and stop what it served.

Cancelling a run a person started means "stop": the lifecycle would otherwise take the
cancelled run (Flows ends it FAILED with details.code FlowCanceled) for a failed attempt
and start another one. So the run's subject is marked first
(before the cancel, so a lifecycle pass in between cannot re-queue it):

- a scan's new_file run: the scan ends `failed` with step `cancelled` and a reason naming
  who cancelled it; it is not sent again until a person runs `dichroism retry PATH`;
- an archive group's run: the group fails the same way (`retry --group NAME` re-opens it);
- a prune batch's run: nothing to mark; the lifecycle sees the run end and fails the
  batch (a prune run deletes nothing it has not verified; `retry --batch KEY` re-batches).

A run that is already finished is refused (exit 1). Should the run finish successfully
before the cancel takes effect, the mark is taken back and the lifecycle records the
success as usual.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.errors import DichroismError

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.ledger import Ledger


def cancel(
    ledger: Ledger, backend: Backend, run_id: str, *, by: str, now: float | None = None
) -> dict[str, Any]:
    """Cancel `run_id` and stop its subject (see the module docstring)."""
    now = time.time() if now is None else now
    run = backend.get_run(run_id)
    if run.get("status") in FINAL_STATUSES:
        raise DichroismError(
            f"run {run_id} already finished ({run.get('status')}): nothing to cancel"
        )
    reason = (
        f"cancelled by {by} (`dichroism runs cancel {run_id}`): not sent again until a"
        " person retries it"
    )
    marked = _mark(ledger, run_id, reason, now)
    try:
        answer = backend.cancel_run(run_id)
    except BaseException:
        _unmark(ledger, marked, run_id)
        raise
    status = str(answer.get("status") or "")
    result: dict[str, Any] = {"run_id": run_id, "status": status, "subject": None, "note": None}
    if marked is None:
        result["note"] = _unknown_note(ledger, run_id)
        return result
    kind, key, what, again = marked
    result["subject"] = {"kind": kind, "key": key, "what": what}
    if status == "SUCCEEDED":
        # Too late: it finished well. The lifecycle records that as usual.
        _unmark(ledger, marked, run_id)
        result["note"] = (
            f"the run finished (SUCCEEDED) before the cancel took effect: {what} goes on"
        )
        return result
    with ledger.transaction() as conn:
        _record_cancelled_run(conn, run_id, kind, key, reason, now)
        from dichroism_control.ledger import Ledger as LedgerClass

        LedgerClass.record_intervention(
            conn, action="cancel", subject=f"{kind}:{key}", by=by, note=f"run {run_id}", now=now
        )
    result["note"] = f"{what} stopped: it will not be sent again (`{again}` sends it again)"
    return result


# (kind, ledger key, what people call it, the command that sends it again)
Marked = tuple[str, str, str, str]


def _mark(ledger: Ledger, run_id: str, reason: str, now: float) -> Marked | None:
    with ledger.transaction() as conn:
        scan = conn.execute(
            "SELECT id, path, version FROM scans WHERE run_id = ? AND state = 'submitted'",
            (run_id,),
        ).fetchone()
        if scan is not None:
            conn.execute(
                "UPDATE scans SET state = 'failed', failed_step = 'cancelled', last_error = ?,"
                " updated_at = ? WHERE id = ? AND state = 'submitted' AND run_id = ?",
                (reason, now, scan["id"], run_id),
            )
            return (
                "scan",
                str(scan["id"]),
                f"scan {scan['path']} (v{scan['version']})",
                f"dichroism retry {scan['path']}",
            )
        group = conn.execute(
            "SELECT id, archive_name FROM archive_groups WHERE run_id = ? AND state = 'submitted'",
            (run_id,),
        ).fetchone()
        if group is not None:
            conn.execute(
                "UPDATE archive_groups SET state = 'failed', last_error = ?, updated_at = ?"
                " WHERE id = ?",
                (reason, now, group["id"]),
            )
            conn.execute(
                "UPDATE scans SET state = 'failed', failed_step = 'archive', last_error = ?,"
                " updated_at = ? WHERE archive_group_id = ? AND state = 'archive_submitted'",
                (reason, now, group["id"]),
            )
            name = str(group["archive_name"])
            return ("group", name, f"archive group {name}", f"dichroism retry --group {name}")
    return None


def _unmark(ledger: Ledger, marked: Marked | None, run_id: str) -> None:
    if marked is None:
        return
    kind, key, _, _ = marked
    with ledger.transaction() as conn:
        if kind == "scan":
            conn.execute(
                "UPDATE scans SET state = 'submitted', failed_step = NULL WHERE id = ?"
                " AND state = 'failed' AND failed_step = 'cancelled' AND run_id = ?",
                (int(key), run_id),
            )
            return
        group = conn.execute(
            "SELECT id FROM archive_groups WHERE archive_name = ?", (key,)
        ).fetchone()
        conn.execute(
            "UPDATE archive_groups SET state = 'submitted' WHERE id = ? AND state = 'failed'",
            (group["id"],),
        )
        conn.execute(
            "UPDATE scans SET state = 'archive_submitted', failed_step = NULL"
            " WHERE archive_group_id = ? AND state = 'failed' AND failed_step = 'archive'",
            (group["id"],),
        )


def _record_cancelled_run(
    conn: sqlite3.Connection, run_id: str, kind: str, key: str, reason: str, now: float
) -> None:
    """The run goes on the subject's record (`scan show`) as a cancelled attempt (FAILED,
    as Flows ends a cancelled run)."""
    if kind == "group":
        row = conn.execute(
            "SELECT id FROM archive_groups WHERE archive_name = ?", (key,)
        ).fetchone()
        subject, flow = f"group:{row['id']}", "archive"
    else:
        subject, flow = f"scan:{key}", "new_file"
    cause = {"line": reason, "step": None, "message": reason, "remedy": None, "detail": None}
    conn.execute(
        "INSERT OR IGNORE INTO run_failures (run_id, flow, subject, status, reason, failed_at,"
        " cause) VALUES (?, ?, ?, 'FAILED', ?, ?, ?)",
        (run_id, flow, subject, reason, now, json.dumps(cause)),
    )


def _unknown_note(ledger: Ledger, run_id: str) -> str:
    rows = ledger.query("SELECT batch FROM prune_timers WHERE run_id = ?", (run_id,))
    if rows:
        return (
            f"prune batch {rows[0]['batch']}: the lifecycle fails the batch when it sees the run"
            f" ended (nothing unverified is deleted); `dichroism retry --batch {rows[0]['batch']}`"
            " re-batches its files"
        )
    return "no scan, archive group or prune batch of this ledger waits for this run"
