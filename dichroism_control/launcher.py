"""One `new_file` run per scan, exactly once: input, label, tags, retries, crash recovery.

The exactly-once protocol (the ledger is the queue and the journal):

1. claim     `detected -> submitting`, `submit_started_at` set and *committed* before any
             HTTP call (one transaction for a batch of scans).
2. send      `run_flow` with a deterministic label `"<BL> <rel>"` and tags
             `["dichroism", <BL>, "new_file"]`; no ledger lock is held meanwhile.
3. record    `submitting -> submitted` with the run id.

A crash between 2 and 3 leaves the row in `submitting`. Such a row (and a row whose last
attempt ended in an error that may have come *after* the service started the run: a 5xx
other than 503, a dropped connection) keeps `submit_started_at`; before it is ever sent
again, the flow's runs are paged newest first and matched on label and tags, stopping at
runs older than `submit_started_at - LOOKUP_MARGIN_SECONDS`. A match is adopted; only when
there is none is the scan sent again. Errors that prove nothing was started (429, 503,
400, 403, local input validation) clear `submit_started_at`.

Only one process claims at a time (`SubmitLock`, an flock beside the ledger), so a row in
`submitting` seen by the lock holder at start-up is always a leftover of a dead process.

Step 3 may be deferred and grouped (`OutcomeWriter`, used by the watcher's workers): the
outcomes of several attempts are committed in one transaction. Until then the row stays in
`submitting`, which is exactly the state a crash at that point is already recovered from.
Step 1 is never deferred.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import RunRequest, run_start_time
from dichroism_control.definitions import input_validator
from dichroism_control.errors import (
    BackendError,
    DichroismError,
    PermanentBackendError,
    TransientBackendError,
)
from dichroism_control.ledger import Scan
from dichroism_control.routing import Route, RouteError, route

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.config import Config
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)

FLOW_NAME = "new_file"
LABEL_LIMIT = 128
# Runs started this long before the pending submission are still searched: covers clock
# skew between this host and Globus, and time a claimed scan waited for a worker.
LOOKUP_MARGIN_SECONDS = 600.0
# These answers come from in front of the service (rate limiter, load balancer with no
# healthy target): the run was certainly not started, so no lookup is needed before a retry.
NOT_STARTED_STATUSES = frozenset({429, 503})
_SQL_CHUNK = 500

# Where an attempt's outcome goes: (scan id, columns to set). Default: its own transaction.
Record = Callable[[int, dict[str, Any]], None]


def run_label(beamline: str, rel: str, *, limit: int = LABEL_LIMIT) -> str:
    """`"<BL> <rel>"`, shortened in the middle when longer than `limit`.

    The cut carries a digest of the full path so two long names that differ only in the
    middle never share a label: crash recovery identifies runs by it.
    """
    full = f"{beamline} {rel}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    middle = f"…{digest}…"
    keep = limit - len(middle)
    head = keep // 2
    return full[:head] + middle + full[len(full) - (keep - head) :]


def run_tags(beamline: str) -> list[str]:
    return ["dichroism", beamline, FLOW_NAME]


@dataclass(frozen=True)
class Claim:
    """A scan this process has moved to `submitting` and is about to send."""

    scan: Scan
    label: str
    # Set when an earlier attempt may have started a run: look it up before sending.
    uncertain: bool
    since: float


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


class SubmitLock:
    """An exclusive flock beside the ledger: one claiming process per state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def submit_lock(config: Config) -> SubmitLock:
    return SubmitLock(config.state_path / "submit.lock")


