"""Ledger additions for operations: the additive migration, meta values, refusals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dichroism_control.ledger import Ledger

OLD_RUN_FAILURES = """
CREATE TABLE run_failures (
    run_id TEXT PRIMARY KEY, flow TEXT NOT NULL, subject TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL, failed_at REAL NOT NULL
);
INSERT INTO run_failures VALUES ('r-old', 'new_file', 'scan:1', 'FAILED', 'old reason', 1.0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_database_from_before_opens_and_gains_the_new_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_RUN_FAILURES)
    ledger = Ledger(path)
    columns = {row["name"] for row in ledger.query("PRAGMA table_info(run_failures)")}
    assert "cause" in columns
    (row,) = ledger.query("SELECT * FROM run_failures")
    assert row["reason"] == "old reason" and row["cause"] is None
    ledger.close()
    Ledger(path).close()  # a second open finds the column there and changes nothing


def test_meta_values_and_refusals(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.get_meta("heartbeat") is None
    ledger.set_meta("heartbeat", {"at": 5.0, "pid": 7})
    ledger.set_meta("heartbeat", {"at": 6.0, "pid": 7})
    assert ledger.get_meta("heartbeat") == {"at": 6.0, "pid": 7}

    ledger.record_refusals([("bl402", "/data/bl402/x", "outside the watch root")], now=10.0)
    ledger.record_refusals([("bl402", "/data/bl402/x", "still outside")], now=20.0)
    (row,) = ledger.query("SELECT * FROM refusals")
    assert (row["count"], row["first_at"], row["last_at"]) == (2, 10.0, 20.0)
    assert row["reason"] == "still outside" and row["kind"] == "refused"
