"""The dispatcher: claims due scans from the ledger and sends them on a small worker pool.

The queue lives in the ledger, never only in memory: the dispatcher claims in batches (the
claim is committed before any HTTP call), hands each claim to a worker that does the HTTP
without any ledger lock, and group-commits the workers' outcomes (`OutcomeWriter`). It
wakes when the watcher records new scans (`wake`), when a retry falls due, and every
`IDLE_CHECK_SECONDS` (other processes, e.g. `dichroism submit`, add rows too). A
Retry-After from the service pauses every claim until then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dichroism_control.launcher.outcomes import Outcome, OutcomeWriter
from dichroism_control.quietlog import Throttle

if TYPE_CHECKING:
    from dichroism_control.launcher.queue import Claim
    from dichroism_control.launcher.submit import Launcher

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
# The dispatcher looks at the ledger this often when idle: retries fall due, and other
# processes (`dichroism submit` while the watcher runs) add rows.
IDLE_CHECK_SECONDS = 2.0


@dataclass
class DispatchStats:
    submitted: int = 0
    adopted: int = 0
    failed: int = 0
    retries: int = 0


class Dispatcher:
    """Claim -> worker pool -> attempt -> outcome, around one Launcher. `start()`, `stop()`."""

    def __init__(
        self,
        launcher: Launcher,
        *,
        workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.launcher = launcher
        self.workers = workers
        self.max_inflight = workers * 4
        self.clock = clock
        self.stats = DispatchStats()
        self._cond = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._inflight = 0
        self._warm = False
        self._pause_until = 0.0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit")
        self._outcomes = OutcomeWriter(launcher.ledger, on_commit=self._committed)
        self._throttle = Throttle()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dispatch", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 60.0) -> DispatchStats:
        """Finish the HTTP calls under way, give back unsent claims, write their outcomes."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True)
        try:
            self._outcomes.flush()
        except Exception as exc:
            log.error(
                "recording %d outcome(s) failed (%s); those scans are looked up at the next start",
                self._outcomes.pending(),
                exc,
            )
        return self.stats

    def wake(self) -> None:
        """New scans are queued (or a retry became claimable): look at the ledger again."""
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def _loop(self) -> None:
        next_check = 0.0
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = self.clock()
                    if now < self._pause_until:
                        self._cond.wait(self._pause_until - now)
                        continue
                    capacity = self.max_inflight if self._warm else 1
                    free = capacity - self._inflight
                    wanted = self._dirty or now >= next_check
                    # Claim in batches: wait until half the pipeline is free (or it is empty).
                    if wanted and free > 0 and (free >= capacity // 2 or self._inflight == 0):
                        self._dirty = False
                        break
                    # Not wanted: sleep until the next check. Wanted but full: the worker
                    # whose finish makes the condition above true notifies.
                    self._cond.wait(None if wanted else next_check - now)
            self._flush_outcomes()
            try:
                claims = self.launcher.claim(limit=free)
            except Exception as exc:
                # A full disk or a read-only ledger: nothing is claimed, so nothing is sent.
                if self._throttle.due("claim"):
                    log.error("claiming scans from the ledger failed (%s); retrying", exc)
                claims = []
                next_check = self.clock() + IDLE_CHECK_SECONDS
            if claims:
                with self._cond:
                    self._inflight += len(claims)
                    if len(claims) == free:
                        self._dirty = True  # there may be more
                for claim in claims:
                    self._pool.submit(self._work, claim)
            else:
                due = self.launcher.next_due()
                now = self.clock()
                wall = time.time()
                # next_attempt_at is wall-clock time; the loop runs on the monotonic clock.
                until_due = (due - wall) if due is not None else IDLE_CHECK_SECONDS
                next_check = now + min(max(until_due, 0.05), IDLE_CHECK_SECONDS)

    def _work(self, claim: Claim) -> None:
        outcome: Outcome | None = None
        try:
            with self._cond:
                stopping = self._stopping
            if stopping:
                outcome = self.launcher.release(claim)
            else:
                outcome = self.launcher.attempt(claim, record=self._outcomes)
        except Exception as exc:
            # Typically the outcome could not be written (disk full): it stays pending in
            # the writer and the row stays `submitting`, which a restart resolves by label.
            if self._throttle.due("work"):
                log.error(
                    "%s: submission outcome not recorded yet (%s); %d outcome(s) pending",
                    claim.scan.path,
                    exc,
                    self._outcomes.pending(),
                )
        finally:
            with self._cond:
                self._inflight -= 1
                if outcome is not None:
                    self._count(outcome)
                self._dirty = True
                # Wake the dispatcher only when it can act (see _loop): once per half
                # pipeline rather than once per run.
                capacity = self.max_inflight if self._warm else 1
                free = capacity - self._inflight
                if free > 0 and (free >= capacity // 2 or self._inflight == 0):
                    self._cond.notify()

    def _flush_outcomes(self) -> None:
        """Write outcomes a failed commit left pending (space came back, say)."""
        if not self._outcomes.pending():
            return
        try:
            self._outcomes.flush()
        except Exception as exc:
            if self._throttle.due("flush"):
                log.error("%d outcome(s) still not recorded (%s)", self._outcomes.pending(), exc)
        else:
            if self._throttle.clear("flush") or self._throttle.clear("work"):
                log.warning("pending submission outcomes recorded")

    def _committed(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """Retries just became claimable rows: the dispatcher looks again."""
        if any(fields.get("state") == "detected" for _, fields in batch):
            self.wake()

    def _count(self, outcome: Outcome) -> None:
        self._warm = True
        if outcome.state == "submitted":
            self.stats.submitted += 1
            self.stats.adopted += int(outcome.adopted)
        elif outcome.state == "failed":
            self.stats.failed += 1
        elif outcome.state == "detected":
            self.stats.retries += 1
        if outcome.pause_until is not None:
            # pause_until is wall-clock; convert for the monotonic loop.
            pause = self.clock() + max(0.0, outcome.pause_until - time.time())
            self._pause_until = max(self._pause_until, pause)
