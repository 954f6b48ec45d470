"""The local backend's run records (`local_runs`, `local_run_logs`): starting a record,
what its log says while it runs, how it ends, how it is listed, and the runs whose process
died under them.

Every change that must happen once is an `UPDATE ... WHERE status IN <live>` whose rowcount
says who won (the process that ran the run, a canceller, or the reaper of dead processes).
A live run is ACTIVE or INACTIVE (waiting on something, e.g. a consent).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dichroism_control.local.run_documents import now_iso, run_document
from dichroism_control.local.service_rules import flows
from dichroism_control.local.store import LocalStore, dumps, loads, owner_alive

if TYPE_CHECKING:
    import sqlite3

    from dichroism_control.local.engine import LogEntry, RunOutcome

log = logging.getLogger(__name__)

LOG_PAGE = 100
INTERRUPTED = "FlowInterrupted"
LIVE = "status IN ('ACTIVE', 'INACTIVE')"


class RunRecords:
    """Runs of one ledger file, as seen by the process `owner`."""

    def __init__(self, store: LocalStore, owner: str, owner_urn: str) -> None:
        self.store = store
        self.owner = owner
        self.owner_urn = owner_urn
        self.last_reap = 0.0

    # ------------------------------------------------------------------ start
    def insert(self, conn: sqlite3.Connection, flow: sqlite3.Row, request: dict[str, Any]) -> str:
        """A new ACTIVE run of `flow` for a run request (body, label, tags, roles, policy)."""
        run_id = str(uuid.uuid4())
        now = time.time()
        details = dict(flows.STARTING)
        meta = {k: request.get(k) for k in ("run_managers", "run_monitors")} | {
            "activity_notification_policy": request.get("activity_notification_policy")
        }
        conn.execute(
            "INSERT INTO local_runs (run_id, flow_id, flow_title, status, label, tags, request,"
            " body, details, start_time, start_ts, owner) VALUES"
            " (?, ?, ?, 'ACTIVE', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                flow["id"],
                flow["title"],
                str(request.get("label") or ""),
                dumps(list(request.get("tags") or [])),
                dumps(meta),
                dumps(request.get("body") or {}),
                dumps(details),
                flows.start_time(now),
                now,
                self.owner,
            ),
        )
        return run_id

    def body(self, run_id: str) -> Any:
        rows = self.store.query("SELECT body FROM local_runs WHERE run_id = ?", (run_id,))
        return loads(rows[0]["body"])

    # ------------------------------------------------------------------ while it runs
    def log(self, run_id: str, entry: LogEntry) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO local_run_logs (run_id, entry) VALUES (?, ?)", (run_id, dumps(entry))
            )
            # An ACTIVE run's details say where it is, as the Flows service's do.
            if entry.get("code") not in ("FlowSucceeded", "FlowFailed", "FlowCanceled"):
                details = {
                    "code": entry.get("code"),
                    "description": entry.get("description"),
                    "time": entry.get("time"),
                }
                conn.execute(
                    "UPDATE local_runs SET details = ? WHERE run_id = ? AND status = 'ACTIVE'",
                    (dumps(details), run_id),
                )

    def set_live_status(self, run_id: str, status: str, details: dict[str, Any]) -> None:
        """A live run going INACTIVE (what it waits on in its details) or ACTIVE again."""
        self.store.execute(
            f"UPDATE local_runs SET status = ?, details = ? WHERE run_id = ? AND {LIVE}",
            (status, dumps(details), run_id),
        )

    # ------------------------------------------------------------------ end
    def finish(self, run_id: str, outcome: RunOutcome) -> None:
        self.store.execute(
            "UPDATE local_runs SET status = ?, details = ?, completion_time = ?"
            f" WHERE run_id = ? AND {LIVE}",
            (outcome.status, dumps(outcome.details), outcome.completion_time, run_id),
        )

    def finish_failed(self, run_id: str, description: str, *, code: str = "FlowFailed") -> bool:
        details = {"code": code, "description": description, "output": None}
        count = self.store.execute(
            "UPDATE local_runs SET status = 'FAILED', details = ?, completion_time = ?"
            f" WHERE run_id = ? AND {LIVE}",
            (dumps(details), now_iso(), run_id),
        )
        return count == 1

    def reap_interrupted(self) -> int:
        """Mark FAILED the live runs whose owning process is gone. Returns how many."""
        self.last_reap = time.monotonic()
        reaped = 0
        rows = self.store.query(f"SELECT run_id, owner FROM local_runs WHERE {LIVE}")
        dead: dict[str, bool] = {}
        for row in rows:
            owner = row["owner"]
            if owner == self.owner:
                continue
            if owner not in dead:
                dead[owner] = not owner_alive(owner)
            if not dead[owner]:
                continue
            description = (
                f"interrupted: the process that ran it (pid {owner.split(':')[0]}) exited "
                "before the run finished; nothing resumes it (start it again)"
            )
            count = self.store.execute(
                "UPDATE local_runs SET status = 'FAILED', details = ?, completion_time = ?"
                f" WHERE run_id = ? AND {LIVE} AND owner = ?",
                (
                    dumps({"code": INTERRUPTED, "description": description, "output": None}),
                    now_iso(),
                    row["run_id"],
                    owner,
                ),
            )
            reaped += count
        if reaped:
            log.warning("local backend: %d interrupted run(s) marked FAILED", reaped)
        return reaped

    # ------------------------------------------------------------------ cancel
    def owner_of(self, run_id: str) -> str:
        rows = self.store.query("SELECT owner FROM local_runs WHERE run_id = ?", (run_id,))
        return str(rows[0]["owner"])

    def request_cancel(self, run_id: str) -> None:
        """Ask the owning process (or backend) to cancel; it forwards it within a tick."""
        self.store.execute("UPDATE local_runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))

    def end_orphan(self, run_id: str) -> None:
        """Cancel a run whose process has already exited: nothing else will end it. Like any
        canceled run it ends FAILED with code FlowCanceled (service_rules.flows)."""
        details = flows.canceled_details("canceled; its process had already exited")
        self.store.execute(
            "UPDATE local_runs SET status = ?, details = ?, completion_time = ?"
            f" WHERE run_id = ? AND {LIVE}",
            (flows.CANCELED_STATUS, dumps({**details, "output": None}), now_iso(), run_id),
        )

    def cancel_requested(self) -> set[str]:
        rows = self.store.query(
            f"SELECT run_id FROM local_runs WHERE cancel_requested = 1 AND {LIVE} AND owner = ?",
            (self.owner,),
        )
        return {row["run_id"] for row in rows}

    # ------------------------------------------------------------------ read
    def get(self, run_id: str) -> dict[str, Any]:
        rows = self.store.query("SELECT * FROM local_runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise flows.not_found("run", run_id)
        return run_document(rows[0], self.owner_urn)

    def page(self, flow_ids: list[str], marker: str | None = None) -> dict[str, Any]:
        """One page of the flows' runs, newest first, as Flows pages GET /runs
        (service_rules.flows: `limit`, `has_next_page`, an opaque `marker`)."""
        after: list[Any] | None = None
        if marker is not None:
            flow_ids, after = flows.decode_marker(marker)
        clauses: list[str] = []
        params: list[Any] = []
        if flow_ids:
            clauses.append(f"flow_id IN ({', '.join('?' for _ in flow_ids)})")
            params += flow_ids
        if after is not None:
            clauses.append("(start_ts < ? OR (start_ts = ? AND run_id < ?))")
            params += [after[0], after[0], after[1]]
        sql = "SELECT * FROM local_runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY start_ts DESC, run_id DESC LIMIT ?"
        rows = self.store.query(sql, (*params, flows.RUNS_PAGE_LIMIT + 1))
        window = rows[: flows.RUNS_PAGE_LIMIT]
        last = [window[-1]["start_ts"], window[-1]["run_id"]] if window else None
        return flows.page_document(
            [run_document(row, self.owner_urn) for row in window],
            flow_ids,
            last,
            len(rows) > flows.RUNS_PAGE_LIMIT,
        )

    def iter_logs(self, run_id: str) -> Iterator[dict[str, Any]]:
        if not self.store.query("SELECT 1 FROM local_runs WHERE run_id = ?", (run_id,)):
            raise flows.not_found("run", run_id)
        last = 0
        while True:
            rows = self.store.query(
                "SELECT id, entry FROM local_run_logs WHERE run_id = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (run_id, last, LOG_PAGE),
            )
            for row in rows:
                yield loads(row["entry"])
            if len(rows) < LOG_PAGE:
                return
            last = rows[-1]["id"]
