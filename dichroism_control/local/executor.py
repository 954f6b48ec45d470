"""Running local runs: each on a worker thread of this process, with the engine, writing
its log and outcome to the run records; cancel events for the runs this process owns."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.local.store import loads

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Mapping

    from dichroism_control.local.engine import Engine, LogEntry
    from dichroism_control.local.runs import RunRecords

log = logging.getLogger(__name__)


class RunExecutor:
    """A pool of worker threads running this process's runs to their end."""

    def __init__(
        self,
        records: RunRecords,
        engine: Engine,
        context: Callable[[str, str], Mapping[str, Any]],
        workers: int,
    ) -> None:
        self.records = records
        self.engine = engine
        self.context = context  # (run_id, flow_id) -> the run's `$._context`
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="local-run")
        self._cancels: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def shutdown(self, *, wait: bool) -> None:
        self._pool.shutdown(wait=wait)

    def submit(self, run_id: str, flow: sqlite3.Row) -> None:
        cancel = threading.Event()
        done = threading.Event()
        with self._lock:
            self._cancels[run_id] = cancel
            self._done[run_id] = done
        definition = loads(flow["definition"])
        try:
            self._pool.submit(self._execute, run_id, flow["id"], definition, cancel, done)
        except RuntimeError as exc:  # the interpreter is shutting down
            self.records.finish_failed(run_id, f"the run could not start: {exc}")
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
            body = self.records.body(run_id)

            def on_log(entry: LogEntry) -> None:
                self.records.log(run_id, entry)

            def on_status(status: str, details: dict[str, Any]) -> None:
                self.records.set_live_status(run_id, status, details)

            outcome = self.engine.run(
                definition,
                body,
                context=self.context(run_id, flow_id),
                cancel=cancel,
                on_log=on_log,
                on_status=on_status,
            )
            self.records.finish(run_id, outcome)
        except Exception as exc:  # an engine or store bug: the run must still end
            log.exception("local run %s crashed", run_id)
            self.records.finish_failed(
                run_id, f"the local engine failed: {type(exc).__name__}: {exc}"
            )
        finally:
            with self._lock:
                self._cancels.pop(run_id, None)
                self._done.pop(run_id, None)
            done.set()

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        """The run's document once it is final (or after `timeout`, whatever its status)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            done = self._done.get(run_id)
        if done is not None:
            done.wait(timeout)
        while True:
            run = self.records.get(run_id)
            if run["status"] in FINAL_STATUSES or time.monotonic() >= deadline:
                return run
            time.sleep(0.05)

    def cancel(self, run_id: str) -> bool:
        """Set the cancel event of a run this process is running; False if it is not ours."""
        with self._lock:
            event = self._cancels.get(run_id)
        if event is None:
            return False
        event.set()
        return True

    def forward_cancels(self) -> None:
        """Cancel the runs of ours that another process asked to cancel."""
        with self._lock:
            mine = list(self._cancels.items())
        if not mine:
            return
        wanted = self.records.cancel_requested()
        for run_id, event in mine:
            if run_id in wanted:
                event.set()
