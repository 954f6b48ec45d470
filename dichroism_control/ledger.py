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
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dichroism_control.errors import DichroismError

_SQL_CHUNK = 500  # paths per `IN (...)` query (SQLite's variable limit is far above)

SCAN_STATES = (
    "detected",
    "submitting",
    "submitted",
    "transferred",
    "archive_submitted",
    "archived",
    "pruned",
    "failed",
    "superseded",
)
# The schema this code writes (PRAGMA user_version). 0: a ledger from before versions
# existed (one row per path, no checksum); `_migrate` rebuilds its scans table.
SCHEMA_VERSION = 2

SCANS_TABLE = """
CREATE TABLE IF NOT EXISTS scans (
    id INTEGER PRIMARY KEY,
    beamline TEXT NOT NULL,
    path TEXT NOT NULL,                 -- local path on the acquisition host
    rel TEXT NOT NULL,                  -- path relative to the watch root
    version INTEGER NOT NULL DEFAULT 1, -- the n-th distinct content seen at this path
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    mtime_ns INTEGER,
    inode INTEGER,
    checksum TEXT,                      -- MD5 (hex) at detection; NULL: recorded before v2
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
    superseded_at REAL,                 -- when a newer version of the path was recorded
    tape_path TEXT,                     -- the archive (or single file) holding this version
    tape_member TEXT,                   -- its member name in that archive; NULL: a single
    kept INTEGER NOT NULL DEFAULT 0,    -- times a prune left this version in place
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (path, version)
);
"""

SCHEMA = (
    SCANS_TABLE
    + """
CREATE INDEX IF NOT EXISTS scans_state ON scans(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS scans_run ON scans(run_id);
CREATE INDEX IF NOT EXISTS scans_beamline ON scans(beamline, state);
-- Health and metrics read these without scanning the whole history: throughput over the
-- last day, and copies past their retention that are still not pruned (partial indexes).
CREATE INDEX IF NOT EXISTS scans_transferred_at ON scans(transferred_at);
CREATE INDEX IF NOT EXISTS scans_archived_at ON scans(archived_at);
CREATE INDEX IF NOT EXISTS scans_dtn_unpruned ON scans(transferred_at)
    WHERE dtn_pruned_at IS NULL AND transferred_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS scans_cfs_unpruned ON scans(archived_at)
    WHERE cfs_pruned_at IS NULL AND archived_at IS NOT NULL;

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
    kept INTEGER,                       -- files the prune run left in place (with reasons)
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

-- Runs that need a person: the lifecycle saw them INACTIVE (a missing consent,
-- ConsentRequired; a collection that wants a new login, ...). An INACTIVE run is never
-- progress: it waits until someone acts (`dichroism login`, then resume it in the web app).
-- The row goes once the run is seen in any other status. See `Ledger.waiting_runs`.
CREATE TABLE IF NOT EXISTS runs_waiting (
    run_id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,                 -- new_file, archive, prune
    subject TEXT NOT NULL,              -- scan:<id>, group:<id>, batch:<key>
    since REAL NOT NULL,                -- first seen INACTIVE
    seen_at REAL NOT NULL,              -- last seen INACTIVE
    code TEXT,                          -- the run document's details.code
    reason TEXT NOT NULL                -- details.code: details.description
);

-- Files the watcher found but will not ship (outside the root, unsafe names, ...): one row
-- per path, so `status` and alerts show them instead of a log line nobody reads.
CREATE TABLE IF NOT EXISTS refusals (
    path TEXT PRIMARY KEY,
    beamline TEXT NOT NULL,
    reason TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'refused',   -- refused | quarantined
    count INTEGER NOT NULL DEFAULT 1,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL
);

-- What the alert digests already told a person (keys of failures, conditions, events), so a
-- restart never sends the same digest again.
CREATE TABLE IF NOT EXISTS notified (key TEXT PRIMARY KEY, sent_at REAL NOT NULL);

-- Failures a person has dealt with (`dichroism ack`): the subject stays failed, but leaves
-- `status`'s failure list, the health problems and the alert digest. A retry of the subject
-- removes its row, so a later failure is shown again.
CREATE TABLE IF NOT EXISTS acknowledged (
    subject TEXT PRIMARY KEY,           -- scan:<id>, group:<id>, batch:<key>
    by TEXT NOT NULL,                   -- who (the operator's name as given, or user@host)
    at REAL NOT NULL,
    note TEXT
);

-- What people did to the pipeline (retry, ack, cancel), for `scan show` and the record.
CREATE TABLE IF NOT EXISTS interventions (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    by TEXT NOT NULL,
    action TEXT NOT NULL,               -- retry | ack | cancel
    subject TEXT NOT NULL,              -- scan:<id>, group:<id>, batch:<key>
    note TEXT
);
CREATE INDEX IF NOT EXISTS interventions_subject ON interventions(subject, at);
"""
)

# A subject's failure that no person has acknowledged (SQL, `{subject}` an expression).
UNACKNOWLEDGED = "NOT EXISTS (SELECT 1 FROM acknowledged WHERE acknowledged.subject = {subject})"

# Additive migrations for databases created before a column existed: (table, column, DDL).
MIGRATIONS = (
    # The failure's full structure (JSON) beside its one-line reason: `--format json`.
    ("run_failures", "cause", "ALTER TABLE run_failures ADD COLUMN cause TEXT"),
    # Set when a person retried the subject: its failed runs stop counting as attempts
    # (the record stays, for `scan show`).
    ("run_failures", "cleared_at", "ALTER TABLE run_failures ADD COLUMN cleared_at REAL"),
)


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