class Launcher:
    """Builds, validates and sends `new_file` runs; records every step in the ledger."""

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
        self.flow_id = deployment.flow_id(FLOW_NAME)
        self.function_id = deployment.function_id("scicat_ingest")
        self.clock = clock
        self.rng = rng
        self.lookup_margin = lookup_margin
        self._validator = input_validator(config, FLOW_NAME)
        self._metadata = {
            name: {
                "instrument_id": b.scicat.instrument_id,
                "owner_group": b.scicat.owner_group,
                "access_groups": list(b.scicat.access_groups),
                "owner": b.scicat.owner,
                "contact_email": b.scicat.contact_email,
                "principal_investigator": b.scicat.principal_investigator,
            }
            for name, b in config.beamlines.items()
        }

    # -- the request ---------------------------------------------------------------------
    def request_for(self, scan_route: Route, size: int) -> RunRequest:
        beamline = scan_route.beamline
        body = {
            "input": {
                "beamline": beamline,
                "source": {
                    "collection_id": scan_route.source_collection,
                    "path": scan_route.source_path,
                    "size": size,
                },
                "destination": {
                    "collection_id": scan_route.destination_collection,
                    "path": scan_route.destination_path,
                },
                "scicat": {
                    "endpoint_id": self.config.globus.compute_endpoints.scicat,
                    "function_id": self.function_id,
                    "proposal": scan_route.proposal,
                    "metadata": dict(self._metadata[beamline]),
                },
            }
        }
        roles = self.config.globus.roles
        return RunRequest(
            flow_id=self.flow_id,
            body=body,
            label=run_label(beamline, scan_route.rel),
            tags=run_tags(beamline),
            run_monitors=list(roles.run_monitors),
            run_managers=list(roles.run_managers),
            notify_on=list(self.config.globus.notifications.status),
        )

    def input_errors(self, request: RunRequest) -> list[str]:
        """What the flow's input_schema would reject, found before anything is sent."""
        errors = []
        for error in self._validator.iter_errors(request.body):
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            errors.append(f"{where}: {error.message}")
        return errors

    # -- detection -----------------------------------------------------------------------
    def route(self, path: str, *, beamline: str | None = None) -> Route:
        scan_route = route(self.config, path, beamline=beamline)
        try:
            scan_route.rel.encode("utf-8")
        except UnicodeEncodeError:
            raise RouteError(f"{path!r}: the file name is not valid UTF-8") from None
        return scan_route

    def detect(self, path: str, *, beamline: str | None = None) -> Scan | None:
        """Route, stat and record one finished scan; None when the ledger already knows it."""
        scan_route = self.route(path, beamline=beamline)
        info = os.stat(scan_route.local_path)
        return self.ledger.add_scan(
            beamline=scan_route.beamline,
            path=scan_route.local_path,
            rel=scan_route.rel,
            size=info.st_size,
            mtime=info.st_mtime,
        )

    def detect_many(self, found: Iterable[tuple[Route, int, float]]) -> int:
        """Record finished scans (route, size, mtime) in one transaction; returns the new count."""
        now = self.clock()
        rows = [
            (r.beamline, r.local_path, r.rel, size, mtime, now, now) for r, size, mtime in found
        ]
        if not rows:
            return 0
        with self.ledger.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO scans (beamline, path, rel, size, mtime, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'detected', ?, ?)",
                rows,
            )
            return conn.total_changes - before

    def unknown_paths(self, paths: list[str]) -> list[str]:
        """The paths the ledger has never recorded (chunked: the ledger may hold millions)."""
        unknown: list[str] = []
        for start in range(0, len(paths), _SQL_CHUNK):
            chunk = paths[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            known = {
                row["path"]
                for row in self.ledger.query(
                    f"SELECT path FROM scans WHERE path IN ({marks})", tuple(chunk)
                )
            }
            unknown.extend(p for p in chunk if p not in known)
        return unknown

    # -- the queue -----------------------------------------------------------------------
    def claim(self, *, limit: int, scan_ids: list[int] | None = None) -> list[Claim]:
        """Move due `detected` scans to `submitting`, committed before anything is sent."""
        now = self.clock()
        with self.ledger.transaction() as conn:
            # IMMEDIATE: a concurrent writer waits rather than failing the snapshot later.
            conn.execute("BEGIN IMMEDIATE")
            if scan_ids is None:
                rows = conn.execute(
                    "SELECT * FROM scans WHERE state = 'detected' AND next_attempt_at <= ?"
                    " ORDER BY next_attempt_at, id LIMIT ?",
                    (now, limit),
                ).fetchall()
            else:
                marks = ",".join("?" * len(scan_ids))
                rows = conn.execute(
                    f"SELECT * FROM scans WHERE state = 'detected' AND id IN ({marks})",
                    tuple(scan_ids),
                ).fetchall()
            claims = []
            updates = []
            for row in rows:
                scan = Scan.from_row(row)
                label = run_label(scan.beamline, scan.rel)
                uncertain = scan.submit_started_at is not None
                since = scan.submit_started_at if scan.submit_started_at is not None else now
                claims.append(Claim(scan, label, uncertain, since))
                updates.append((since, label, now, scan.id))
            conn.executemany(
                "UPDATE scans SET state = 'submitting', submit_started_at = ?, label = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                updates,
            )
        return claims

    def next_due(self) -> float | None:
        """When the earliest queued scan becomes due (None: nothing queued)."""
        rows = self.ledger.query(
            "SELECT MIN(next_attempt_at) AS due FROM scans WHERE state = 'detected'"
        )
        due = rows[0]["due"] if rows else None
        return float(due) if due is not None else None

    def release(self, claim: Claim) -> Outcome:
        """Give a claim back unsent (shutdown): as if it had never been claimed."""
        self.ledger.update_scan(
            claim.scan.id,
            state="detected",
            attempts=claim.scan.attempts,
            submit_started_at=claim.since if claim.uncertain else None,
        )
        return Outcome(claim.scan.id, claim.scan.path, "released")

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
            request = self.request_for(scan_route, scan.size)
            errors = self.input_errors(request)
            if errors:
                return self._failed(
                    claim,
                    "input does not match the new_file input_schema: " + "; ".join(errors),
                    write=write,
                )
            run = self.backend.run_flow(request)
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
            run_label(s.beamline, s.rel): (s.submit_started_at or self.clock(), s.beamline)
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
                run = found.get(run_label(scan.beamline, scan.rel))
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
                if not rows:
                    return outcomes
                now = self.clock()
                ready = [int(r["id"]) for r in rows if r["next_attempt_at"] <= now]
                claims = self.claim(limit=len(ready), scan_ids=ready) if ready else []
                due_at = None if claims else min(float(r["next_attempt_at"]) for r in rows)
            for claim in claims:
                outcomes.append(self.attempt(claim))
            if not claims:
                if due_at is None:
                    return outcomes
                sleep(max(0.0, due_at - self.clock()))


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
