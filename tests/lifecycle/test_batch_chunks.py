"""Prune batches in chunks the prune schema accepts, and the run tag that finds them.

Issue 13 (mutation testing of the deletion path): the chunk limits are checked at their
exact boundaries (200 files; 50 distinct htar archives for a CFS prune, singles and the
compute-dtn prune not counting), since a chunk one file or one archive too large is a
prune the Flows service refuses, and a chunk split wrongly is a batch never pruned.
"""

from __future__ import annotations

from typing import Any

from dichroism_control.lifecycle.base import PRUNE_MAX_ARCHIVES, PRUNE_MAX_FILES
from dichroism_control.lifecycle.batches import batch_chunks, batch_tag


def member(i: int, archive: int | None) -> dict[str, Any]:
    """A member as the ledger row has it: in htar archive `archive`, or a single (None)."""
    if archive is None:
        return {"id": i, "tape_path": f"/hpss/raw/P1/f{i}.h5", "tape_member": None}
    return {"id": i, "tape_path": f"/hpss/raw/P1/x{archive}.tar", "tape_member": f"P1/f{i}.h5"}


def sizes(chunks: list[list[dict[str, Any]]]) -> list[int]:
    return [len(c) for c in chunks]


def test_batch_tag() -> None:
    assert batch_tag("bl402/cfs/2026-08-28#2") == "dichroism-batch:bl402/cfs/2026-08-28#2"


def test_no_members_no_chunk() -> None:
    assert list(batch_chunks([], cfs=True)) == []


def test_at_most_prune_max_files_per_chunk() -> None:
    members = [member(i, None) for i in range(2 * PRUNE_MAX_FILES + 1)]
    chunks = list(batch_chunks(members, cfs=False))
    assert sizes(chunks) == [PRUNE_MAX_FILES, PRUNE_MAX_FILES, 1]
    assert [m for c in chunks for m in c] == members  # every member once, in order
    assert sizes(list(batch_chunks(members[:PRUNE_MAX_FILES], cfs=True))) == [PRUNE_MAX_FILES]


def test_a_cfs_chunk_holds_at_most_prune_max_archives_archives() -> None:
    """Two members per archive: the 51st archive starts a new chunk, members of an archive
    already in the chunk do not."""
    members = [member(i, i // 2) for i in range(2 * PRUNE_MAX_ARCHIVES + 4)]
    chunks = list(batch_chunks(members, cfs=True))
    assert sizes(chunks) == [2 * PRUNE_MAX_ARCHIVES, 4]
    assert len({m["tape_path"] for m in chunks[0]}) == PRUNE_MAX_ARCHIVES
    assert [m for c in chunks for m in c] == members


def test_singles_do_not_count_as_archives() -> None:
    members = [member(i, i) for i in range(PRUNE_MAX_ARCHIVES)]
    members += [member(100 + i, None) for i in range(10)]
    assert sizes(list(batch_chunks(members, cfs=True))) == [PRUNE_MAX_ARCHIVES + 10]


def test_archives_count_only_for_a_cfs_prune() -> None:
    """The compute-dtn prune carries no archives: its members' tape places are irrelevant."""
    members = [member(i, i) for i in range(PRUNE_MAX_ARCHIVES + 5)]
    assert sizes(list(batch_chunks(members, cfs=False))) == [PRUNE_MAX_ARCHIVES + 5]
    assert sizes(list(batch_chunks(members, cfs=True))) == [PRUNE_MAX_ARCHIVES, 5]


def test_the_archive_count_starts_again_with_each_chunk() -> None:
    """After a split on files, the new chunk's archives are counted from zero."""
    members = [member(i, 0) for i in range(PRUNE_MAX_FILES)]
    members += [member(1000 + i, 1 + i) for i in range(PRUNE_MAX_ARCHIVES)]
    members += [member(2000, 999)]
    chunks = list(batch_chunks(members, cfs=True))
    assert sizes(chunks) == [PRUNE_MAX_FILES, PRUNE_MAX_ARCHIVES, 1]
