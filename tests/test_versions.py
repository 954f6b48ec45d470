"""When a finished file is a new version, and what superseding does to the old one.

Issue 13 (mutation testing of the deletion path): a prune keeps any file that no longer is
the version it recorded, so every branch that decides "same version" vs "new version" is
checked here against the ledger row by row, with the exact columns it must leave.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dichroism_control.identity import Identity
from dichroism_control.ledger import Ledger
from dichroism_control.versions import IN_FLIGHT, RETIRE_NOW, Seen, record, stale_paths

MD5_A = "a" * 32
MD5_B = "b" * 32
PATH = "/data/bl402/P1/a.h5"
NOW = 1_772_280_000.0


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite")


def seen(size: int = 10, mtime_ns: int = 5_000_000_000, inode: int = 7, md5: str = MD5_A) -> Seen:
    return Seen("bl402", PATH, "P1/a.h5", Identity(size, mtime_ns, inode, md5))


def rows(ledger: Ledger) -> list[dict[str, Any]]:
    return [dict(r) for r in ledger.query("SELECT * FROM scans ORDER BY version")]


def set_row(ledger: Ledger, version: int, **fields: Any) -> None:
    assignments = ", ".join(f"{k} = ?" for k in fields)
    ledger.execute(
        f"UPDATE scans SET {assignments} WHERE path = ? AND version = ?",
        (*fields.values(), PATH, version),
    )


def test_a_new_path_is_version_1_detected(ledger: Ledger) -> None:
    result = record(ledger, [seen()], now=NOW)
    assert (result.new_versions, result.touched, result.adopted, result.unchanged) == (0, 0, 0, 0)
    [row] = rows(ledger)
    assert result.new_ids == [row["id"]]
    assert {k: row[k] for k in ("beamline", "path", "rel", "version", "state")} == {
        "beamline": "bl402",
        "path": PATH,
        "rel": "P1/a.h5",
        "version": 1,
        "state": "detected",
    }
    assert (row["size"], row["mtime"], row["mtime_ns"], row["inode"], row["checksum"]) == (
        10,
        5.0,
        5_000_000_000,
        7,
        MD5_A,
    )
    assert (row["created_at"], row["updated_at"], row["superseded_at"]) == (NOW, NOW, None)


def test_nothing_seen_records_nothing(ledger: Ledger) -> None:
    result = record(ledger, [], now=NOW)
    assert result.new_ids == [] and rows(ledger) == []


def test_the_same_file_again_is_unchanged(ledger: Ledger) -> None:
    record(ledger, [seen()], now=NOW)
    result = record(ledger, [seen()], now=NOW + 5)
    assert result.unchanged == 1 and result.new_ids == [] and result.touched == 0
    [row] = rows(ledger)
    assert row["updated_at"] == NOW  # not even touched


@pytest.mark.parametrize(
    "moved", [{"size": 11}, {"mtime_ns": 6_000_000_000}, {"inode": 8}], ids=str
)
def test_other_stat_same_content_is_touched(ledger: Ledger, moved: dict[str, int]) -> None:
    """The stat columns follow the file (a prune compares them at delete time); no version."""
    record(ledger, [seen()], now=NOW)
    result = record(ledger, [seen(**moved)], now=NOW + 5)
    assert (result.touched, result.unchanged, result.new_ids) == (1, 0, [])
    [row] = rows(ledger)
    expected = {"size": 10, "mtime_ns": 5_000_000_000, "inode": 7, **moved}
    assert {k: row[k] for k in expected} == expected
    assert row["mtime"] == expected["mtime_ns"] / 1e9
    assert (row["checksum"], row["updated_at"], row["version"]) == (MD5_A, NOW + 5, 1)


def test_same_stat_other_content_is_a_new_version(ledger: Ledger) -> None:
    """Size, mtime and inode identical, bytes not: the checksum decides."""
    record(ledger, [seen()], now=NOW)
    result = record(ledger, [seen(md5=MD5_B)], now=NOW + 5)
    assert result.new_versions == 1 and len(result.new_ids) == 1 and result.unchanged == 0
    old, new = rows(ledger)
    assert (old["version"], old["state"], old["superseded_at"]) == (1, "superseded", NOW + 5)
    assert (new["version"], new["state"], new["checksum"], new["id"]) == (
        2,
        "detected",
        MD5_B,
        result.new_ids[0],
    )


def test_same_content_back_after_the_source_copy_was_pruned_is_a_new_version(
    ledger: Ledger,
) -> None:
    """The pruned version's copy is gone from the source: the file there now is another
    arrival of those bytes and must travel again."""
    record(ledger, [seen()], now=NOW)
    set_row(ledger, 1, state="archived", dtn_pruned_at=NOW + 1)
    result = record(ledger, [seen(inode=9)], now=NOW + 5)
    assert result.new_versions == 1 and result.touched == 0
    assert [r["version"] for r in rows(ledger)] == [1, 2]


def test_same_content_after_a_superseded_version_is_a_new_version(ledger: Ledger) -> None:
    record(ledger, [seen()], now=NOW)
    set_row(ledger, 1, state="superseded")
    result = record(ledger, [seen(inode=9)], now=NOW + 5)
    assert result.new_versions == 1 and result.touched == 0


@pytest.mark.parametrize("state", RETIRE_NOW)
def test_superseding_retires_a_version_with_nothing_in_flight(ledger: Ledger, state: str) -> None:
    record(ledger, [seen()], now=NOW)
    set_row(ledger, 1, state=state)
    record(ledger, [seen(md5=MD5_B)], now=NOW + 5)
    old = rows(ledger)[0]
    assert (old["state"], old["superseded_at"], old["updated_at"]) == (
        "superseded",
        NOW + 5,
        NOW + 5,
    )


@pytest.mark.parametrize("state", [*IN_FLIGHT, "pruned"])
def test_superseding_leaves_a_version_in_flight_to_the_lifecycle(
    ledger: Ledger, state: str
) -> None:
    record(ledger, [seen()], now=NOW)
    set_row(ledger, 1, state=state)
    record(ledger, [seen(md5=MD5_B)], now=NOW + 5)
    old = rows(ledger)[0]
    assert (old["state"], old["superseded_at"]) == (state, NOW + 5)


def test_superseded_at_keeps_the_first_supersession(ledger: Ledger) -> None:
    record(ledger, [seen()], now=NOW)
    set_row(ledger, 1, state="submitted", superseded_at=NOW + 1)
    record(ledger, [seen(md5=MD5_B)], now=NOW + 5)
    assert rows(ledger)[0]["superseded_at"] == NOW + 1


def test_third_version_supersedes_only_the_latest(ledger: Ledger) -> None:
    record(ledger, [seen()], now=NOW)
    record(ledger, [seen(md5=MD5_B)], now=NOW + 5)
    record(ledger, [seen(md5="c" * 32)], now=NOW + 9)
    v1, v2, v3 = rows(ledger)
    assert (v1["version"], v2["version"], v3["version"]) == (1, 2, 3)
    assert v1["superseded_at"] == NOW + 5 and v2["superseded_at"] == NOW + 9
    assert v3["superseded_at"] is None and v3["state"] == "detected"


def test_a_legacy_row_with_the_same_size_and_mtime_is_adopted(ledger: Ledger) -> None:
    """Recorded before checksums: same size and whole-second mtime -> its checksum filled
    in, the stat follows; no new version."""
    record(ledger, [seen()], now=NOW)
    set_row(ledger, 1, checksum=None)
    result = record(ledger, [seen(mtime_ns=5_400_000_000, inode=9)], now=NOW + 5)
    assert (result.adopted, result.new_ids, result.touched) == (1, [], 0)
    [row] = rows(ledger)
    assert (row["checksum"], row["inode"], row["mtime_ns"], row["updated_at"]) == (
        MD5_A,
        9,
        5_400_000_000,
        NOW + 5,
    )


@pytest.mark.parametrize("moved", [{"size": 11}, {"mtime_ns": 6_000_000_000}], ids=str)
def test_a_legacy_row_of_another_size_or_mtime_is_a_new_version(
    ledger: Ledger, moved: dict[str, int]
) -> None:
    record(ledger, [seen()], now=NOW)
    set_row(ledger, 1, checksum=None)
    result = record(ledger, [seen(**moved)], now=NOW + 5)
    assert result.adopted == 0 and result.new_versions == 1
    assert rows(ledger)[0]["checksum"] is None


def test_record_defaults_to_the_current_time(ledger: Ledger) -> None:
    import time

    before = time.time()
    record(ledger, [seen()])
    assert before <= rows(ledger)[0]["created_at"] <= time.time()


def test_stale_paths_are_the_ones_worth_hashing(ledger: Ledger) -> None:
    record(ledger, [seen()], now=NOW)
    other = "/data/bl402/P1/b.h5"
    record(
        ledger,
        [Seen("bl402", other, "P1/b.h5", Identity(3, 4, 5, MD5_B))],
        now=NOW,
    )
    ledger.execute("UPDATE scans SET checksum = NULL WHERE path = ?", (other,))
    stats = {
        PATH: (10, 5_000_000_000, 7),  # exactly the latest version: not stale
        other: (3, 4, 5),  # same stat, no checksum yet: stale
        "/data/bl402/P1/new.h5": (1, 1, 1),  # never seen: stale
    }
    assert stale_paths(ledger, stats) == {other, "/data/bl402/P1/new.h5"}
    for moved in ((11, 5_000_000_000, 7), (10, 6, 7), (10, 5_000_000_000, 8)):
        assert stale_paths(ledger, {PATH: moved}) == {PATH}


def test_stale_paths_compares_with_the_latest_version(ledger: Ledger) -> None:
    record(ledger, [seen()], now=NOW)
    record(ledger, [seen(size=20, md5=MD5_B)], now=NOW + 5)
    assert stale_paths(ledger, {PATH: (20, 5_000_000_000, 7)}) == set()
    assert stale_paths(ledger, {PATH: (10, 5_000_000_000, 7)}) == {PATH}


def test_stale_paths_in_chunks_beyond_the_sql_limit(ledger: Ledger) -> None:
    """More paths than one IN (...) takes: every chunk is looked up."""
    items = [
        Seen("bl402", f"/data/bl402/f{i:04d}", f"f{i:04d}", Identity(i, i, i, MD5_A))
        for i in range(1203)
    ]
    record(ledger, items, now=NOW)
    stats = {s.path: (s.identity.size, s.identity.mtime_ns, s.identity.inode) for s in items}
    assert stale_paths(ledger, stats) == set()
    stats["/data/bl402/f1202"] = (0, 0, 0)
    stats["/data/bl402/f0500"] = (0, 0, 0)
    assert stale_paths(ledger, stats) == {"/data/bl402/f1202", "/data/bl402/f0500"}


def test_counts_add_up_over_several_files(ledger: Ledger) -> None:
    """Each outcome is counted once per file, over a batch of files recorded together."""

    def at(path: str, md5: str = MD5_A, inode: int = 7) -> Seen:
        return Seen("bl402", path, path.rsplit("/", 1)[-1], Identity(10, 5, inode, md5))

    paths = [f"/data/bl402/f{i}" for i in range(8)]
    record(ledger, [at(p) for p in paths], now=NOW)
    ledger.execute("UPDATE scans SET checksum = NULL WHERE path IN (?, ?)", tuple(paths[6:]))
    batch = [
        *(at(p) for p in paths[0:2]),  # unchanged
        *(at(p, inode=9) for p in paths[2:4]),  # touched
        *(at(p, MD5_B) for p in paths[4:6]),  # new versions
        *(at(p) for p in paths[6:8]),  # legacy rows adopted
    ]
    result = record(ledger, batch, now=NOW + 1)
    assert (result.unchanged, result.touched, result.new_versions, result.adopted) == (2, 2, 2, 2)
    assert len(result.new_ids) == 2
