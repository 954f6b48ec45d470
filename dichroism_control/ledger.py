"""The local ledger: one SQLite file (WAL) under `state_dir` that remembers every scan.

It is the queue too: a scan waiting for a retry is a row with `next_attempt_at`, never only
an object in memory, so a crash or restart loses nothing. Writers are the watcher, the
lifecycle loop and the CLI; WAL lets `dichroism status` read while the watcher writes.

A row is a scan VERSION: (path, content). The n-th distinct content seen at a path is
version n, with the MD5 checksum, size, mtime and inode taken when it was detected
(`identity.py`); `versions.py` decides when a finished file is a new version.

Scan states (DESIGN "Lifecycle of one scan"):
  detected -> submitting -> submitted -> transferred -> archive_submitted -> archived -> pruned
  failed (with failed_step, last_error, attempts) from any step;
  superseded: a newer version of the path exists, so this one leaves the pipeline (what of it
  is already on tape stays there: tape is history).
`submitting` marks the window between "about to call run_flow" and "run id recorded": a scan
found in it after a crash is looked up by label before it is ever submitted again.
Prune progress is kept per location (dtn_pruned_at / cfs_pruned_at); `pruned` means both.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dichroism_control.database import Database
from dichroism_control.ledger_schema import (
    _SCAN_COLUMNS,
    MIGRATIONS,
    SCHEMA,
    UNACKNOWLEDGED,
    _migrate,
)

_SQL_CHUNK = 500  # paths per `IN (...)` query (SQLite's variable limit is far above)


@dataclass(frozen=True)
class Scan:
    id: int
    beamline: str
    path: str
    rel: str
    version: int
    size: int
    mtime: float
    mtime_ns: int | None
    checksum: str | None
    state: str
    run_id: str | None
    label: str | None
    attempts: int
    next_attempt_at: float
    submit_started_at: float | None
    failed_step: str | None
    last_error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Scan:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Identity:
    """A Globus identity: a person's (`user`) or a service client's (`client`)."""

    id: str
    kind: str  # user | client

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


OWNER_KEY = "owner_identity"


@dataclass(frozen=True)
class Backlog:
    """Scans waiting to be sent, and how long they should take to drain."""

    count: int  # scans `detected` (new, or waiting for a retry or a free slot)
    oldest_age_seconds: float | None  # since the oldest of them was detected
    in_flight: int  # new_file runs started and not yet seen finished
    completed_in_window: int  # scans whose new_file run succeeded within the window
    window_seconds: float
    drain_seconds: float | None  # (count + in_flight) at the window's rate; None: no rate


@dataclass(frozen=True)
class WaitingRun:
    """A run the lifecycle saw INACTIVE: it needs a person, not time."""

    run_id: str
    kind: str  # the flow: new_file, archive, prune
    subject: str  # scan:<id>, group:<id>, batch:<key>
    since: float  # when the lifecycle first saw it INACTIVE (POSIX time)
    code: str | None  # details.code of the run document, e.g. ConsentRequired
    reason: str  # "code: description", one line


class Ledger(Database):
    """The scans, archive groups and prune batches (see the module docstring)."""

    def __init__(self, path: Path, *, check: bool = False) -> None:
        super().__init__(path, SCHEMA, migrate=_migrate, check=check)
        with self.transaction() as conn:
            for table, column, ddl in MIGRATIONS:
                columns = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    conn.execute(ddl)

    # -- scans ---------------------------------------------------------------------------
    def add_scan(
        self, *, beamline: str, path: str, rel: str, size: int, mtime: float
    ) -> Scan | None:
        """Record a newly detected scan; None when the path is already known (never twice)."""
        now = time.time()
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO scans (beamline, path, rel, size, mtime, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'detected', ?, ?)",
                (beamline, path, rel, size, mtime, now, now),
            )
            if cursor.rowcount == 0:
                return None
            row = conn.execute("SELECT * FROM scans WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return Scan.from_row(row)

    def get_scan(self, path: str) -> Scan | None:
        rows = self.query("SELECT * FROM scans WHERE path = ?", (path,))
        return Scan.from_row(rows[0]) if rows else None

    def known_among(self, paths: Sequence[str]) -> set[str]:
        """Which of `paths` are recorded: one indexed IN (...) per chunk, so a caller never
        holds more than it asked about (the ledger may hold millions of paths)."""
        known: set[str] = set()
        for start in range(0, len(paths), _SQL_CHUNK):
            chunk = tuple(paths[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self.query(f"SELECT path FROM scans WHERE path IN ({marks})", chunk)
            known.update(row[0] for row in rows)
        return known

    def update_scan(self, scan_id: int, **fields: Any) -> None:
        if not fields:
            return
        unknown = set(fields) - _SCAN_COLUMNS
        if unknown:
            raise ValueError(f"unknown scan column(s): {', '.join(sorted(unknown))}")
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE scans SET {assignments} WHERE id = :_id", {**fields, "_id": scan_id}
            )

    def state_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in self.query(
            "SELECT beamline, state, COUNT(*) AS n FROM scans GROUP BY beamline, state"
        ):
            counts.setdefault(row["beamline"], {})[row["state"]] = row["n"]
        return counts

    def recent_failures(self, *, limit: int = 20) -> list[sqlite3.Row]:
        """Failed scans no person has acknowledged, newest first."""
        unacked = UNACKNOWLEDGED.format(subject="'scan:' || scans.id")
        return self.query(
            "SELECT beamline, rel, failed_step, last_error, attempts, run_id, updated_at"
            f" FROM scans WHERE state = 'failed' AND {unacked} ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )

    def batch_failures(self, *, limit: int = 20) -> list[sqlite3.Row]:
        """Failed archive groups and prune batches no person has acknowledged, newest first.

        A failed prune leaves its scans in their state (nothing was deleted), so the failure
        is only visible here, not in `recent_failures`.
        """
        groups = UNACKNOWLEDGED.format(subject="'group:' || archive_groups.id")
        batches = UNACKNOWLEDGED.format(subject="'batch:' || prune_timers.batch")
        return self.query(
            "SELECT 'archive' AS step, beamline, archive_name AS subject, label, run_id,"
            " last_error, attempts, NULL AS files, updated_at FROM archive_groups"
            f" WHERE state = 'failed' AND {groups}"
            " UNION ALL SELECT 'prune ' || location, beamline, batch, label, run_id, last_error,"
            " (SELECT COUNT(*) FROM run_failures WHERE subject = 'batch:' || batch"
            " AND cleared_at IS NULL), files,"
            f" updated_at FROM prune_timers WHERE state = 'failed' AND {batches}"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )

    # -- what people did ------------------------------------------------------------------
    @staticmethod
    def record_intervention(
        conn: sqlite3.Connection,
        *,
        action: str,
        subject: str,
        by: str,
        note: str | None,
        now: float,
    ) -> None:
        """Note what a person did (inside the caller's transaction)."""
        conn.execute(
            "INSERT INTO interventions (at, by, action, subject, note) VALUES (?, ?, ?, ?, ?)",
            (now, by, action, subject, note),
        )

    def acknowledgement(self, subject: str) -> sqlite3.Row | None:
        """Who acknowledged `subject`'s failure and when (None: nobody)."""
        rows = self.query("SELECT * FROM acknowledged WHERE subject = ?", (subject,))
        return rows[0] if rows else None

    # -- meta, refusals ------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        """A JSON value kept in the meta table (None when absent or not JSON)."""
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        try:
            return json.loads(rows[0]["value"])
        except ValueError:
            return None

    def set_meta(self, key: str, value: Any) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, sort_keys=True, default=str)),
        )

    def record_refusals(
        self, rows: list[tuple[str, str, str]], *, kind: str = "refused", now: float | None = None
    ) -> None:
        """Remember files the watcher will not ship: (beamline, path, reason) each."""
        if not rows:
            return
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO refusals (path, beamline, reason, kind, first_at, last_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET"
                " reason = excluded.reason, kind = excluded.kind, count = count + 1,"
                " last_at = excluded.last_at",
                [(path, beamline, reason, kind, now, now) for beamline, path, reason in rows],
            )

    # -- the submission backlog -----------------------------------------------------------
    def submission_backlog(
        self,
        *,
        beamline: str | None = None,
        now: float | None = None,
        window_seconds: float = 3600.0,
    ) -> Backlog:
        """The scans not yet sent (all beamlines, or one) and an estimated drain time.

        `count`/`oldest_age_seconds`: scans in `detected` (the launcher's queue: new ones,
        ones waiting for a retry, ones waiting for a free `submit.max_runs_in_flight` slot).
        `drain_seconds`: the queue plus the runs in flight, at the rate new_file runs
        succeeded over the last `window_seconds` (`transferred_at`); None when none did, as
        no rate is known then. A backlog that waits on INACTIVE runs (`waiting_runs`) will
        not drain at any rate until a person acts.
        """
        now = time.time() if now is None else now
        where, params = ("", ()) if beamline is None else (" AND beamline = ?", (beamline,))
        queued = self.query(
            f"SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM scans"
            f" WHERE state = 'detected'{where}",
            params,
        )[0]
        in_flight = int(
            self.query(
                f"SELECT COUNT(*) AS n FROM scans WHERE state IN ('submitting', 'submitted')"
                f"{where}",
                params,
            )[0]["n"]
        )
        completed = int(
            self.query(
                f"SELECT COUNT(*) AS n FROM scans WHERE transferred_at > ?{where}",
                (now - window_seconds, *params),
            )[0]["n"]
        )
        count = int(queued["n"])
        rate = completed / window_seconds
        return Backlog(
            count=count,
            oldest_age_seconds=None if queued["oldest"] is None else now - queued["oldest"],
            in_flight=in_flight,
            completed_in_window=completed,
            window_seconds=window_seconds,
            drain_seconds=(count + in_flight) / rate if rate > 0 else None,
        )

    # -- whose runs these are ---------------------------------------------------------------
    def owner(self) -> Identity | None:
        """The identity that started this ledger's first run (None: no run yet).

        Flows lists only the caller's own runs unless asked for other roles, and Timers only
        the caller's timers: another identity acting on this ledger would not see its runs
        and timers and would start them again (see `dichroism_control.ownership`).
        """
        import json

        rows = self.query("SELECT value FROM meta WHERE key = ?", (OWNER_KEY,))
        if not rows:
            return None
        data = json.loads(rows[0]["value"])
        return Identity(id=str(data["id"]), kind=str(data["kind"]))

    def record_owner(self, identity: Identity) -> Identity:
        """Record the owner unless one is recorded already; returns the recorded one."""
        import json

        value = json.dumps({"id": identity.id, "kind": identity.kind}, sort_keys=True)
        self.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (OWNER_KEY, value))
        owner = self.owner()
        assert owner is not None
        return owner

    # -- runs that need a person -----------------------------------------------------------
    @staticmethod
    def record_waiting(
        conn: sqlite3.Connection,
        *,
        run_id: str,
        flow: str,
        subject: str,
        code: str | None,
        reason: str,
        now: float,
    ) -> None:
        """Note a run seen INACTIVE (inside the caller's transaction); keeps its `since`."""
        conn.execute(
            "INSERT INTO runs_waiting (run_id, flow, subject, since, seen_at, code, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET"
            " seen_at = excluded.seen_at, code = excluded.code, reason = excluded.reason",
            (run_id, flow, subject, now, now, code, reason),
        )

    @staticmethod
    def clear_waiting(conn: sqlite3.Connection, run_ids: list[str]) -> int:
        """Forget runs seen in another status than INACTIVE; returns how many were waiting."""
        cleared = 0
        for start in range(0, len(run_ids), _SQL_CHUNK):
            chunk = run_ids[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            cleared += conn.execute(
                f"DELETE FROM runs_waiting WHERE run_id IN ({marks})", tuple(chunk)
            ).rowcount
        return cleared

    def waiting_runs(self) -> list[WaitingRun]:
        """Runs waiting for a person, oldest first: what `status` shows as needing action.

        Each is a run the lifecycle loop last saw INACTIVE (id, the flow it belongs to, the
        scan, archive group or prune batch it serves, since when, and why: the run
        document's `details.code` and `description`, e.g. `ConsentRequired: ...`). The list
        is as fresh as the last lifecycle pass; a run leaves it when a pass sees it in any
        other status.
        """
        return [
            WaitingRun(
                run_id=row["run_id"],
                kind=row["flow"],
                subject=row["subject"],
                since=float(row["since"]),
                code=row["code"],
                reason=row["reason"],
            )
            for row in self.query("SELECT * FROM runs_waiting ORDER BY since, run_id")
        ]
