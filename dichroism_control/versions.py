"""When a finished file is a new version of its scan, and what happens to the old one.

A scan is (path, content). For every finished file the watcher (or `submit`) hands over its
`Identity` (checksum, size, mtime, inode, taken when it was read); against the path's latest
version in the ledger it is:

- **new**: the path was never seen -> version 1, `detected`;
- **unchanged**: same size, mtime and inode as recorded -> nothing to do;
- **touched**: other stat, same checksum, and the recorded copy still at the source -> the
  stat columns follow the file (a prune compares them with the file at delete time);
- **a new version** otherwise (other content, or the same content back after the source copy
  was pruned) -> version n+1, `detected`, and the old version is superseded: it leaves the
  pipeline where nothing of it is in flight (`superseded`), and where a run is in flight the
  lifecycle retires it when that run ends. What of it is on tape stays there (tape is
  history); its scheduled prunes keep any file that no longer is that version.

A legacy row (recorded before checksums, `checksum IS NULL`) with the same size and mtime is
adopted: its checksum is filled in. The ledger never holds two live versions of one path.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dichroism_control.identity import Identity

if TYPE_CHECKING:
    from dichroism_control.ledger import Ledger

_SQL_CHUNK = 500
# Nothing of the version is in flight in these states: it can be retired at once.
RETIRE_NOW = ("detected", "failed", "transferred", "archived")
# A run of the version is in flight: the lifecycle retires it when the run ends.
IN_FLIGHT = ("submitting", "submitted", "archive_submitted")


@dataclass(frozen=True)
class Seen:
    """A finished file as routed and identified."""

    beamline: str
    path: str
    rel: str
    identity: Identity


@dataclass
class Recorded:
    new_ids: list[int] = field(default_factory=list)  # rows inserted (version 1 or n+1)
    new_versions: int = 0  # of which a later version of a known path
    touched: int = 0
    adopted: int = 0
    unchanged: int = 0


def stale_paths(ledger: Ledger, stats: dict[str, tuple[int, int, int]]) -> set[str]:
    """Of `stats` ({path: (size, mtime_ns, inode)}), the paths whose latest version is not
    exactly that file (unknown, another stat, or no checksum yet): the ones worth hashing."""
    stale: set[str] = set()
    paths = list(stats)
    for start in range(0, len(paths), _SQL_CHUNK):
        chunk = paths[start : start + _SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        latest: dict[str, tuple[int, int | None, int | None, str | None]] = {}
        for row in ledger.query(
            f"SELECT path, version, size, mtime_ns, inode, checksum FROM scans"
            f" WHERE path IN ({marks}) ORDER BY path, version",
            tuple(chunk),
        ):
            latest[row["path"]] = (row["size"], row["mtime_ns"], row["inode"], row["checksum"])
        for path in chunk:
            known = latest.get(path)
            if known is None or known[3] is None or known[:3] != stats[path]:
                stale.add(path)
    return stale


def record(ledger: Ledger, seen: list[Seen], *, now: float | None = None) -> Recorded:
    """Record finished files in one transaction (see the module docstring)."""
    if not seen:
        return Recorded()
    with ledger.transaction() as conn:
        return record_in(conn, seen, now=time.time() if now is None else now)


def record_in(conn: sqlite3.Connection, seen: list[Seen], *, now: float) -> Recorded:
    """`record` inside a transaction the caller holds."""
    result = Recorded()
    for item in seen:
        _record_one(conn, item, now, result)
    return result


def _record_one(conn: sqlite3.Connection, item: Seen, now: float, result: Recorded) -> None:
    ident = item.identity
    latest = conn.execute(
        "SELECT * FROM scans WHERE path = ? ORDER BY version DESC LIMIT 1", (item.path,)
    ).fetchone()
    if latest is not None:
        same_stat = (latest["size"], latest["mtime_ns"], latest["inode"]) == (
            ident.size,
            ident.mtime_ns,
            ident.inode,
        )
        if latest["checksum"] is None:
            # Recorded before checksums: the same size and mtime is taken as the same file.
            if latest["size"] == ident.size and int(latest["mtime"]) == int(ident.mtime):
                _set_stat(conn, latest["id"], ident, now, checksum=ident.checksum)
                result.adopted += 1
                return
        elif same_stat and latest["checksum"] == ident.checksum:
            result.unchanged += 1
            return
        elif (
            latest["checksum"] == ident.checksum
            and latest["dtn_pruned_at"] is None
            and latest["state"] != "superseded"
        ):
            _set_stat(conn, latest["id"], ident, now)
            result.touched += 1
            return
        _supersede(conn, latest, now)
    version = 1 if latest is None else int(latest["version"]) + 1
    cursor = conn.execute(
        "INSERT INTO scans (beamline, path, rel, version, size, mtime, mtime_ns, inode,"
        " checksum, state, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'detected', ?, ?)",
        (
            item.beamline,
            item.path,
            item.rel,
            version,
            ident.size,
            ident.mtime,
            ident.mtime_ns,
            ident.inode,
            ident.checksum,
            now,
            now,
        ),
    )
    assert cursor.lastrowid is not None
    result.new_ids.append(cursor.lastrowid)
    if latest is not None:
        result.new_versions += 1


def _set_stat(
    conn: sqlite3.Connection,
    scan_id: int,
    ident: Identity,
    now: float,
    *,
    checksum: str | None = None,
) -> None:
    conn.execute(
        "UPDATE scans SET size = ?, mtime = ?, mtime_ns = ?, inode = ?,"
        " checksum = COALESCE(?, checksum), updated_at = ? WHERE id = ?",
        (ident.size, ident.mtime, ident.mtime_ns, ident.inode, checksum, now, scan_id),
    )


def _supersede(conn: sqlite3.Connection, old: sqlite3.Row, now: float) -> None:
    placeholders = ", ".join("?" for _ in RETIRE_NOW)
    conn.execute(
        "UPDATE scans SET superseded_at = COALESCE(superseded_at, ?),"
        f" state = CASE WHEN state IN ({placeholders}) THEN 'superseded' ELSE state END,"
        " updated_at = ? WHERE id = ?",
        (now, *RETIRE_NOW, now, old["id"]),
    )
