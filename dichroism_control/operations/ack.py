"""`dichroism ack`: a person has dealt with these failures.

An acknowledged failure leaves `status`'s failure list, the health problems and the alert
digest; the subject stays failed (nothing is re-queued, nothing deleted), marked with who
acknowledged it, when, and an optional note (table `acknowledged`, shown by `scan show`).
Acknowledging an archive group acknowledges its failed scans too. A retry of the subject
removes the acknowledgement, so a later failure is shown again.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dichroism_control.operations.selection import (
    Selection,
    Skip,
    batch_name,
    group_name,
    scan_name,
)

if TYPE_CHECKING:
    from dichroism_control.ledger import Ledger


@dataclass(frozen=True)
class Target:
    subject: str
    what: str


@dataclass
class AckPlan:
    targets: list[Target] = field(default_factory=list)
    already: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "acknowledged": [{"subject": t.subject, "what": t.what} for t in self.targets],
            "already_acknowledged": self.already,
            "skipped": [s.as_dict() for s in self.skipped],
            "count": len(self.targets),
        }


def plan(ledger: Ledger, selection: Selection) -> AckPlan:
    """What `ack` would mark; nothing is written."""
    result = AckPlan(skipped=list(selection.skipped))
    seen: set[str] = set()

    def add(subject: str, what: str, state: str) -> None:
        if subject in seen:
            return
        seen.add(subject)
        if state != "failed":
            reason = f"is {state}, not failed: nothing to acknowledge"
            result.skipped.append(Skip(subject, what, reason))
            return
        known = ledger.acknowledgement(subject)
        if known is not None:
            result.already.append(
                {"subject": subject, "what": what, "by": known["by"], "at": known["at"]}
            )
            return
        result.targets.append(Target(subject, what))

    for row in selection.scans:
        add(f"scan:{row['id']}", scan_name(row), row["state"])
    for row in selection.groups:
        add(f"group:{row['id']}", group_name(row), row["state"])
        if row["state"] == "failed":
            for member in ledger.query(
                "SELECT * FROM scans WHERE archive_group_id = ? AND state = 'failed'",
                (row["id"],),
            ):
                add(f"scan:{member['id']}", scan_name(member), member["state"])
    for row in selection.batches:
        add(f"batch:{row['batch']}", batch_name(row), row["state"])
    return result


def apply(
    ledger: Ledger, ack: AckPlan, *, by: str, note: str | None, now: float | None = None
) -> AckPlan:
    """Record the acknowledgements of `ack` in one transaction."""
    from dichroism_control.ledger import Ledger as LedgerClass

    now = time.time() if now is None else now
    with ledger.transaction() as conn:
        for target in ack.targets:
            _insert(conn, target.subject, by, note, now)
            LedgerClass.record_intervention(
                conn, action="ack", subject=target.subject, by=by, note=note, now=now
            )
    return ack


def _insert(conn: sqlite3.Connection, subject: str, by: str, note: str | None, now: float) -> None:
    conn.execute(
        "INSERT INTO acknowledged (subject, by, at, note) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(subject) DO NOTHING",
        (subject, by, now, note),
    )
