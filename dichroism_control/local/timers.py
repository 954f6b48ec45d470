"""The local stand-in for Globus Timers: flow timers that start a flow run, kept in
`local_timers`, obeying service_rules.timers: a timer keeps only the FlowStartDocument of
the run request (no label) and starts its run without a label. A once-timer has ended once
it fired; a recurring one is loaded again with its next time.

Each due time fires exactly once, whichever process gets there first: the claim is
`UPDATE ... WHERE status = 'loaded' AND run_at <= now` in the same transaction that inserts
the run (the `run_at` test: a recurring timer is 'loaded' again at once, with its next
time, so a claim that read the old time must not fire it twice). Stored statuses: loaded ->
firing -> ended (its run started) | error (its run was refused) | loaded (recurring);
deleted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dichroism_control.errors import PermanentBackendError
from dichroism_control.local.service_rules import timers as rules
from dichroism_control.local.service_rules.flows import ACTIVE, not_found
from dichroism_control.local.store import LocalStore, dumps, loads

if TYPE_CHECKING:
    import sqlite3
    from datetime import datetime

    from dichroism_control.backend import RunRequest
    from dichroism_control.local.executor import RunExecutor
    from dichroism_control.local.registry import FlowRegistry
    from dichroism_control.local.runs import RunRecords

log = logging.getLogger(__name__)


def timer_document(row: sqlite3.Row, *, status: str | None = None) -> dict[str, Any]:
    """The timer as Timers lists it (service_rules.timers.timer_document)."""
    stored = row["status"]
    ran = stored in ("ended", "error")
    recurring = row["interval_seconds"] is not None
    results = []
    if ran or (recurring and row["last_ran_at"] is not None):
        results.append(
            rules.result(
                ran_at=row["last_ran_at"],
                run_id=row["run_id"],
                run_status=ACTIVE if row["run_id"] else None,
                error=row["last_error"],
            )
        )
    shown = status or (rules.ENDED if ran else rules.SCHEDULED)
    return rules.timer_document(
        job_id=row["job_id"],
        name=row["name"],
        flow_id=row["flow_id"],
        run_at=row["run_at"],
        body=loads(row["body"]) or {},
        status=shown,
        submitted_at=row["submitted_at"],
        last_ran_at=row["last_ran_at"],
        results=results,
        interval_seconds=row["interval_seconds"],
        start=row["schedule_start"],
        n_runs=int(row["n_runs"]) if recurring else None,
        n_errors=int(row["n_errors"]) if recurring else None,
    )


class LocalTimers:
    """Once-timers of one ledger file; firing one starts its run in this process."""

    def __init__(
        self,
        store: LocalStore,
        registry: FlowRegistry,
        records: RunRecords,
        executor: RunExecutor,
    ) -> None:
        self.store = store
        self.registry = registry
        self.records = records
        self.executor = executor

    def create(self, *, name: str, run_at: datetime, request: RunRequest) -> dict[str, Any]:
        if run_at.tzinfo is None:
            raise ValueError("run_at must be timezone-aware")
        if self.registry.flow_row(request.flow_id) is None:
            raise not_found("flow", request.flow_id)
        job_id = str(uuid.uuid4())
        self.store.execute(
            "INSERT INTO local_timers (job_id, name, flow_id, run_at, body, status,"
            " submitted_at) VALUES (?, ?, ?, ?, ?, 'loaded', ?)",
            (
                job_id,
                name,
                request.flow_id,
                run_at.timestamp(),
                dumps(rules.flow_start_document(request.timer_body())),
                time.time(),
            ),
        )
        return timer_document(self._row(job_id), status=rules.CREATED)

    def create_recurring(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        """A timer that starts its run every `interval_seconds` from `start`
        (timers.ts RecurringTimerSchedule)."""
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if interval_seconds <= 0:
            raise PermanentBackendError(
                "400 BAD_REQUEST: interval_seconds must be > 0", http_status=400
            )
        if self.registry.flow_row(request.flow_id) is None:
            raise not_found("flow", request.flow_id)
        job_id = str(uuid.uuid4())
        self.store.execute(
            "INSERT INTO local_timers (job_id, name, flow_id, run_at, body, status,"
            " submitted_at, interval_seconds, schedule_start)"
            " VALUES (?, ?, ?, ?, ?, 'loaded', ?, ?, ?)",
            (
                job_id,
                name,
                request.flow_id,
                start.timestamp(),
                dumps(rules.flow_start_document(request.timer_body())),
                time.time(),
                float(interval_seconds),
                start.timestamp(),
            ),
        )
        return timer_document(self._row(job_id), status=rules.CREATED)

    def _row(self, job_id: str) -> sqlite3.Row:
        rows = self.store.query("SELECT * FROM local_timers WHERE job_id = ?", (job_id,))
        if not rows:
            raise not_found("timer", job_id)
        return rows[0]

    def iter(self) -> Iterator[dict[str, Any]]:
        rows = self.store.query(
            "SELECT * FROM local_timers WHERE status != 'deleted' ORDER BY submitted_at, job_id"
        )
        for row in rows:
            yield timer_document(row)

    def delete(self, timer_id: str) -> dict[str, Any]:
        row = self._row(timer_id)
        if row["status"] == "deleted":
            raise not_found("timer", timer_id)
        self.store.execute(
            "UPDATE local_timers SET status = 'deleted' WHERE job_id = ? AND status != 'deleted'",
            (timer_id,),
        )
        # DELETE answers the job as it was (SDK fixture timer/delete_job.py); gone after.
        return timer_document(row)

    def fire_due(self) -> list[str]:
        """Start the run of every due timer; each fires once, whichever process gets it."""
        now = time.time()
        due = self.store.query(
            "SELECT job_id FROM local_timers WHERE status = 'loaded' AND run_at <= ?"
            " ORDER BY run_at",
            (now,),
        )
        started: list[str] = []
        for row in due:
            run_id = self._fire(row["job_id"], now)
            if run_id is not None:
                started.append(run_id)
        return started

    def _fire(self, job_id: str, now: float) -> str | None:
        flow: sqlite3.Row | None = None
        run_id: str | None = None
        error: str | None = None
        with self.store.transaction() as conn:
            claimed = conn.execute(
                "UPDATE local_timers SET status = 'firing', last_ran_at = ?"
                " WHERE job_id = ? AND status = 'loaded' AND run_at <= ?",
                (now, job_id, now),
            ).rowcount
            if claimed != 1:
                return None  # another process (or thread) fired it
            timer = conn.execute(
                "SELECT * FROM local_timers WHERE job_id = ?", (job_id,)
            ).fetchone()
            request = rules.run_request(loads(timer["body"]) or {})
            flow = conn.execute(
                "SELECT * FROM local_flows WHERE id = ?", (timer["flow_id"],)
            ).fetchone()
            if flow is None:
                error = f"flow {timer['flow_id']} does not exist"
            else:
                try:
                    self.registry.validate_body(flow, request.get("body") or {})
                except PermanentBackendError as exc:
                    error = str(exc)
            interval = timer["interval_seconds"]
            if interval is not None:
                if error is None and flow is not None:
                    run_id = self.records.insert(conn, flow, request)
                next_at = rules.next_time(float(timer["run_at"]), float(interval), now)
                conn.execute(
                    "UPDATE local_timers SET status = 'loaded', run_at = ?, run_id = ?,"
                    " last_error = ?, n_runs = n_runs + ?, n_errors = n_errors + ?"
                    " WHERE job_id = ?",
                    (next_at, run_id, error, int(run_id is not None), int(run_id is None), job_id),
                )
            elif error is None and flow is not None:
                run_id = self.records.insert(conn, flow, request)
                conn.execute(
                    "UPDATE local_timers SET status = 'ended', run_id = ? WHERE job_id = ?",
                    (run_id, job_id),
                )
            else:
                # Like Timers: the run request was refused; the timer records why.
                conn.execute(
                    "UPDATE local_timers SET status = 'error', last_error = ? WHERE job_id = ?",
                    (error, job_id),
                )
        if run_id is None or flow is None:
            log.error("timer %s could not start its run: %s", job_id, error)
            return None
        self.executor.submit(run_id, flow)
        return run_id
