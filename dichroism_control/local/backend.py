"""`LocalBackend`: the Backend protocol with no network — flows run by the local engine.

What Globus keeps (flows, Compute functions, runs, run logs, timers) is kept in the ledger's
SQLite file (`local_*` tables, see `store.py`). Runs execute on a small thread pool of the
process that started them; documents are shaped like the Flows / Timers API's, so the
watcher, launcher, lifecycle and CLI are the same code on both backends.

Processes: `watch` and CLI commands may each hold a LocalBackend on the same file.
* A run belongs to the process that started it (`owner` = pid + process start time). A run
  left ACTIVE by a process that no longer exists is marked FAILED ("interrupted") by the next
  backend that looks, so the lifecycle loop retries it as it would a failed Globus run.
* A process exits only after its runs finish (the pool's workers are joined at exit): a
  `dichroism submit` on the local backend returns once its run has run.
* Timers fire exactly once: the claim is `UPDATE ... WHERE status = 'loaded'` in the same
  transaction that inserts the run. They fire from a daemon thread while a backend is alive
  and synchronously at the start of `iter_runs` / `iter_timers` (so `lifecycle --once`
  sees the runs of timers that fell due while nothing was running).
* `cancel_run` from another process sets a flag the owning process picks up within a
  fraction of a second.
"""

from __future__ import annotations

import getpass
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import FINAL_STATUSES, FlowSpec, RunRequest
from dichroism_control.errors import PermanentBackendError
from dichroism_control.local.engine import Engine, LogEntry
from dichroism_control.local.providers import build_providers
from dichroism_control.local.store import LocalStore, dumps, loads, owner_alive, owner_token

if TYPE_CHECKING:
    import sqlite3

    from dichroism_control.config import Config

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
TICK_SECONDS = 0.25
REAP_SECONDS = 5.0
PAGE = 100
LABEL_LIMIT = 128
INTERRUPTED = "FlowInterrupted"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _not_found(what: str, ident: str) -> PermanentBackendError:
    return PermanentBackendError(f"404 NOT_FOUND: no {what} {ident!r}", http_status=404)


