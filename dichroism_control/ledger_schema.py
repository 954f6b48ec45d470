"""The ledger's tables, and how an older ledger is brought to them.

Kept apart from `ledger.py` (the queries) so the two stay readable; `ledger.py` is the only
importer.
"""

from __future__ import annotations

import sqlite3

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
