"""Operator views of the prune batches: `dichroism timers list|cancel` (and `status`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from dichroism_control.backend import Backend
from dichroism_control.errors import BackendError, PermanentBackendError
from dichroism_control.ledger import Ledger
from dichroism_control.lifecycle.base import LOCATIONS, timer_id_of, utc

LIVE_BATCH_STATES = ("scheduling", "scheduled", "failed")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else utc(float(ts)).isoformat()


def list_timers(ledger: Ledger, backend: Backend, *, include_done: bool = False) -> dict[str, Any]:
    """Ledger prune batches merged with the Timers service's timers.

    A ledger batch is matched to its remote timer by id (or by name while 'scheduling');
    remote timers we did not create (another tool's) are listed too, without a batch.
    """
    states = None if include_done else LIVE_BATCH_STATES
    sql = "SELECT * FROM prune_timers"
    params: tuple[Any, ...] = ()
    if states is not None:
        sql += f" WHERE state IN ({', '.join('?' for _ in states)})"
        params = states
    rows = ledger.query(sql + " ORDER BY run_at, batch", params)
    remote: list[dict[str, Any]] = []
    remote_error: str | None = None
    try:
        remote = list(backend.iter_timers())
    except BackendError as exc:
        remote_error = str(exc)
    by_id = {timer_id_of(t): t for t in remote}
    by_name = {t.get("name"): t for t in remote}
    matched: set[str | None] = set()
    entries: list[dict[str, Any]] = []
    for row in rows:
        timer = by_id.get(row["timer_id"]) if row["timer_id"] else by_name.get(row["label"])
        if timer is not None:
            matched.add(timer_id_of(timer))
        entries.append(
            {
                "id": row["timer_id"] or (timer_id_of(timer) if timer else None),
                "name": row["label"],
                "batch": row["batch"],
                "beamline": row["beamline"],
                "location": row["location"],
                "next_run": (timer or {}).get("next_run") or _iso(row["run_at"]),
                "files": row["files"],
                "state": row["state"],
                "timer_status": (timer or {}).get("status"),
                "run_id": row["run_id"],
                "last_error": row["last_error"],
            }
        )
    known = {row["timer_id"] for row in ledger.query("SELECT timer_id FROM prune_timers")}
    for timer in remote:
        timer_id = timer_id_of(timer)
        if timer_id in matched or timer_id in known:
            continue
        entries.append(
            {
                "id": timer_id,
                "name": timer.get("name"),
                "batch": None,
                "beamline": None,
                "location": None,
                "next_run": timer.get("next_run"),
                "files": None,
                "state": timer.get("status"),
                "timer_status": timer.get("status"),
                "run_id": None,
                "last_error": None,
            }
        )
    result: dict[str, Any] = {"timers": entries}
    if remote_error:
        result["remote_error"] = remote_error
    return result


def cancel_timer(
    ledger: Ledger, backend: Backend, ident: str, *, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Delete a timer; a prune batch's scans are released and rebatched on the next pass.

    Cancelling never loses a prune: the batch is marked 'cancelled' (kept, with its key, for
    the record) and its unpruned scans go back to the pool, so the next lifecycle pass puts
    them in a new batch (`#2`, ...) due at confirmation + the *current* retention. To keep
    files longer, raise the retention in config.yml first. A batch whose run has already
    started cannot be cancelled here (cancel the run instead), nor can a finished one.
    """
    from dichroism_control.errors import ConfigError

    rows = ledger.query(
        "SELECT * FROM prune_timers WHERE timer_id = ? OR batch = ?", (ident, ident)
    )
    if not rows:
        # Not ours: a timer another tool made (flight checks, ...). Just delete it.
        backend.delete_timer(ident)
        return {"id": ident, "batch": None, "deleted": True, "released_files": 0}
    row = rows[0]
    if row["state"] in ("succeeded", "cancelled"):
        raise ConfigError(f"prune batch {row['batch']} is already {row['state']}")
    if row["state"] == "scheduled" and row["run_id"]:
        raise ConfigError(
            f"prune batch {row['batch']} already started run {row['run_id']}; "
            f"cancel the run instead (`dichroism runs cancel {row['run_id']}`)"
        )
    timer_id = row["timer_id"]
    if timer_id is None and row["state"] == "scheduling":
        timer_id = next(
            (timer_id_of(t) for t in backend.iter_timers() if t.get("name") == row["label"]),
            None,
        )
    deleted = False
    if timer_id:
        try:
            backend.delete_timer(timer_id)
            deleted = True
        except PermanentBackendError as exc:
            if exc.http_status != 404:
                raise
    now = clock()
    with ledger.transaction() as conn:
        released = release_batch(
            conn,
            row,
            state="cancelled",
            note="cancelled by operator; {released} file(s) released for rescheduling",
            now=now,
        )
    return {"id": timer_id, "batch": row["batch"], "deleted": deleted, "released_files": released}


def release_batch(
    conn: sqlite3.Connection, row: sqlite3.Row, *, state: str, note: str, now: float
) -> int:
    """Give a batch's unpruned files back to the pool (inside the caller's transaction):
    the next lifecycle pass puts them in a new batch (`#2`, ...) due at confirmation + the
    current retention. The batch row stays, marked `state` with `note` (`{released}` is
    replaced by the count), so its key is never reused. Nothing is deleted here. Returns how
    many files were released. `timers cancel` and `retry --batch` both come here."""
    location = LOCATIONS[row["location"]]
    released = conn.execute(
        f"UPDATE scans SET {location.batch} = NULL, updated_at = ?"
        f" WHERE {location.batch} = ? AND {location.pruned} IS NULL",
        (now, row["batch"]),
    ).rowcount
    conn.execute(
        "UPDATE prune_timers SET state = ?, last_error = ?, updated_at = ? WHERE batch = ?",
        (state, note.format(released=released), now, row["batch"]),
    )
    return released
