"""`Launcher`: claims queued scans, sends one new_file run each, records the outcome."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dichroism_control.errors import (
    AuthRequiredError,
    BackendError,
    ConfigError,
    DichroismError,
    PermanentBackendError,
    TransientBackendError,
)
from dichroism_control.identity import IdentityError, identify
from dichroism_control.launcher.outcomes import Outcome, Record
from dichroism_control.launcher.queue import Claim, SubmitQueue
from dichroism_control.launcher.recovery import LOOKUP_MARGIN_SECONDS, Recovery
from dichroism_control.launcher.requests import RequestBuilder
from dichroism_control.ledger import Scan
from dichroism_control.routing import Route, RouteError, route
from dichroism_control.versions import Seen
from dichroism_control.versions import record as record_versions

if TYPE_CHECKING:
    from dichroism_control.backend import Backend, RunRequest
    from dichroism_control.config import Config
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)

# Scans whose new_file run is started, or being started, and not yet seen finished.
# These answers come from in front of the service (rate limiter, load balancer with no
# healthy target): the run was certainly not started, so no lookup is needed before a retry.
NOT_STARTED_STATUSES = frozenset({429, 503})


class Launcher:
    """Claims, validates and sends `new_file` runs; records every step in the ledger."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        backend: Backend,
        deployment: Deployment,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        lookup_margin: float = LOOKUP_MARGIN_SECONDS,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.backend = backend
        self.clock = clock
        self.rng = rng
        self.requests = RequestBuilder(config, deployment)
        self.flow_id = self.requests.flow_id
        self.queue = SubmitQueue(config, ledger, clock=clock)
        self.recovery = Recovery(
            ledger, backend, self.flow_id, clock=clock, lookup_margin=lookup_margin
        )
        # One log line per auth problem, not one per scan of a claimed batch.
        self._auth_logged: tuple[str, float] = ("", 0.0)
        self._auth_lock = threading.Lock()
        # Metrics hook: (beamline, seconds from the first attempt to the run id).
        self.on_submitted: Callable[[str, float], None] | None = None

    def request_for(self, scan_route: Route, scan: Scan) -> RunRequest:
        return self.requests.request_for(scan_route, scan, now=self.clock())

    def find_runs(self, pending: dict[str, tuple[float, str]]) -> dict[str, dict[str, Any]]:
        return self.recovery.find_runs(pending)

    def recover(self) -> dict[str, int]:
        """Settle every scan whose last submission has an unknown outcome (at start-up,
        holding the SubmitLock): adopt the run if it exists, else queue the scan again."""
        return self.recovery.recover()

    # -- detection (the `submit` command's path) -----------------------------------------
    def route(self, path: str, *, beamline: str | None = None) -> Route:
        return route(self.config, path, beamline=beamline)

    def detect(self, path: str, *, beamline: str | None = None) -> Scan | None:
        """Route, identify (hash) and record one finished scan, as the watcher does; the new
        version, or None when the ledger already holds the file as it is now."""
        scan_route = self.route(path, beamline=beamline)
        try:
            identity = identify(scan_route.local_path, real_path=scan_route.real_path)
        except IdentityError as exc:
            raise ConfigError(str(exc)) from None
        seen = Seen(scan_route.beamline, scan_route.local_path, scan_route.rel, identity)
        result = record_versions(self.ledger, [seen], now=self.clock())
        if not result.new_ids:
            return None
        rows = self.ledger.query("SELECT * FROM scans WHERE id = ?", (result.new_ids[0],))
        return Scan.from_row(rows[0])

    # -- the queue (launcher/queue.py) ---------------------------------------------------
    def in_flight(self) -> int:
        return self.queue.in_flight()

    def free_slots(self) -> int:
        return self.queue.free_slots()

    def claim(self, *, limit: int, scan_ids: list[int] | None = None) -> list[Claim]:
        return self.queue.claim(limit=limit, scan_ids=scan_ids)

    def next_due(self) -> float | None:
        return self.queue.next_due()

    def release(self, claim: Claim) -> Outcome:
        return self.queue.release(claim)

    # -- one attempt ---------------------------------------------------------------------
    def attempt(self, claim: Claim, *, record: Record | None = None) -> Outcome:
        """Look up (when uncertain), validate and send one claimed scan; record the outcome
        (through `record` when given, e.g. an `OutcomeWriter`; else in its own transaction).

        Never raises for a per-scan problem: one bad scan must not stop the others.
        """
        write = record if record is not None else self._update
        scan = claim.scan
        try:
            if claim.uncertain:
                found = self.find_runs({claim.label: (claim.since, scan.beamline)})
                if claim.label in found:
                    return self._submitted(claim, found[claim.label], adopted=True, write=write)
            try:
                scan_route = self.route(scan.path, beamline=scan.beamline)
            except RouteError as exc:
                return self._failed(claim, str(exc), write=write)
            request = self.requests.request_for(scan_route, scan, now=self.clock())
            errors = self.requests.input_errors(request)
            if errors:
                return self._failed(
                    claim,
                    "input does not match the new_file input_schema: " + "; ".join(errors),
                    write=write,
                )
            run = self.backend.run_flow(request)
        except AuthRequiredError as exc:
            return self._needs_person(claim, exc, write=write)
        except TransientBackendError as exc:
            # After a lookup failed, or an error the run may have outlived: stay uncertain.
            started = claim.uncertain or exc.http_status not in NOT_STARTED_STATUSES
            return self._retry(claim, exc, uncertain=started, write=write)
        except PermanentBackendError as exc:
            return self._failed(claim, str(exc), write=write)
        except DichroismError as exc:
            return self._failed(claim, str(exc), write=write)
        except Exception as exc:
            # A bug or an unwrapped library error: keep the scan queued and uncertain.
            log.exception("%s: unexpected error while submitting", scan.path)
            error = BackendError(f"{type(exc).__name__}: {exc}")
            return self._retry(claim, error, uncertain=True, write=write)
        return self._submitted(claim, run, adopted=False, write=write)

    def _update(self, scan_id: int, fields: dict[str, Any]) -> None:
        self.ledger.update_scan(scan_id, **fields)

    def _submitted(
        self, claim: Claim, run: dict[str, Any], *, adopted: bool, write: Record
    ) -> Outcome:
        run_id = str(run["run_id"])
        write(
            claim.scan.id,
            {
                "state": "submitted",
                "run_id": run_id,
                "label": claim.label,
                "last_error": None,
                "failed_step": None,
                "next_attempt_at": 0,
            },
        )
        if self.on_submitted is not None:
            self.on_submitted(claim.scan.beamline, self.clock() - claim.since)
        if adopted:
            log.warning(
                "%s: adopted run %s started before an interruption", claim.scan.path, run_id
            )
        else:
            log.info("%s: started run %s", claim.scan.path, run_id)
        return Outcome(claim.scan.id, claim.scan.path, "submitted", run_id=run_id, adopted=adopted)

    def _failed(self, claim: Claim, reason: str, *, write: Record) -> Outcome:
        write(
            claim.scan.id,
            {
                "state": "failed",
                "failed_step": "submit",
                "last_error": reason,
                "submit_started_at": None,
            },
        )
        log.error("%s: submission FAILED (not retried): %s", claim.scan.path, reason)
        return Outcome(claim.scan.id, claim.scan.path, "failed", error=reason)

    def _needs_person(self, claim: Claim, exc: AuthRequiredError, *, write: Record) -> Outcome:
        """Globus wants a login or a consent: give the claim back as if never made (the
        scan is fine), and pause every claim for `backoff_max_seconds`; the error line names
        the command to run. Never a prompt: the watcher has no one at its terminal."""
        now = self.clock()
        resume = now + self.config.submit.backoff_max_seconds
        reason = str(exc)
        write(
            claim.scan.id,
            {
                "state": "detected",
                "attempts": claim.scan.attempts,
                "next_attempt_at": resume,
                "last_error": reason,
                "submit_started_at": claim.since if claim.uncertain else None,
            },
        )
        with self._auth_lock:
            last, at = self._auth_logged
            quiet = last == reason and now - at < self.config.submit.backoff_max_seconds
            if not quiet:
                self._auth_logged = (reason, now)
        if not quiet:
            log.error("submissions paused, a person is needed: %s", reason)
        return Outcome(
            claim.scan.id,
            claim.scan.path,
            "detected",
            error=reason,
            next_attempt_at=resume,
            pause_until=resume,
            needs_person=True,
        )

    def _retry(self, claim: Claim, exc: BackendError, *, uncertain: bool, write: Record) -> Outcome:
        settings = self.config.submit
        attempts = claim.scan.attempts + 1
        reason = str(exc)
        retry_after = exc.retry_after if isinstance(exc, TransientBackendError) else None
        if attempts >= settings.max_attempts:
            note = " (a run may exist: check `dichroism runs list`)" if uncertain else ""
            write(
                claim.scan.id,
                {
                    "state": "failed",
                    "failed_step": "submit",
                    "last_error": f"gave up after {attempts} attempts: {reason}{note}",
                    "submit_started_at": claim.since if uncertain else None,
                },
            )
            log.error(
                "%s: submission FAILED after %d attempts: %s", claim.scan.path, attempts, reason
            )
            return Outcome(claim.scan.id, claim.scan.path, "failed", error=reason)
        ceiling = min(
            settings.backoff_max_seconds, settings.backoff_base_seconds * 2 ** (attempts - 1)
        )
        delay = self.rng() * ceiling  # full jitter: retries of a burst spread out
        if retry_after is not None:
            delay = max(delay, retry_after)
        delay = min(delay, settings.backoff_max_seconds)
        now = self.clock()
        write(
            claim.scan.id,
            {
                "state": "detected",
                "next_attempt_at": now + delay,
                "last_error": reason,
                "submit_started_at": claim.since if uncertain else None,
            },
        )
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.1f s",
            claim.scan.path,
            attempts,
            reason,
            delay,
        )
        pause = now + min(retry_after, settings.backoff_max_seconds) if retry_after else None
        return Outcome(
            claim.scan.id,
            claim.scan.path,
            "detected",
            error=reason,
            next_attempt_at=now + delay,
            pause_until=pause,
        )

    # -- finding runs started before a crash ---------------------------------------------
    def drain(
        self,
        *,
        scan_ids: list[int] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        batch: int = 64,
    ) -> list[Outcome]:
        """Send queued scans (all, or only `scan_ids`) until none is left, sleeping until
        retries are due. Returns the outcome of every attempt, in order."""
        outcomes: list[Outcome] = []
        while True:
            if scan_ids is None:
                claims = self.claim(limit=batch)
                due_at = None if claims else self.next_due()
            else:
                marks = ",".join("?" * len(scan_ids))
                rows = self.ledger.query(
                    f"SELECT id, next_attempt_at FROM scans WHERE state = 'detected'"
                    f" AND id IN ({marks})",
                    tuple(scan_ids),
                )
                if not rows or self.free_slots() <= 0:
                    # Nothing left, or every slot taken: the scans wait in the ledger for
                    # the watcher, which sends them as the lifecycle sees runs finish.
                    return outcomes
                now = self.clock()
                ready = [int(r["id"]) for r in rows if r["next_attempt_at"] <= now]
                claims = self.claim(limit=len(ready), scan_ids=ready) if ready else []
                due_at = None if claims else min(float(r["next_attempt_at"]) for r in rows)
            for index, claim in enumerate(claims):
                outcome = self.attempt(claim)
                outcomes.append(outcome)
                if outcome.needs_person:
                    # Waiting would not help: a person must act first. Every scan stays
                    # queued, the unsent claims given back as if never made.
                    for unsent in claims[index + 1 :]:
                        self.release(unsent)
                    raise AuthRequiredError(outcome.error or "Globus login needed")
            if not claims:
                if due_at is None or self.free_slots() <= 0:
                    return outcomes
                sleep(max(0.0, due_at - self.clock()))
