"""The local ledger: one SQLite file (WAL) under `state_dir` that remembers every scan.

It is the queue too: a scan waiting for a retry is a row with `next_attempt_at`, never only
an object in memory, so a crash or restart loses nothing. Writers are the watcher, the
lifecycle loop and the CLI; WAL lets `dichroism status` read while the watcher writes.

Scan states (DESIGN "Lifecycle of one scan"):
  detected -> submitting -> submitted -> transferred -> archive_submitted -> archived -> pruned
  failed (with failed_step, last_error, attempts) from any step.
`submitting` marks the window between "about to call run_flow" and "run id recorded": a scan
found in it after a crash is looked up by label before it is ever submitted again.
Prune progress is kept per location (dtn_pruned_at / cfs_pruned_at); `pruned` means both.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Parameters per IN (...): well below SQLite's limit (999 before 3.32).
_IN_CHUNK = 500

SCAN_STATES = (
    "detected",
    "submitting",
    "submitted",
    "transferred",
    "archive_submitted",
    "archived",
    "pruned",
    "failed",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    id INTEGER PRIMARY KEY,
    beamline TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,          -- local path on the acquisition host
    rel TEXT NOT NULL,                  -- path relative to the watch root
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    state TEXT NOT NULL,
    run_id TEXT,                        -- the new_file run
    label TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    submit_started_at REAL,
    failed_step TEXT,
    last_error TEXT,
    archive_group_id INTEGER REFERENCES archive_groups(id),
    transferred_at REAL,
    archived_at REAL,
    dtn_prune_batch TEXT,
    cfs_prune_batch TEXT,
    dtn_pruned_at REAL,
    cfs_pruned_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scans_state ON scans(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS scans_run ON scans(run_id);
CREATE INDEX IF NOT EXISTS scans_beamline ON scans(beamline, state);

CREATE TABLE IF NOT EXISTS archive_groups (
    id INTEGER PRIMARY KEY,
    beamline TEXT NOT NULL,
    proposal TEXT NOT NULL,
    directory TEXT NOT NULL,            -- rel directory the group covers
    archive_name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,                -- open, submitting, submitted, succeeded, failed
    run_id TEXT,
    label TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_change_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_state ON archive_groups(state);

CREATE TABLE IF NOT EXISTS prune_timers (
    batch TEXT PRIMARY KEY,             -- beamline/location/day[/chunk]
    beamline TEXT NOT NULL,
    location TEXT NOT NULL,             -- compute_dtn or cfs
    day TEXT NOT NULL,
    timer_id TEXT,
    label TEXT NOT NULL,
    run_at REAL NOT NULL,
    files INTEGER NOT NULL,
    state TEXT NOT NULL,                -- scheduling, scheduled, succeeded, failed, cancelled
    run_id TEXT,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- One row per finished-but-unsuccessful run the lifecycle loop has handled. Keyed by run id
-- so handling the same failure twice (a crash mid-pass, two passes) never counts it twice;
-- the number of rows per subject is the number of failed attempts.
CREATE TABLE IF NOT EXISTS run_failures (
    run_id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,                 -- new_file, archive, prune
    subject TEXT NOT NULL,              -- scan:<id>, group:<id>, batch:<key>
    status TEXT NOT NULL,               -- FAILED or ENDED
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS run_failures_subject ON run_failures(subject);

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Scan:
    id: int
    beamline: str
    path: str
    rel: str
    size: int
    mtime: float
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


class Database:
    """A thread-safe handle on one SQLite file in WAL mode (one connection, one lock).

    WAL lets `dichroism status` read while the watcher writes, and lets the local backend's
    tables share the file with the ledger.
    """

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose
        # the last commits); FULL would add an fsync per scan for little gain here.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as conn:
            conn.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; commits on success, rolls back on any exception."""
        with self._lock:
            try:
                yield self._conn
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params))

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        """One statement in its own transaction; returns the rowcount (a claim's winner)."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount


class Ledger(Database):
    """The scans, archive groups and prune batches (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

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

    def known_paths(self, beamline: str) -> set[str]:
        return {
            row["path"]
            for row in self.query("SELECT path FROM scans WHERE beamline = ?", (beamline,))
        }

    def known_among(self, paths: Sequence[str]) -> set[str]:
        """Which of `paths` are recorded: one indexed IN (...) per chunk, so a caller never
        holds more than it asked about (the ledger may hold millions of paths)."""
        known: set[str] = set()
        for start in range(0, len(paths), _IN_CHUNK):
            chunk = tuple(paths[start : start + _IN_CHUNK])
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
        return self.query(
            "SELECT beamline, rel, failed_step, last_error, attempts, run_id, updated_at"
            " FROM scans WHERE state = 'failed' ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )

    def batch_failures(self, *, limit: int = 20) -> list[sqlite3.Row]:
        """Failed archive groups and prune batches, newest first.

        A failed prune leaves its scans in their state (nothing was deleted), so the failure
        is only visible here, not in `recent_failures`.
        """
        return self.query(
            "SELECT 'archive' AS step, beamline, archive_name AS subject, label, run_id,"
            " last_error, attempts, updated_at FROM archive_groups WHERE state = 'failed'"
            " UNION ALL SELECT 'prune ' || location, beamline, batch, label, run_id, last_error,"
            " files, updated_at FROM prune_timers WHERE state = 'failed'"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )


_SCAN_COLUMNS = {
    "state",
    "run_id",
    "label",
    "attempts",
    "next_attempt_at",
    "submit_started_at",
    "failed_step",
    "last_error",
    "archive_group_id",
    "transferred_at",
    "archived_at",
    "dtn_prune_batch",
    "cfs_prune_batch",
    "dtn_pruned_at",
    "cfs_pruned_at",
    "size",
    "mtime",
}
