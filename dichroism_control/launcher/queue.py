"""The submission queue in the ledger: claim due scans (committed before anything is
sent), bounded by the runs in flight; give claims back; say when the next one is due."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dichroism_control.launcher.labels import run_label
from dichroism_control.launcher.outcomes import Outcome
from dichroism_control.ledger import Scan

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.ledger import Ledger

IN_FLIGHT_SQL = "SELECT COUNT(*) AS n FROM scans WHERE state IN ('submitting', 'submitted')"

# Two runs writing one CFS path at once would race: a later version of a path waits until
# the run of the earlier one has ended (the lifecycle then retires the earlier version).
_NO_OLDER_RUN_IN_FLIGHT = (
    "NOT EXISTS (SELECT 1 FROM scans AS older WHERE older.path = scans.path"
    " AND older.version < scans.version AND older.state IN ('submitting', 'submitted'))"
)


@dataclass(frozen=True)
class Claim:
    """A scan this process has moved to `submitting` and is about to send."""

    scan: Scan
    label: str
    # Set when an earlier attempt may have started a run: look it up before sending.
    uncertain: bool
    since: float


class SubmitQueue:
    """Claims and releases scans; at most `submit.max_runs_in_flight` runs in flight."""

    def __init__(
        self, config: Config, ledger: Ledger, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock

    def in_flight(self) -> int:
        """new_file runs started (or being started) and not yet seen finished."""
        rows = self.ledger.query(IN_FLIGHT_SQL)
        return int(rows[0]["n"])

    def free_slots(self) -> int:
        """How many more runs may start now (`submit.max_runs_in_flight`)."""
        return max(0, self.config.submit.max_runs_in_flight - self.in_flight())

    def claim(self, *, limit: int, scan_ids: list[int] | None = None) -> list[Claim]:
        """Move due `detected` scans to `submitting`, committed before anything is sent.

        At most `submit.max_runs_in_flight` runs are in flight: the rest of a backlog waits
        in the ledger, `detected`, and a slot frees when the lifecycle sees a run finish.
        """
        now = self.clock()
        with self.ledger.transaction() as conn:
            # IMMEDIATE: a concurrent writer waits rather than failing the snapshot later.
            conn.execute("BEGIN IMMEDIATE")
            in_flight = int(conn.execute(IN_FLIGHT_SQL).fetchone()["n"])
            limit = min(limit, self.config.submit.max_runs_in_flight - in_flight)
            if limit <= 0:
                return []
            if scan_ids is None:
                rows = conn.execute(
                    f"SELECT * FROM scans WHERE state = 'detected' AND next_attempt_at <= ?"
                    f" AND {_NO_OLDER_RUN_IN_FLIGHT} ORDER BY next_attempt_at, id LIMIT ?",
                    (now, limit),
                ).fetchall()
            else:
                marks = ",".join("?" * len(scan_ids))
                rows = conn.execute(
                    f"SELECT * FROM scans WHERE state = 'detected' AND id IN ({marks})"
                    f" AND {_NO_OLDER_RUN_IN_FLIGHT} ORDER BY id LIMIT ?",
                    (*scan_ids, limit),
                ).fetchall()
            claims = []
            updates = []
            for row in rows:
                scan = Scan.from_row(row)
                label = run_label(scan.beamline, scan.rel, scan.version)
                uncertain = scan.submit_started_at is not None
                since = scan.submit_started_at if scan.submit_started_at is not None else now
                claims.append(Claim(scan, label, uncertain, since))
                updates.append((since, label, now, scan.id))
            conn.executemany(
                "UPDATE scans SET state = 'submitting', submit_started_at = ?, label = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                updates,
            )
        return claims

    def next_due(self) -> float | None:
        """When the earliest queued scan becomes due (None: nothing queued, or no slot free:
        then only the lifecycle seeing a run finish frees one)."""
        if self.free_slots() <= 0:
            return None
        rows = self.ledger.query(
            "SELECT MIN(next_attempt_at) AS due FROM scans WHERE state = 'detected'"
            f" AND {_NO_OLDER_RUN_IN_FLIGHT}"
        )
        due = rows[0]["due"] if rows else None
        return float(due) if due is not None else None

    def release(self, claim: Claim) -> Outcome:
        """Give a claim back unsent (shutdown): as if it had never been claimed."""
        self.ledger.update_scan(
            claim.scan.id,
            state="detected",
            attempts=claim.scan.attempts,
            submit_started_at=claim.since if claim.uncertain else None,
        )
        return Outcome(claim.scan.id, claim.scan.path, "released")
