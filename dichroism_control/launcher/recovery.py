"""Finding runs started before a crash: a scan whose submission outcome is unknown is looked
up by its label (and tags) among the new_file flow's runs before it is ever sent again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import run_start_time
from dichroism_control.errors import BackendError
from dichroism_control.launcher.labels import run_label, run_tags
from dichroism_control.ledger import Scan

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)

# Runs started this long before the pending submission are still searched: covers clock
# skew between this host and Globus, and time a claimed scan waited for a worker.
LOOKUP_MARGIN_SECONDS = 600.0


class Recovery:
    """Looks up runs by label and settles scans left `submitting` by a dead process."""

    def __init__(
        self,
        ledger: Ledger,
        backend: Backend,
        flow_id: str,
        *,
        clock: Callable[[], float],
        lookup_margin: float = LOOKUP_MARGIN_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.backend = backend
        self.flow_id = flow_id
        self.clock = clock
        self.lookup_margin = lookup_margin

    def find_runs(self, pending: dict[str, tuple[float, str]]) -> dict[str, dict[str, Any]]:
        """Runs of the new_file flow whose label (and tags) match: {label: run}.

        `pending` maps label -> (submit_started_at, beamline). Pages newest first and stops
        at the first run older than the oldest pending submission minus the margin.
        """
        if not pending:
            return {}
        stop_before = min(since for since, _ in pending.values()) - self.lookup_margin
        # A scan the lifecycle loop re-queued after a failed run keeps its label: that failed
        # run must not be adopted as the new attempt.
        handled = {
            row["run_id"]
            for row in self.ledger.query("SELECT run_id FROM run_failures WHERE flow = 'new_file'")
        }
        found: dict[str, dict[str, Any]] = {}
        for run in self.backend.iter_runs(flow_ids=[self.flow_id]):
            label = run.get("label")
            adoptable = run.get("run_id") not in handled
            if adoptable and isinstance(label, str) and label in pending and label not in found:
                beamline = pending[label][1]
                if set(run_tags(beamline)) <= set(run.get("tags") or []):
                    found[label] = run
                    if len(found) == len(pending):
                        break
            started = run_start_time(run)
            if started is not None and started < stop_before:
                break
        return found

    def recover(self) -> dict[str, int]:
        """Settle every scan whose last submission has an unknown outcome (call at start-up,
        holding the SubmitLock): adopt the run if it exists, else queue the scan again."""
        rows = self.ledger.query(
            "SELECT * FROM scans WHERE state = 'submitting'"
            " OR (state = 'detected' AND submit_started_at IS NOT NULL)"
        )
        if not rows:
            return {"adopted": 0, "requeued": 0, "unresolved": 0}
        scans = [Scan.from_row(row) for row in rows]
        pending = {
            run_label(s.beamline, s.rel, s.version): (
                s.submit_started_at or self.clock(),
                s.beamline,
            )
            for s in scans
        }
        try:
            found = self.find_runs(pending)
        except BackendError as exc:
            # Nothing resolved: the rows stay uncertain and each is looked up before sending.
            log.warning("crash recovery lookup failed (%s); will look up per scan", exc)
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE scans SET state = 'detected', updated_at = ?"
                    " WHERE state = 'submitting'",
                    (self.clock(),),
                )
            return {"adopted": 0, "requeued": 0, "unresolved": len(scans)}
        now = self.clock()
        adopted = requeued = 0
        with self.ledger.transaction() as conn:
            for scan in scans:
                run = found.get(run_label(scan.beamline, scan.rel, scan.version))
                if run is not None:
                    conn.execute(
                        "UPDATE scans SET state = 'submitted', run_id = ?, last_error = NULL,"
                        " next_attempt_at = 0, updated_at = ? WHERE id = ?",
                        (str(run["run_id"]), now, scan.id),
                    )
                    adopted += 1
                else:
                    conn.execute(
                        "UPDATE scans SET state = 'detected', submit_started_at = NULL,"
                        " next_attempt_at = 0, updated_at = ? WHERE id = ?",
                        (now, scan.id),
                    )
                    requeued += 1
        if adopted or requeued:
            log.warning(
                "crash recovery: %d run(s) adopted, %d scan(s) queued again (no run found)",
                adopted,
                requeued,
            )
        return {"adopted": adopted, "requeued": requeued, "unresolved": 0}

    # -- synchronous driving (the `submit` command, tests) -------------------------------
