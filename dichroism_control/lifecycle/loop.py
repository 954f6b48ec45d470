"""The lifecycle loop: follow the runs we started, archive quiet groups, schedule prunes.

One pass (`Lifecycle.run_once`) does, in order:

1. **Follow runs.** ONE paginated listing of the new_file, archive and prune flows' runs
   (`follow.RunFollower`), matched to what each step waits for. new_file and archive runs
   are matched by run id; prune runs are started by Timers, so they are matched by their
   deterministic label. Final runs advance the ledger; failed ones are retried up to
   `lifecycle.max_attempts` (`transfers`, `archive`, `prune`).
2. **Archive** (`archive.ArchiveGroups`). Transferred scans are grouped by (beamline,
   proposal directory); a group gets one `archive` run once its directory has been quiet for
   `archive_quiet_seconds`, at most `max_archive_runs_in_flight` at a time, at most
   `ARCHIVE_MAX_FILES` files per run.
3. **Prune** (`prune.PruneBatches`). Confirmed copies (new_file SUCCEEDED -> compute-dtn
   prune; archive SUCCEEDED -> CFS prune) are batched per (beamline, location, day) into one
   Globus Timer each.
4. **Flight check** (`flight.FlightChecks`). One recurring Timer per beamline, its canary
   kept present, the verdict of each run it starts recorded for health.

A file lock makes passes of several processes (`watch` and `lifecycle --once`) take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from dichroism_control.backend import Backend
from dichroism_control.config import Config
from dichroism_control.deploy_state import Deployment
from dichroism_control.ledger import Ledger
from dichroism_control.lifecycle.archive import ArchiveGroups
from dichroism_control.lifecycle.archive_runs import ArchiveRuns
from dichroism_control.lifecycle.flight import FlightChecks
from dichroism_control.lifecycle.follow import RunFollower
from dichroism_control.lifecycle.prune import PruneBatches
from dichroism_control.lifecycle.transfers import NewFileRuns

FLOWS = ("new_file", "archive", "prune")


class Lifecycle:
    """Runs the steps in order, one pass at a time across processes."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        backend: Backend,
        deployment: Deployment,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.deployment = deployment
        self.settings = config.lifecycle
        handles = (config, ledger, backend, deployment)
        self.follower = RunFollower(backend)
        self.transfers = NewFileRuns(*handles, clock=clock)
        self.archives = ArchiveGroups(*handles, clock=clock)
        self.archive_runs = ArchiveRuns(*handles, clock=clock)
        self.prunes = PruneBatches(*handles, clock=clock)
        self.flights = FlightChecks(*handles, clock=clock)

    def run_once(self) -> dict[str, Any]:
        """One pass; returns counters of what happened (and `errors`, if any)."""
        flows = {name: self.deployment.flow_id(name) for name in FLOWS}
        if "flight_check" in self.deployment.flows:
            # Optional: a deployment from before the flight check still runs its pipeline.
            flows["flight_check"] = self.deployment.flows["flight_check"]
        summary: Counter[str] = Counter()
        errors: list[str] = []
        with self._exclusive() as acquired:
            if not acquired:
                return {"skipped": "another lifecycle pass holds the lock"}
            awaited = self.transfers.awaited() + self.archive_runs.awaited()
            awaited += self.prunes.awaited() + self.flights.awaited(flows)
            listing = self.follower.list(flows, awaited, summary, errors)
            self.transfers.follow(listing, summary)
            self.archive_runs.follow(listing, summary)
            self.prunes.follow(listing, summary)
            self.flights.follow(listing, summary)
            self.archive_runs.resolve_submitting(listing, summary)
            self.archives.form(summary)
            self.archives.submit(flows, summary, errors)
            pending = self.prunes.resolve_scheduling(summary, errors)
            pending += self.prunes.form(summary)
            self.prunes.schedule(flows, pending, summary, errors)
            self.flights.ensure(flows, summary, errors)
        result: dict[str, Any] = dict(sorted(summary.items()))
        if errors:
            result["errors"] = errors
        return result

    def run_forever(
        self,
        should_stop: Callable[[float], bool],
        on_pass: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Pass every `poll_seconds` until `should_stop(timeout)` (which waits) returns True.

        Transient backend trouble is already absorbed inside a pass; anything else
        (a config error: flows not deployed) propagates to the caller.
        """
        while True:
            summary = self.run_once()
            if on_pass is not None:
                on_pass(summary)
            if should_stop(self.settings.poll_seconds):
                return

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """A process-level lock next to the ledger: one pass at a time across processes."""
        path = self.ledger.path.parent / "lifecycle.lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