class StateError(DichroismError):
    """The state directory cannot be used as it is; a person must act. Exit 2, so that
    systemd (RestartPreventExitStatus=2) does not restart into the same wall."""

    exit_code = 2


_SQLITE_HEADER = b"SQLite format 3\x00"


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".created")


def _guard(path: Path) -> bool:
    """Refuse a ledger that is missing, empty or not SQLite where one existed before;
    True when a new one is about to be created. Recreating a lost ledger silently would
    resubmit every file on disk and forget every pending prune."""
    marker, wal = _marker(path), path.with_name(path.name + "-wal")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            if marker.exists() or wal.exists():
                raise StateError(
                    f"{path}: the ledger is missing but this state directory had one"
                    f" ({marker.name if marker.exists() else wal.name} is there): restore it"
                    f" from a backup, or move {marker.name} aside to start afresh (every scan"
                    " on disk will then be sent again)"
                )
            if not os.access(path.parent, os.W_OK):
                raise StateError(f"{path.parent}: not writable: the ledger cannot be created")
            return True
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StateError(f"{path}: cannot use the state directory ({exc.strerror})") from None
    if header != _SQLITE_HEADER:
        what = "empty (truncated)" if not header else "not a SQLite database"
        raise StateError(
            f"{path}: {what}: restore the ledger from a backup, or move it (and its"
            f" {marker.name}) aside to start afresh (every scan on disk will then be sent again)"
        )
    return False


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)")]
    if rows != ["ok"]:
        raise StateError(
            f"{path}: the ledger is damaged ({rows[0]}): restore it from a backup (sqlite3"
            " .recover can salvage rows), or move it aside to start afresh"
        )


def _database_error(path: Path, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "readonly" in text or "unable to open" in text:
        return f"{path}: cannot write the ledger ({text}): is {path.parent} read-only?"
    return f"{path}: the ledger cannot be used ({text}): restore it from a backup"


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


class Database:
    """A thread-safe handle on one SQLite file in WAL mode (one connection, one lock).

    WAL lets `dichroism status` read while the watcher writes, and lets the local backend's
    tables share the file with the ledger.
    """

    def __init__(
        self,
        path: Path,
        schema: str,
        *,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
        check: bool = False,
    ) -> None:
        self.path = path
        created = _guard(path)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            if check:
                _quick_check(self._conn, path)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode (only an OS crash can
            # lose the last commits); FULL would add an fsync per scan for little gain here.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self.transaction() as conn:
                if migrate is not None:
                    migrate(conn)
                conn.executescript(schema)
        except sqlite3.DatabaseError as exc:
            raise StateError(_database_error(path, exc)) from None
        if created:
            # From now on a missing ledger here is a loss, not a first start (see _guard).
            _marker(path).write_text(f"created {time.time():.0f}\n")

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

    def record_detected(
        self, rows: list[tuple[str, str, str, int, float]], *, now: float | None = None
    ) -> int:
        """Record finished scans (beamline, path, rel, size, mtime) in one transaction;
        returns how many were new (a known path is never recorded twice)."""
        if not rows:
            return 0
        now = time.time() if now is None else now
        with self.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO scans (beamline, path, rel, size, mtime, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'detected', ?, ?)",
                [(*row, now, now) for row in rows],
            )
            return conn.total_changes - before

    def unknown_paths(self, paths: list[str]) -> list[str]:
        """The paths the ledger has never recorded (chunked: the ledger may hold millions)."""
        unknown: list[str] = []
        for start in range(0, len(paths), _SQL_CHUNK):
            chunk = paths[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            known = {
                row["path"]
                for row in self.query(
                    f"SELECT path FROM scans WHERE path IN ({marks})", tuple(chunk)
                )
            }
            unknown.extend(p for p in chunk if p not in known)
        return unknown

    def get_scan(self, path: str) -> Scan | None:
        rows = self.query("SELECT * FROM scans WHERE path = ?", (path,))
        return Scan.from_row(rows[0]) if rows else None

    def known_paths(self, beamline: str) -> set[str]:
        return {
            row["path"]
            for row in self.query("SELECT path FROM scans WHERE beamline = ?", (beamline,))
        }

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
        """Failed archive groups and prune batches, newest first.

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


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an existing ledger to SCHEMA_VERSION (before SCHEMA's CREATE ... IF NOT EXISTS).

    Version 0 -> 2: the scans table had one row per path (`path UNIQUE`) and no checksum.
    SQLite cannot drop a UNIQUE constraint, so the table is rebuilt; every old row becomes
    version 1 with no checksum. Such a scan is never pruned on a content check it never had:
    the watcher's next rescan hashes it (if its size and mtime are unchanged the checksum is
    filled in; otherwise it is a new version)."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current >= SCHEMA_VERSION:
        return
    columns = {row[1] for row in conn.execute("PRAGMA table_info(scans)")}
    if columns and "version" not in columns:
        # One transaction: a crash mid-way leaves the old table as it was.
        conn.execute("BEGIN IMMEDIATE")
        old = sorted(columns)
        conn.execute("ALTER TABLE scans RENAME TO scans_v0")
        conn.execute(SCANS_TABLE)
        names = ", ".join(old)
        conn.execute(
            f"INSERT INTO scans ({names}, version, mtime_ns) SELECT {names}, 1,"
            " CAST(mtime * 1000000000 AS INTEGER) FROM scans_v0"
        )
        conn.execute("DROP TABLE scans_v0")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.commit()
        return
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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
    "mtime_ns",
    "inode",
    "checksum",
    "superseded_at",
    "tape_path",
    "tape_member",
    "kept",
}
