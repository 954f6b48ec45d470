"""One SQLite file, safely: a thread-safe WAL handle, and refusing a file that is not what it
should be (missing where one existed, empty, not SQLite, damaged) with one line that says
what to do. The ledger and the local backend's store share it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dichroism_control.errors import DichroismError


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
