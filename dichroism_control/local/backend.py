"""`LocalBackend`: the Backend protocol with no network — flows run by the local engine.

What Globus keeps (flows, Compute functions, runs, run logs, timers) is kept in the ledger's
SQLite file (`local_*` tables, see `store.py`). Runs execute on a small thread pool of the
process that started them; documents are shaped like the Flows / Timers API's, so the
watcher, launcher, lifecycle and CLI are the same code on both backends.

Parts: `registry.py` (flows, functions, input validation), `runs.py` (run records),
`run_documents.py` (a record as a Flows run document), `executor.py` (worker threads),
`timers.py` (Timers), `run_local.py` (`dichroism run-local`).

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
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import FINAL_STATUSES, FlowSpec, RunRequest
from dichroism_control.local.engine import Engine
from dichroism_control.local.executor import RunExecutor
from dichroism_control.local.providers import build_providers
from dichroism_control.local.registry import FlowRegistry
from dichroism_control.local.runs import RunRecords
from dichroism_control.local.service_rules import flows
from dichroism_control.local.store import LocalStore, owner_alive, owner_token
from dichroism_control.local.timers import LocalTimers

if TYPE_CHECKING:
    from datetime import datetime

    from dichroism_control.config import Config

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
TICK_SECONDS = 0.25
REAP_SECONDS = 5.0


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
        # The providers need the registry's functions; the registry needs the engine's checks.
        self.registry = FlowRegistry(self.store, lambda d: self.engine.problems(d), self.user_id)
        self.providers = build_providers(config, self.registry)
        # Only Hello World is asynchronous locally; poll it briskly.
        self.engine = Engine(self.providers, poll_initial=0.2, poll_max=2.0)
        self.records = RunRecords(self.store, self.owner, self._urn)
        self.executor = RunExecutor(self.records, self.engine, self._context, workers)
        self.timers = LocalTimers(self.store, self.registry, self.records, self.executor)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.reap_interrupted()
        self._ticker: threading.Thread | None = None
        if background:
            self._ticker = threading.Thread(
                target=self._tick_loop, name="local-timers", daemon=True
            )
            self._ticker.start()

    @property
    def _urn(self) -> str:
        return f"urn:globus:auth:identity:{self.user_id}"

    def _context(self, run_id: str, flow_id: str) -> Mapping[str, Any]:
        return {
            "run_id": run_id,
            "flow_id": flow_id,
            "username": self.username,
            "email": None,
            "user_id": self._urn,
            "identities": [self._urn],
        }

    # ================================================================== lifecycle
    def close(self, *, wait: bool = True) -> None:
        """Stop firing timers; with `wait`, let the runs in flight finish."""
        self._stop.set()
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join(5)
        self.executor.shutdown(wait=wait)

    def wait(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The run's document once it is final (or after `timeout`, whatever its status)."""
        return self.executor.wait(run_id, timeout)

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.fire_due_timers()
                self.executor.forward_cancels()
                if time.monotonic() - self.records.last_reap >= REAP_SECONDS:
                    self.reap_interrupted()
            except Exception:
                # A locked database or a full disk must not kill the timer thread.
                log.exception("local backend: timer tick failed")
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

    def reap_interrupted(self) -> int:
        """Mark FAILED the ACTIVE runs whose owning process is gone. Returns how many."""
        return self.records.reap_interrupted()

    # ================================================================== deployment
    def register_function(self, *, name: str, source: str, description: str) -> str:
        return self.registry.register_function(name=name, source=source, description=description)

    def get_function(self, function_id: str) -> tuple[str, str] | None:
        return self.registry.get_function(function_id)

    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        return self.registry.get_flow(flow_id)

    def create_flow(self, spec: FlowSpec) -> dict[str, Any]:
        return self.registry.create_flow(spec)

    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]:
        return self.registry.update_flow(flow_id, spec)

    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        return self.registry.validate_flow(definition, input_schema)

    # ================================================================== runs
    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        """Start a run as Flows does: 404 for an unknown flow, 422 for an over-long label, 400
        for input the flow's schema rejects (service_rules.flows)."""
        flow = self.registry.flow_row(request.flow_id)
        if flow is None:
            raise flows.not_found("flow", request.flow_id)
        flows.check_label(request.label)
        self.registry.validate_body(flow, request.body)
        with self.store.transaction() as conn:
            run_id = self.records.insert(conn, flow, _request_fields(request))
        self.executor.submit(run_id, flow)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.records.get(run_id)

    def list_runs_page(self, flow_ids: list[str], marker: str | None = None) -> dict[str, Any]:
        """One page of GET /runs (newest first): `runs`, `has_next_page`, `marker`."""
        return self.records.page(flow_ids, marker)

    def iter_runs(self, *, flow_ids: list[str]) -> Iterator[dict[str, Any]]:
        self.fire_due_timers()
        if time.monotonic() - self.records.last_reap >= 1.0:
            self.reap_interrupted()
        marker: str | None = None
        while True:
            page = self.list_runs_page(flow_ids, marker)
            yield from page["runs"]
            marker = page.get("marker")
            if not page["has_next_page"] or not marker:
                return

    def iter_run_logs(self, run_id: str) -> Iterator[dict[str, Any]]:
        return self.records.iter_logs(run_id)

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        run = self.get_run(run_id)
        if run["status"] in FINAL_STATUSES:
            return run
        if not self.executor.cancel(run_id):
            owner = self.records.owner_of(run_id)
            if owner == self.owner or owner_alive(owner):
                self.records.request_cancel(run_id)
            else:
                self.records.end_orphan(run_id)
        return self.get_run(run_id)

    # ================================================================== timers
    def create_flow_timer(
        self, *, name: str, run_at: datetime, request: RunRequest
    ) -> dict[str, Any]:
        timer = self.timers.create(name=name, run_at=run_at, request=request)
        self._wake.set()
        return timer

    def create_recurring_flow_timer(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        timer = self.timers.create_recurring(
            name=name, interval_seconds=interval_seconds, start=start, request=request
        )
        self._wake.set()
        return timer

    def iter_timers(self) -> Iterator[dict[str, Any]]:
        self.fire_due_timers()
        yield from self.timers.iter()

    def delete_timer(self, timer_id: str) -> dict[str, Any]:
        return self.timers.delete(timer_id)

    def fire_due_timers(self) -> list[str]:
        """Start the run of every due timer; each fires once, whichever process gets it."""
        return self.timers.fire_due()


def _request_fields(request: RunRequest) -> dict[str, Any]:
    return {
        "body": request.body,
        "label": request.label,
        "tags": list(request.tags),
        "run_managers": list(request.run_managers),
        "run_monitors": list(request.run_monitors),
        "activity_notification_policy": {"status": list(request.notify_on)},
    }
