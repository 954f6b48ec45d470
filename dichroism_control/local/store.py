"""The local backend's persistent state: flows, functions, runs, run logs and timers.

The tables live in the ledger's SQLite file (`config.ledger_path`), prefixed `local_`, so
one file holds everything a local deployment knows. Two processes use it at once (`watch`
and a CLI command): WAL lets readers proceed while one writer commits, and every state
change that must happen once (a timer firing, a run being declared interrupted) is an
`UPDATE ... WHERE <expected state>` whose rowcount says who won.

Each handle owns one connection guarded by a lock, like `Ledger`: sqlite3 connections must
not be used by two threads at a time, and the worker threads share this handle.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from dichroism_control.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS local_flows (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    definition TEXT NOT NULL,
    input_schema TEXT NOT NULL,
    spec TEXT NOT NULL,                 -- every FlowSpec field (the flow document)
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS local_functions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS local_runs (
    run_id TEXT PRIMARY KEY,
    flow_id TEXT NOT NULL,
    flow_title TEXT NOT NULL,
    status TEXT NOT NULL,               -- ACTIVE, SUCCEEDED, FAILED, ENDED
    label TEXT NOT NULL,
    tags TEXT NOT NULL,
    request TEXT NOT NULL,              -- run_managers, run_monitors, notification policy
    body TEXT NOT NULL,
    details TEXT NOT NULL,
    start_time TEXT NOT NULL,
    start_ts REAL NOT NULL,             -- for ordering: newest first
    completion_time TEXT,
    owner TEXT NOT NULL,                -- "<pid>:<process start>" of the executing process
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS local_runs_order ON local_runs(start_ts DESC);
CREATE INDEX IF NOT EXISTS local_runs_status ON local_runs(status);
CREATE TABLE IF NOT EXISTS local_run_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS local_run_logs_run ON local_run_logs(run_id, id);
CREATE TABLE IF NOT EXISTS local_timers (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    run_at REAL NOT NULL,               -- epoch seconds (UTC)
    body TEXT NOT NULL,                 -- the run request (RunRequest.timer_body())
    status TEXT NOT NULL,               -- loaded -> firing -> ended | error; deleted
    run_id TEXT,
    last_error TEXT,
    submitted_at REAL NOT NULL,
    last_ran_at REAL,
    interval_seconds REAL,              -- recurring timers: fires every this many seconds
    schedule_start REAL,                -- recurring timers: the schedule's first time
    n_runs INTEGER NOT NULL DEFAULT 0,
    n_errors INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS local_timers_due ON local_timers(status, run_at);
"""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # Field 22 (starttime) counts after the ")" that closes the command name.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{process_start(pid) or '?'}"


def owner_alive(token: str) -> bool:
    """Whether the process named by an owner token still runs (pid alive, same start)."""
    pid_text, _, start = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    current = process_start(pid)
    return start == "?" or current is None or current == start


# Columns added after the first local stores were written: (table, column, DDL).
MIGRATIONS = (
    (
        "local_timers",
        "interval_seconds",
        "ALTER TABLE local_timers ADD COLUMN interval_seconds REAL",
    ),
    (
        "local_timers",
        "schedule_start",
        "ALTER TABLE local_timers ADD COLUMN schedule_start REAL",
    ),
    (
        "local_timers",
        "n_runs",
        "ALTER TABLE local_timers ADD COLUMN n_runs INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "local_timers",
        "n_errors",
        "ALTER TABLE local_timers ADD COLUMN n_errors INTEGER NOT NULL DEFAULT 0",
    ),
)


class LocalStore(Database):
    """The `local_*` tables of the ledger file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, migrate=_migrate)


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a store from before them lacks (before SCHEMA's CREATE ... IF NOT
    EXISTS, which leaves an existing table as it is)."""
    for table, column, ddl in MIGRATIONS:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if columns and column not in columns:
            conn.execute(ddl)
