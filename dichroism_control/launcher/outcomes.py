"""What one attempt ended in, and the group commit of those outcomes (protocol step 3)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dichroism_control.ledger import Ledger

# Where an attempt's outcome goes: (scan id, columns to set). Default: its own transaction.
Record = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class Outcome:
    scan_id: int
    path: str
    state: str  # submitted | detected (retry queued) | failed | released
    run_id: str | None = None
    adopted: bool = False
    error: str | None = None
    next_attempt_at: float | None = None
    # A Retry-After the service asked for: the dispatcher pauses every claim until then.
    pause_until: float | None = None
    # Globus wants a person (a login, a consent): not the scan's fault, not retried blindly.
    needs_person: bool = False


class OutcomeWriter:
    """Group commit of attempt outcomes (protocol step 3) from many worker threads.

    A worker hands over its row and, unless another worker is writing at that moment, writes
    everything pending in one transaction, round after round until nothing is left; a
    worker that finds a write under way returns at once, and its row goes in the writer's
    next round. One commit serves as many runs as finished during the previous one, and an
    idle watcher still writes each outcome immediately. A row waits in `submitting` until
    committed, the state a crash there is already recovered from (look-up by label). A
    failed write keeps its rows for the next round and raises; `flush()` at shutdown.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        on_commit: Callable[[list[tuple[int, dict[str, Any]]]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.on_commit = on_commit
        self.clock = clock
        self.commits = 0
        self.rows = 0
        self._mutex = threading.Lock()
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._writing = False

    def __call__(self, scan_id: int, fields: dict[str, Any]) -> None:
        with self._mutex:
            self._pending.append((scan_id, {**fields, "updated_at": self.clock()}))
            if self._writing:
                return
            self._writing = True
        self._write_rounds()

    def flush(self) -> None:
        """Write what is pending now, unless a write is under way (it takes everything)."""
        with self._mutex:
            if self._writing or not self._pending:
                return
            self._writing = True
        self._write_rounds()

    def pending(self) -> int:
        with self._mutex:
            return len(self._pending)

    def _write_rounds(self) -> None:
        while True:
            with self._mutex:
                batch, self._pending = self._pending, []
                if not batch:
                    self._writing = False
                    return
            try:
                self._commit(batch)
            except BaseException:
                with self._mutex:
                    self._pending[:0] = batch
                    self._writing = False
                raise
            if self.on_commit is not None:
                self.on_commit(batch)

    def _commit(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for scan_id, fields in batch:
            groups.setdefault(tuple(fields), []).append({**fields, "_id": scan_id})
        with self.ledger.transaction() as conn:
            for columns, rows in groups.items():
                assignments = ", ".join(f"{name} = :{name}" for name in columns)
                conn.executemany(f"UPDATE scans SET {assignments} WHERE id = :_id", rows)
        self.commits += 1
        self.rows += len(batch)