class LocalBackend:
    """Flows, Timers and Compute, offline. See the module docstring."""

    kind = "local"

    def __init__(
        self, config: Config, *, workers: int = DEFAULT_WORKERS, background: bool = True
    ) -> None:
        self.config = config
        self.store = LocalStore(config.ledger_path)
        self.owner = owner_token()
        self.username = f"{getpass.getuser()}@localhost"
        self.user_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, self.username))
        self.providers = build_providers(config, self)
        # Only Hello World is asynchronous locally; poll it briskly.
        self.engine = Engine(self.providers, poll_initial=0.2, poll_max=2.0)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="local-run")
        self._cancels: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._validators: dict[str, Any] = {}
        self._last_reap = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.reap_interrupted()
        self._ticker: threading.Thread | None = None
        if background:
            self._ticker = threading.Thread(
                target=self._tick_loop, name="local-timers", daemon=True
            )
            self._ticker.start()

    # ================================================================== lifecycle
    def close(self, *, wait: bool = True) -> None:
        """Stop firing timers; with `wait`, let the runs in flight finish."""
        self._stop.set()
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join(5)
        self._pool.shutdown(wait=wait)

    def wait(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The run's document once it is final (or after `timeout`, whatever its status)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            done = self._done.get(run_id)
        if done is not None:
            done.wait(timeout)
        while True:
            run = self.get_run(run_id)
            if run["status"] in FINAL_STATUSES or time.monotonic() >= deadline:
                return run
            time.sleep(0.05)

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.fire_due_timers()
                self._forward_cancels()
                if time.monotonic() - self._last_reap >= REAP_SECONDS:
                    self.reap_interrupted()
            except Exception:
                # A locked database or a full disk must not kill the timer thread.
                log.exception("local backend: timer tick failed")
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

    # ================================================================== deployment
    def register_function(self, *, name: str, source: str, description: str) -> str:
        # Compute functions are immutable: every registration is a new id.
        function_id = str(uuid.uuid4())
        self.store.execute(
            "INSERT INTO local_functions (id, name, source, description, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (function_id, name, source, description, _now_iso()),
        )
        return function_id

    def get_function(self, function_id: str) -> tuple[str, str] | None:
        rows = self.store.query(
            "SELECT name, source FROM local_functions WHERE id = ?", (function_id,)
        )
        return (rows[0]["name"], rows[0]["source"]) if rows else None

    def _flow_row(self, flow_id: str) -> sqlite3.Row | None:
        rows = self.store.query("SELECT * FROM local_flows WHERE id = ?", (flow_id,))
        return rows[0] if rows else None

    def _flow_document(self, row: sqlite3.Row) -> dict[str, Any]:
        doc: dict[str, Any] = dict(loads(row["spec"]))
        doc.update(
            {
                "id": row["id"],
                "title": row["title"],
                "definition": loads(row["definition"]),
                "input_schema": loads(row["input_schema"]),
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
                "flow_owner": f"urn:globus:auth:identity:{self.user_id}",
                "user_role": "flow_owner",
            }
        )
        doc.setdefault("subscription_id", None)
        return doc

    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        row = self._flow_row(flow_id)
        return None if row is None else self._flow_document(row)

    def create_flow(self, spec: FlowSpec) -> dict[str, Any]:
        self._check_spec(spec)
        flow_id = str(uuid.uuid4())
        now = _now_iso()
        self.store.execute(
            "INSERT INTO local_flows (id, title, definition, input_schema, spec, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                flow_id,
                spec.title,
                dumps(spec.definition),
                dumps(spec.input_schema),
                dumps(spec.fields()),
                now,
                now,
            ),
        )
        flow = self.get_flow(flow_id)
        assert flow is not None
        return flow

    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]:
        self._check_spec(spec)
        count = self.store.execute(
            "UPDATE local_flows SET title = ?, definition = ?, input_schema = ?, spec = ?,"
            " updated_at = ? WHERE id = ?",
            (
                spec.title,
                dumps(spec.definition),
                dumps(spec.input_schema),
                dumps(spec.fields()),
                _now_iso(),
                flow_id,
            ),
        )
        if count == 0:
            raise _not_found("flow", flow_id)
        with self._lock:
            self._validators.pop(flow_id, None)
        flow = self.get_flow(flow_id)
        assert flow is not None
        return flow

    def _check_spec(self, spec: FlowSpec) -> None:
        # The service refuses invalid definitions at create/update (400/422); so do we.
        problems = self.validate_flow(spec.definition, spec.input_schema)
        if problems:
            raise PermanentBackendError(
                "422 UNPROCESSABLE_ENTITY: " + "; ".join(problems[:5]), http_status=422
            )

    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        from dichroism_control.definitions import structural_errors

        problems = list(self.engine.problems(definition))
        for error in structural_errors(definition, input_schema):
            if error not in problems:
                problems.append(error)
        return problems

    # ================================================================== runs
    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        flow = self._flow_row(request.flow_id)
        if flow is None:
            raise _not_found("flow", request.flow_id)
        self._validate_body(flow, request.body)
        if len(request.label) > LABEL_LIMIT:
            raise PermanentBackendError(
                f"400 BAD_REQUEST: label is longer than {LABEL_LIMIT} characters",
                http_status=400,
            )
        with self.store.transaction() as conn:
            run_id = self._insert_run(conn, flow, self._request_fields(request))
        self._submit(run_id, flow)
        return self.get_run(run_id)

    def _validate_body(self, flow: sqlite3.Row, body: dict[str, Any]) -> None:
        import jsonschema

        with self._lock:
            validator = self._validators.get(flow["id"])
        if validator is None:
            schema = loads(flow["input_schema"])
            validator = jsonschema.validators.validator_for(schema)(schema)
            with self._lock:
                self._validators[flow["id"]] = validator
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(top)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise PermanentBackendError(
                f"400 BAD_REQUEST: input does not match the flow's input_schema at "
                f"{where}: {first.message[:500]}{more}",
                http_status=400,
            )

    @staticmethod
    def _request_fields(request: RunRequest) -> dict[str, Any]:
        return {
            "body": request.body,
            "label": request.label,
            "tags": list(request.tags),
            "run_managers": list(request.run_managers),
            "run_monitors": list(request.run_monitors),
            "activity_notification_policy": {"status": list(request.notify_on)},
        }

    def _insert_run(
        self, conn: sqlite3.Connection, flow: sqlite3.Row, request: dict[str, Any]
    ) -> str:
        run_id = str(uuid.uuid4())
        now = time.time()
        details = {"code": "FlowStarting", "description": "The Flow is starting execution"}
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
                _iso(now),
                now,
                self.owner,
            ),
        )
        return run_id

    def _submit(self, run_id: str, flow: sqlite3.Row) -> None:
        cancel = threading.Event()
        done = threading.Event()
        with self._lock:
            self._cancels[run_id] = cancel
            self._done[run_id] = done
        definition = loads(flow["definition"])
        try:
            self._pool.submit(self._execute, run_id, flow["id"], definition, cancel, done)
        except RuntimeError as exc:  # the interpreter is shutting down
            self._finish_failed(run_id, f"the run could not start: {exc}")
            done.set()

    def _execute(
        self,
        run_id: str,
        flow_id: str,
        definition: dict[str, Any],
        cancel: threading.Event,
        done: threading.Event,
    ) -> None:
        try:
            rows = self.store.query("SELECT body FROM local_runs WHERE run_id = ?", (run_id,))
            body = loads(rows[0]["body"])

            def on_log(entry: LogEntry) -> None:
                self._log(run_id, entry)

            outcome = self.engine.run(
                definition,
                body,
                context={
                    "run_id": run_id,
                    "flow_id": flow_id,
                    "username": self.username,
                    "email": None,
                    "user_id": f"urn:globus:auth:identity:{self.user_id}",
                    "identities": [f"urn:globus:auth:identity:{self.user_id}"],
                },
                cancel=cancel,
                on_log=on_log,
            )
            self.store.execute(
                "UPDATE local_runs SET status = ?, details = ?, completion_time = ?"
                " WHERE run_id = ? AND status = 'ACTIVE'",
                (outcome.status, dumps(outcome.details), outcome.completion_time, run_id),
            )
        except Exception as exc:  # an engine or store bug: the run must still end
            log.exception("local run %s crashed", run_id)
            self._finish_failed(run_id, f"the local engine failed: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._cancels.pop(run_id, None)
                self._done.pop(run_id, None)
            done.set()

    def _log(self, run_id: str, entry: LogEntry) -> None:
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

    def _finish_failed(self, run_id: str, description: str, *, code: str = "FlowFailed") -> bool:
        details = {"code": code, "description": description, "output": None}
        count = self.store.execute(
            "UPDATE local_runs SET status = 'FAILED', details = ?, completion_time = ?"
            " WHERE run_id = ? AND status = 'ACTIVE'",
            (dumps(details), _now_iso(), run_id),
        )
        return count == 1

    def reap_interrupted(self) -> int:
        """Mark FAILED the ACTIVE runs whose owning process is gone. Returns how many."""
        self._last_reap = time.monotonic()
        reaped = 0
        rows = self.store.query("SELECT run_id, owner FROM local_runs WHERE status = 'ACTIVE'")
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
                " WHERE run_id = ? AND status = 'ACTIVE' AND owner = ?",
                (
                    dumps({"code": INTERRUPTED, "description": description, "output": None}),
                    _now_iso(),
                    row["run_id"],
                    owner,
                ),
            )
            reaped += count
        if reaped:
            log.warning("local backend: %d interrupted run(s) marked FAILED", reaped)
        return reaped

    def _run_document(self, row: sqlite3.Row) -> dict[str, Any]:
        meta = loads(row["request"]) or {}
        owner = f"urn:globus:auth:identity:{self.user_id}"
        return {
            "run_id": row["run_id"],
            "action_id": row["run_id"],
            "flow_id": row["flow_id"],
            "flow_title": row["flow_title"],
            "status": row["status"],
            "display_status": row["status"],
            "label": row["label"],
            "tags": loads(row["tags"]),
            "start_time": row["start_time"],
            "completion_time": row["completion_time"],
            "details": loads(row["details"]),
            "run_managers": meta.get("run_managers") or [],
            "run_monitors": meta.get("run_monitors") or [],
            "manage_by": meta.get("run_managers") or [],
            "monitor_by": meta.get("run_monitors") or [],
            "activity_notification_policy": meta.get("activity_notification_policy"),
            "run_owner": owner,
            "created_by": owner,
            "user_role": "run_owner",
        }

    def get_run(self, run_id: str) -> dict[str, Any]:
        rows = self.store.query("SELECT * FROM local_runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise _not_found("run", run_id)
        return self._run_document(rows[0])

    def iter_runs(self, *, flow_ids: list[str]) -> Iterator[dict[str, Any]]:
        self.fire_due_timers()
        if time.monotonic() - self._last_reap >= 1.0:
            self.reap_interrupted()
        where = ""
        params: list[Any] = []
        if flow_ids:
            where = f"flow_id IN ({', '.join('?' for _ in flow_ids)})"
            params = list(flow_ids)
        cursor: tuple[float, str] | None = None
        while True:
            clauses = [where] if where else []
            page_params = list(params)
            if cursor is not None:
                clauses.append("(start_ts < ? OR (start_ts = ? AND run_id < ?))")
                page_params += [cursor[0], cursor[0], cursor[1]]
            sql = "SELECT * FROM local_runs"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY start_ts DESC, run_id DESC LIMIT ?"
            rows = self.store.query(sql, (*page_params, PAGE))
            for row in rows:
                yield self._run_document(row)
            if len(rows) < PAGE:
                return
            cursor = (rows[-1]["start_ts"], rows[-1]["run_id"])

    def iter_run_logs(self, run_id: str) -> Iterator[dict[str, Any]]:
        if not self.store.query("SELECT 1 FROM local_runs WHERE run_id = ?", (run_id,)):
            raise _not_found("run", run_id)
        last = 0
        while True:
            rows = self.store.query(
                "SELECT id, entry FROM local_run_logs WHERE run_id = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (run_id, last, PAGE),
            )
            for row in rows:
                yield loads(row["entry"])
            if len(rows) < PAGE:
                return
            last = rows[-1]["id"]

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        run = self.get_run(run_id)
        if run["status"] in FINAL_STATUSES:
            return run
        with self._lock:
            event = self._cancels.get(run_id)
        if event is not None:
            event.set()
        else:
            rows = self.store.query("SELECT owner FROM local_runs WHERE run_id = ?", (run_id,))
            owner = rows[0]["owner"]
            if owner == self.owner or owner_alive(owner):
                # The owning process (or backend) forwards it to the run within a tick.
                self.store.execute(
                    "UPDATE local_runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,)
                )
            else:
                self.store.execute(
                    "UPDATE local_runs SET status = 'ENDED', details = ?, completion_time = ?"
                    " WHERE run_id = ? AND status = 'ACTIVE'",
                    (
                        dumps(
                            {
                                "code": "FlowCanceled",
                                "description": "canceled; its process had already exited",
                                "output": None,
                            }
                        ),
                        _now_iso(),
                        run_id,
                    ),
                )
        return self.get_run(run_id)

    def _forward_cancels(self) -> None:
        with self._lock:
            mine = list(self._cancels.items())
        if not mine:
            return
        rows = self.store.query(
            "SELECT run_id FROM local_runs WHERE cancel_requested = 1 AND status = 'ACTIVE'"
            " AND owner = ?",
            (self.owner,),
        )
        wanted = {row["run_id"] for row in rows}
        for run_id, event in mine:
            if run_id in wanted:
                event.set()

    # ================================================================== timers
    def create_flow_timer(
        self, *, name: str, run_at: datetime, request: RunRequest
    ) -> dict[str, Any]:
        if run_at.tzinfo is None:
            raise ValueError("run_at must be timezone-aware")
        if self._flow_row(request.flow_id) is None:
            raise _not_found("flow", request.flow_id)
        job_id = str(uuid.uuid4())
        self.store.execute(
            "INSERT INTO local_timers (job_id, name, flow_id, run_at, body, status,"
            " submitted_at) VALUES (?, ?, ?, ?, ?, 'loaded', ?)",
            (
                job_id,
                name,
                request.flow_id,
                run_at.timestamp(),
                dumps(request.timer_body()),
                time.time(),
            ),
        )
        self._wake.set()
        return self._timer_document(self._timer_row(job_id))

    def create_recurring_flow_timer(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if interval_seconds <= 0:
            raise PermanentBackendError("400: interval_seconds must be > 0", http_status=400)
        if self._flow_row(request.flow_id) is None:
            raise _not_found("flow", request.flow_id)
        job_id = str(uuid.uuid4())
        self.store.execute(
            "INSERT INTO local_timers (job_id, name, flow_id, run_at, body, status,"
            " submitted_at, interval_seconds) VALUES (?, ?, ?, ?, ?, 'loaded', ?, ?)",
            (
                job_id,
                name,
                request.flow_id,
                start.timestamp(),
                dumps(request.timer_body()),
                time.time(),
                float(interval_seconds),
            ),
        )
        self._wake.set()
        return self._timer_document(self._timer_row(job_id))

    def _timer_row(self, job_id: str) -> sqlite3.Row:
        rows = self.store.query("SELECT * FROM local_timers WHERE job_id = ?", (job_id,))
        if not rows:
            raise _not_found("timer", job_id)
        return rows[0]

    @staticmethod
    def _timer_document(row: sqlite3.Row) -> dict[str, Any]:
        status = row["status"]
        ran = status in ("ended", "error")
        shown = {"firing": "loaded", "ended": "inactive", "error": "inactive"}.get(status, status)
        interval = row["interval_seconds"]
        schedule: dict[str, Any] = (
            {"type": "once", "datetime": _iso(row["run_at"])}
            if interval is None
            else {"type": "recurring", "interval_seconds": int(interval)}
        )
        doc: dict[str, Any] = {
            "job_id": row["job_id"],
            "name": row["name"],
            "timer_type": "flow",
            "flow_id": row["flow_id"],
            "status": shown,
            "next_run": None if ran or status == "deleted" else _iso(row["run_at"]),
            "last_ran_at": _iso(row["last_ran_at"]),
            "submitted_at": _iso(row["submitted_at"]),
            "schedule": schedule,
            "body": loads(row["body"]),
            "number_of_runs": int(row["n_runs"]),
            "number_of_errors": 1 if status == "error" else 0,
            "run_id": row["run_id"],
        }
        if ran:
            doc["inactive_reason"] = {
                "cause": "ended" if status == "ended" else "error",
                "detail": row["last_error"],
            }
        return doc

    def iter_timers(self) -> Iterator[dict[str, Any]]:
        self.fire_due_timers()
        rows = self.store.query(
            "SELECT * FROM local_timers WHERE status != 'deleted' ORDER BY submitted_at, job_id"
        )
        for row in rows:
            yield self._timer_document(row)

    def delete_timer(self, timer_id: str) -> dict[str, Any]:
        row = self._timer_row(timer_id)
        if row["status"] == "deleted":
            raise _not_found("timer", timer_id)
        self.store.execute(
            "UPDATE local_timers SET status = 'deleted' WHERE job_id = ? AND status != 'deleted'",
            (timer_id,),
        )
        return self._timer_document(self._timer_row(timer_id))

    def fire_due_timers(self) -> list[str]:
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
                # `run_at <= now` too: a recurring timer is 'loaded' again at once, with its
                # next time, so a claim that read the old time must not fire it twice.
                "UPDATE local_timers SET status = 'firing', last_ran_at = ?"
                " WHERE job_id = ? AND status = 'loaded' AND run_at <= ?",
                (now, job_id, now),
            ).rowcount
            if claimed != 1:
                return None  # another process (or thread) fired it
            timer = conn.execute(
                "SELECT * FROM local_timers WHERE job_id = ?", (job_id,)
            ).fetchone()
            request = loads(timer["body"]) or {}
            flow = conn.execute(
                "SELECT * FROM local_flows WHERE id = ?", (timer["flow_id"],)
            ).fetchone()
            if flow is None:
                error = f"flow {timer['flow_id']} does not exist"
            else:
                try:
                    self._validate_body(flow, request.get("body") or {})
                except PermanentBackendError as exc:
                    error = str(exc)
            interval = timer["interval_seconds"]
            if interval is not None:
                # Recurring: the next time is the first of the schedule after now (a timer
                # that could not fire for a while runs once, not once per missed interval).
                missed = math.floor((now - float(timer["run_at"])) / float(interval)) + 1
                next_at = float(timer["run_at"]) + max(1, missed) * float(interval)
                if error is None and flow is not None:
                    run_id = self._insert_run(conn, flow, request)
                conn.execute(
                    "UPDATE local_timers SET status = 'loaded', run_at = ?,"
                    " run_id = COALESCE(?, run_id), last_error = ?,"
                    " n_runs = n_runs + ? WHERE job_id = ?",
                    (next_at, run_id, error, 1 if run_id else 0, job_id),
                )
            elif error is None and flow is not None:
                run_id = self._insert_run(conn, flow, request)
                conn.execute(
                    "UPDATE local_timers SET status = 'ended', run_id = ?, n_runs = 1"
                    " WHERE job_id = ?",
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
        self._submit(run_id, flow)
        return run_id


# ====================================================================== run-local


def run_document(
    definition: dict[str, Any],
    input_schema: dict[str, Any],
    flow_input: Any,
    *,
    config: Config | None,
    title: str = "run-local",
    label: str | None = None,
) -> dict[str, Any]:
    """Run one definition to completion in this process; the final run document.

    Refuses (DefinitionError / ConfigError, exit 2) a definition the engine cannot run or
    an input its schema rejects, as the service would refuse to create or start it. With a
    config, every local provider is available (collections, Compute functions registered
    by `deploy --backend local`); without one, only providers that need nothing do.
    """
    import jsonschema

    from dichroism_control.errors import ConfigError, DefinitionError
    from dichroism_control.local.engine import ActionContext, ActionProvider, ActionUnableToRun
    from dichroism_control.local.providers import (
        COMPUTE_URL,
        HELLO_WORLD_URL,
        TRANSFER_URLS,
        HelloWorldProvider,
    )

    providers: dict[str, ActionProvider]
    store: LocalStore | None = None
    if config is not None:
        store = LocalStore(config.ledger_path)
        lookup = _StoreFunctions(store)
        providers = build_providers(config, lookup)
    else:

        class Refuse(ActionProvider):
            def __init__(self, url: str) -> None:
                self.url = url

            def run(self, body: dict[str, Any], ctx: ActionContext) -> Any:
                raise ActionUnableToRun(
                    f"{self.url} needs a config (collections and Compute endpoints): pass "
                    "--config, e.g. examples/local.yml",
                    code="NoConfig",
                )

        providers = {url: Refuse(url) for url in (*TRANSFER_URLS.values(), COMPUTE_URL)}
        providers[HELLO_WORLD_URL] = HelloWorldProvider()
    engine = Engine(providers, poll_initial=0.2, poll_max=2.0)
    problems = engine.problems(definition)
    if problems:
        raise DefinitionError("the definition cannot run: " + "; ".join(problems[:5]))
    if input_schema:
        try:
            validator = jsonschema.validators.validator_for(input_schema)(input_schema)
        except jsonschema.SchemaError as exc:
            raise DefinitionError(
                f"input_schema is not a valid JSON Schema: {exc.message}"
            ) from None
        errors = sorted(validator.iter_errors(flow_input), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
            raise ConfigError(
                f"input does not match the input_schema at {where}: {errors[0].message[:500]}"
            )
    run_id = str(uuid.uuid4())
    user = f"{getpass.getuser()}@localhost"
    identity = f"urn:globus:auth:identity:{uuid.uuid5(uuid.NAMESPACE_DNS, user)}"
    try:
        outcome = engine.run(
            definition,
            flow_input,
            context={
                "run_id": run_id,
                "flow_id": None,
                "username": user,
                "user_id": identity,
                "identities": [identity],
            },
        )
    finally:
        if store is not None:
            store.close()
    return {
        **outcome.run_fields(),
        "flow_id": None,
        "flow_title": title,
        "label": label or title,
        "tags": [],
        "user_role": "run_owner",
        "run_owner": identity,
        "transitions": outcome.transitions,
        "log": outcome.log,
    }


class _StoreFunctions:
    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def get_function(self, function_id: str) -> tuple[str, str] | None:
        rows = self.store.query(
            "SELECT name, source FROM local_functions WHERE id = ?", (function_id,)
        )
        return (rows[0]["name"], rows[0]["source"]) if rows else None
