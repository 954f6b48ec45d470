"""What a prune batch holds, in the one order every party agrees on.

A prune run reports per-file verdicts by INDEX into its input's file list (results are kept
compact: the Flows run state is capped at 200 KB), so the lifecycle must rebuild exactly
that list when the run ends: the batch's members ordered by (rel, version), the same query
the timer body was built from. Members never move between batches while one is scheduled.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dichroism_control.lifecycle.base import LOCATIONS, PRUNE_MAX_ARCHIVES, PRUNE_MAX_FILES

if TYPE_CHECKING:
    from dichroism_control.ledger import Ledger

TAG_PREFIX = "dichroism-batch:"


def batch_tag(batch: str) -> str:
    """The run tag that identifies a batch's prune run. Timers passes tags on to the runs
    it starts (FlowStartDocument: body, run_monitors, run_managers, tags; globus-sdk-javascript
    src/open-api/types/timers.ts) but no label. Batch keys hold no whitespace, which Flows
    would normalise (flows.ts, Tags)."""
    return TAG_PREFIX + batch


def batch_members(ledger: Ledger, batch: sqlite3.Row) -> list[sqlite3.Row]:
    location = LOCATIONS[batch["location"]]
    return ledger.query(
        f"SELECT * FROM scans WHERE {location.batch} = ? ORDER BY rel, version",
        (batch["batch"],),
    )


def batch_chunks(members: list[sqlite3.Row], *, cfs: bool) -> Iterator[list[sqlite3.Row]]:
    """Members in chunks the prune schema accepts: at most PRUNE_MAX_FILES files and, for
    a CFS prune, files from at most PRUNE_MAX_ARCHIVES distinct htar archives."""
    chunk: list[sqlite3.Row] = []
    archives: set[str] = set()
    for member in members:
        archive = member["tape_path"] if cfs and member["tape_member"] else None
        grows = archive is not None and archive not in archives
        if chunk and (
            len(chunk) >= PRUNE_MAX_FILES or (grows and len(archives) >= PRUNE_MAX_ARCHIVES)
        ):
            yield chunk
            chunk, archives = [], set()
        chunk.append(member)
        if archive is not None:
            archives.add(archive)
    if chunk:
        yield chunk
