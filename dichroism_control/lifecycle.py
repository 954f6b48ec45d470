"""The lifecycle loop: follow the runs we started, archive quiet groups, schedule prunes.

One pass (`Lifecycle.run_once`) does, in order:

1. **Follow runs.** ONE paginated listing of the new_file, archive and prune flows' runs,
   newest first, stopped as soon as every run we wait for has been seen or the listing is
   older than the oldest of them. new_file and archive runs are matched by run id; prune runs
   are started by Timers, so they are matched by their deterministic label. Final runs
   advance the ledger; failed ones are retried up to `lifecycle.max_attempts`.
2. **Archive.** Transferred scans are grouped by (beamline, proposal directory); a group gets
   one `archive` run once its directory has been quiet for `archive_quiet_seconds`, at most
   `max_archive_runs_in_flight` at a time, at most 1000 files per run.
3. **Prune.** Confirmed copies (new_file SUCCEEDED -> compute-dtn prune; archive SUCCEEDED ->
   CFS prune) are batched per (beamline, location, day) into one Globus Timer each.

Exactly-once, for archive runs and prune timers alike: the ledger row is committed in a
"submitting"/"scheduling" state *before* the remote call, and a row found in that state later
(a crash, a timeout) is first looked up remotely — the run by its label, the timer by its
name — and only created again when the lookup proves it does not exist. A file lock makes
passes of several processes (`watch` and `lifecycle --once`) take turns.

Batch closing rule (prune timers carry a body fixed at creation, so a batch must be complete
before its timer exists): a day's batch closes once that UTC day of confirmation has ended,
and its timer fires at (newest member's confirmation + retention), so no file is pruned before
its own retention has passed and there is at most one timer per (beamline, location, day).
With retention 0 or `retention_unit: seconds` waiting for the day's end would defeat the
point, so there a batch closes once no scan has joined it for `prune_batch_quiet_seconds`
(several batches a day are then possible, each labelled with its closing time).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

from dichroism_control.backend import (
    FINAL_STATUSES,
    Backend,
    RunRequest,
    run_start_time,
)
from dichroism_control.config import Beamline, Config
from dichroism_control.definitions import input_validator
from dichroism_control.deploy_state import Deployment
from dichroism_control.errors import (
    BackendError,
    PermanentBackendError,
    TransientBackendError,
)
from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)

ARCHIVE_MAX_FILES = 1000  # archive input_schema: files.maxItems
PRUNE_MAX_FILES = 2000  # prune input_schema: target.files.maxItems
# Local clock vs the Flows service's start_time: how far back past "the oldest thing we
# wait for" the run listing keeps reading before it concludes a run does not exist.
CLOCK_SKEW_SECONDS = 900.0
UNSORTED_PROPOSAL = "_unsorted"
_REASON_MAX = 1000
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
IN_FLIGHT_SCAN_STATES = ("detected", "submitting", "submitted")


@dataclass(frozen=True)
class Location:
    """Where a prune deletes, and the scan columns that track it."""

    name: str
    confirmed: str  # when the copy this prune relies on was confirmed
    batch: str
    pruned: str


LOCATIONS: dict[str, Location] = {
    "compute_dtn": Location("compute_dtn", "transferred_at", "dtn_prune_batch", "dtn_pruned_at"),
    "cfs": Location("cfs", "archived_at", "cfs_prune_batch", "cfs_pruned_at"),
}


class _Conflict(Exception):
    """Rows changed under us (another writer); the transaction is rolled back."""


@dataclass
class _Listing:
    """What one pass learnt from the run listing."""

    complete: bool = False
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    archive_by_label: dict[str, dict[str, Any]] = field(default_factory=dict)
    prune_by_label: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: int = 0


# -- small helpers -------------------------------------------------------------------------
def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _day(ts: float) -> str:
    return _utc(ts).date().isoformat()


def _shorten(text: str, limit: int = 128) -> str:
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2 :]


def failure_reason(run: dict[str, Any]) -> str:
    """A one-line reason from a finished run document (details.output.error, code, description)."""
    details = run.get("details") or {}
    parts: list[str] = []
    output = details.get("output") if isinstance(details, dict) else None
    error = output.get("error") if isinstance(output, dict) else None
    if isinstance(error, dict):
        name = error.get("Error") or error.get("error") or error.get("code")
        cause = error.get("Cause") or error.get("cause") or error.get("description")
        if isinstance(cause, dict | list):
            cause = json.dumps(cause, sort_keys=True)
        text = ": ".join(str(p) for p in (name, cause) if p)
        if text:
            parts.append(text)
    elif error:
        parts.append(str(error))
    if isinstance(details, dict):
        code, description = details.get("code"), details.get("description")
        summary = ": ".join(str(p) for p in (code, description) if p)
        if summary:
            parts.append(summary if not parts else f"({summary})")
    reason = " ".join(parts) or f"run {run.get('status', 'FAILED')}"
    return reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 1] + "…"


def proposal_directory(settings: Beamline, rel: str) -> tuple[str, str]:
    """(directory, proposal) of a scan: the proposal level of `rel`, or the configured default.

    Files above the proposal level share the directory "" and the default proposal
    (`scicat.default_proposal`, else `_unsorted`).
    """
    depth = settings.scicat.proposal_depth
    directories = PurePosixPath(rel).parts[:-1]
    if depth and len(directories) >= depth:
        return "/".join(directories[:depth]), directories[depth - 1]
    return "", settings.scicat.default_proposal or UNSORTED_PROPOSAL


def archive_name(beamline: str, proposal: str, rels: list[str], newest: float) -> str:
    """`{proposal}_{YYYY-MM-DD}_{hash}`: the same members always give the same name."""
    safe = _NAME_UNSAFE.sub("_", proposal)[:60] or UNSORTED_PROPOSAL
    digest = hashlib.sha256("\n".join([beamline, *sorted(rels)]).encode()).hexdigest()[:10]
    return f"{safe}_{_day(newest)}_{digest}"


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the loop ------------------------------------------------------------------------------
class Lifecycle:
    """Follows runs, starts archive runs and schedules prune timers; see the module docstring."""

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
        self.backend = backend
        self.deployment = deployment
        self.clock = clock
        self.settings = config.lifecycle
        self._validators: dict[str, Any] = {}

    # -- public ----------------------------------------------------------------------------
    def run_once(self) -> dict[str, Any]:
        """One pass; returns counters of what happened (and `errors`, if any)."""
        flows = {name: self.deployment.flow_id(name) for name in ("new_file", "archive", "prune")}
        summary: Counter[str] = Counter()
        errors: list[str] = []
        with self._exclusive() as acquired:
            if not acquired:
                return {"skipped": "another lifecycle pass holds the lock"}
            listing = self._follow_runs(flows, summary, errors)
            self._resolve_submitting_groups(listing, summary)
            self._form_archive_groups(summary)
            self._submit_archive_groups(flows, summary, errors)
            pending = self._resolve_scheduling_prunes(listing, summary, errors)
            pending += self._form_prune_batches(summary)
            self._schedule_prunes(flows, pending, summary, errors)
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

    # -- plumbing --------------------------------------------------------------------------
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

    def _validate(self, flow: str, body: dict[str, Any]) -> str | None:
        """The first schema error of a run body against the deployed (specialised) schema."""
        validator = self._validators.get(flow)
        if validator is None:
            validator = self._validators[flow] = input_validator(self.config, flow)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top)"
        return f"{flow} input invalid at {where}: {first.message[:300]}"

    def _run_request(
        self, flow_id: str, body: dict[str, Any], label: str, tags: list[str]
    ) -> RunRequest:
        roles = self.config.globus.roles
        return RunRequest(
            flow_id=flow_id,
            body=body,
            label=label,
            tags=tags,
            run_monitors=list(roles.run_monitors),
            run_managers=list(roles.run_managers),
            notify_on=list(self.config.globus.notifications.status),
        )

    def _record_failure(
        self, conn: sqlite3.Connection, run: dict[str, Any], flow: str, subject: str, reason: str
    ) -> int | None:
        """Record a failed run once; the subject's failure count, or None if already known."""
        cursor = conn.execute(
            "INSERT OR IGNORE INTO run_failures (run_id, flow, subject, status, reason,"
            " failed_at) VALUES (?, ?, ?, ?, ?, ?)",
            (run["run_id"], flow, subject, run.get("status", "FAILED"), reason, self.clock()),
        )
        if cursor.rowcount == 0:
            return None
        row = conn.execute(
            "SELECT COUNT(*) FROM run_failures WHERE subject = ?", (subject,)
        ).fetchone()
        return int(row[0])

    # -- 1. follow runs --------------------------------------------------------------------
    def _follow_runs(
        self, flows: dict[str, str], summary: Counter[str], errors: list[str]
    ) -> _Listing:
        now = self.clock()
        scans = {
            row["run_id"]: row
            for row in self.ledger.query(
                "SELECT id, run_id, COALESCE(submit_started_at, created_at) AS since"
                " FROM scans WHERE state = 'submitted' AND run_id IS NOT NULL"
            )
        }
        groups = {
            row["run_id"]: row
            for row in self.ledger.query(
                "SELECT * FROM archive_groups WHERE state = 'submitted' AND run_id IS NOT NULL"
            )
        }
        submitting = self.ledger.query("SELECT * FROM archive_groups WHERE state = 'submitting'")
        archive_labels = {row["label"] for row in submitting}
        # A prune run cannot exist before its timer fires: only batches due by now are looked
        # for, so a timer 180 days out does not make every pass read the whole history.
        prunes = self.ledger.query(
            "SELECT batch, label, run_at, created_at FROM prune_timers"
            " WHERE state IN ('scheduling', 'scheduled') AND run_at <= ?",
            (now + CLOCK_SKEW_SECONDS,),
        )
        prune_labels = {row["label"] for row in prunes}
        listing = _Listing()
        wanted = len(scans) + len(groups) + len(archive_labels) + len(prune_labels)
        if not wanted:
            listing.complete = True
            return listing
        # Runs we know failed before must not be taken for a retry that carries their label.
        failed_ids = {
            row["run_id"]
            for row in self.ledger.query("SELECT run_id FROM run_failures WHERE flow = 'archive'")
        }
        starts = [float(r["since"]) for r in scans.values()]
        starts += [float(r["created_at"]) for r in groups.values()]
        starts += [float(r["created_at"]) for r in submitting]
        starts += [min(float(r["run_at"]), float(r["created_at"])) for r in prunes]
        oldest = min(starts) - CLOCK_SKEW_SECONDS
        flow_of = {flow_id: name for name, flow_id in flows.items()}
        remaining = wanted
        try:
            for run in self.backend.iter_runs(flow_ids=list(flows.values())):
                listing.seen += 1
                run_id = str(run.get("run_id") or "")
                kind = flow_of.get(str(run.get("flow_id") or ""), "")
                label = str(run.get("label") or "")
                if run_id in scans or run_id in groups:
                    if run_id not in listing.by_id:
                        listing.by_id[run_id] = run
                        remaining -= 1
                elif (
                    kind == "archive"
                    and label in archive_labels
                    and label not in listing.archive_by_label
                    and run_id not in failed_ids
                ):
                    listing.archive_by_label[label] = run
                    remaining -= 1
                elif (
                    kind == "prune"
                    and label in prune_labels
                    and label not in listing.prune_by_label
                ):
                    listing.prune_by_label[label] = run
                    remaining -= 1
                if remaining <= 0:
                    break
                started = run_start_time(run)
                if started is not None and started < oldest:
                    break
            listing.complete = True
        except BackendError as exc:
            # What was seen is still acted on; conclusions of absence wait for a full listing.
            errors.append(f"listing runs: {exc}")
            log.warning("listing runs failed (will retry next pass): %s", exc)
        summary["runs_listed"] += listing.seen
        for run_id, run in listing.by_id.items():
            if run.get("status") not in FINAL_STATUSES:
                continue
            if run_id in scans:
                self._finish_new_file(scans[run_id]["id"], run, summary)
            else:
                self._finish_archive(groups[run_id]["id"], run, summary)
        for label, run in listing.prune_by_label.items():
            self._follow_prune(label, run, summary)
        return listing

    def _finish_new_file(self, scan_id: int, run: dict[str, Any], summary: Counter[str]) -> None:
        now = self.clock()
        run_id = run["run_id"]
        if run["status"] == "SUCCEEDED":
            with self.ledger.transaction() as conn:
                cursor = conn.execute(
                    "UPDATE scans SET state = 'transferred', transferred_at = ?, last_error = NULL,"
                    " failed_step = NULL, updated_at = ? WHERE id = ? AND state = 'submitted'"
                    " AND run_id = ?",
                    (now, now, scan_id, run_id),
                )
            summary["transferred"] += cursor.rowcount
            return
        reason = failure_reason(run)
        with self.ledger.transaction() as conn:
            failures = self._record_failure(conn, run, "new_file", f"scan:{scan_id}", reason)
            if failures is None:
                # A run we already counted, yet the scan points at it again: the launcher's
                # crash recovery adopted the old run by its (reused) label. Queue it again
                # without counting a second failure.
                conn.execute(
                    "UPDATE scans SET state = 'detected', run_id = NULL,"
                    " submit_started_at = NULL, attempts = 0, next_attempt_at = ?,"
                    " updated_at = ? WHERE id = ? AND state = 'submitted' AND run_id = ?",
                    (now, now, scan_id, run_id),
                )
                return
            if failures < self.settings.max_attempts:
                # Back into the launcher's queue (the ledger is the queue): the launcher
                # starts the new run through its own exactly-once path.
                conn.execute(
                    "UPDATE scans SET state = 'detected', run_id = NULL, submit_started_at = NULL,"
                    " attempts = 0, next_attempt_at = ?, last_error = ?, updated_at = ?"
                    " WHERE id = ? AND state = 'submitted' AND run_id = ?",
                    (now, f"attempt {failures} failed: {reason}", now, scan_id, run_id),
                )
                summary["new_file_retried"] += 1
                log.warning(
                    "scan %s: new_file run %s failed (%s); retrying", scan_id, run_id, reason
                )
                return
            why = f"after {failures} attempt(s): {reason}"
            conn.execute(
                "UPDATE scans SET state = 'failed', failed_step = 'new_file', last_error = ?,"
                " attempts = ?, updated_at = ? WHERE id = ? AND state = 'submitted' AND run_id = ?",
                (why, failures, now, scan_id, run_id),
            )
        summary["new_file_failed"] += 1
        log.error("scan %s: new_file failed %s", scan_id, why)

    def _finish_archive(self, group_id: int, run: dict[str, Any], summary: Counter[str]) -> None:
        now = self.clock()
        run_id = run["run_id"]
        if run["status"] == "SUCCEEDED":
            with self.ledger.transaction() as conn:
                cursor = conn.execute(
                    "UPDATE archive_groups SET state = 'succeeded', last_error = NULL,"
                    " updated_at = ? WHERE id = ? AND run_id = ? AND state = 'submitted'",
                    (now, group_id, run_id),
                )
                if cursor.rowcount == 0:
                    return
                cursor = conn.execute(
                    "UPDATE scans SET state = 'archived', archived_at = ?, updated_at = ?"
                    " WHERE archive_group_id = ? AND state = 'archive_submitted'",
                    (now, now, group_id),
                )
            summary["archive_succeeded"] += 1
            summary["archived"] += cursor.rowcount
            return
        reason = failure_reason(run)
        with self.ledger.transaction() as conn:
            failures = self._record_failure(conn, run, "archive", f"group:{group_id}", reason)
            if failures is None:
                return
            row = conn.execute(
                "SELECT attempts FROM archive_groups WHERE id = ?", (group_id,)
            ).fetchone()
            if max(failures, int(row["attempts"])) < self.settings.max_attempts:
                conn.execute(
                    "UPDATE archive_groups SET state = 'open', run_id = NULL, last_error = ?,"
                    " updated_at = ? WHERE id = ? AND run_id = ?",
                    (f"attempt {failures} failed: {reason}", now, group_id, run_id),
                )
                summary["archive_retried"] += 1
                return
            self._fail_group(conn, group_id, f"after {failures} attempt(s): {reason}")
        summary["archive_failed"] += 1

    def _fail_group(self, conn: sqlite3.Connection, group_id: int, reason: str) -> None:
        """The group and its scans fail visibly (`dichroism status` lists failed scans)."""
        now = self.clock()
        conn.execute(
            "UPDATE archive_groups SET state = 'failed', last_error = ?, updated_at = ?"
            " WHERE id = ?",
            (reason, now, group_id),
        )
        conn.execute(
            "UPDATE scans SET state = 'failed', failed_step = 'archive', last_error = ?,"
            " updated_at = ? WHERE archive_group_id = ? AND state = 'archive_submitted'",
            (reason, now, group_id),
        )
        log.error("archive group %s failed: %s", group_id, reason)

    def _follow_prune(self, label: str, run: dict[str, Any], summary: Counter[str]) -> None:
        now = self.clock()
        rows = self.ledger.query(
            "SELECT * FROM prune_timers WHERE label = ? AND state IN ('scheduling', 'scheduled')",
            (label,),
        )
        if not rows:
            return
        row = rows[0]
        status = run.get("status")
        with self.ledger.transaction() as conn:
            if status not in FINAL_STATUSES:
                # The timer fired: the batch is scheduled whatever the ledger said before.
                conn.execute(
                    "UPDATE prune_timers SET state = 'scheduled', run_id = ?, updated_at = ?"
                    " WHERE batch = ?",
                    (run["run_id"], now, row["batch"]),
                )
                return
            if status == "SUCCEEDED":
                location = LOCATIONS[row["location"]]
                conn.execute(
                    "UPDATE prune_timers SET state = 'succeeded', run_id = ?, last_error = NULL,"
                    " updated_at = ? WHERE batch = ?",
                    (run["run_id"], now, row["batch"]),
                )
                cursor = conn.execute(
                    f"UPDATE scans SET {location.pruned} = ?, updated_at = ?"
                    f" WHERE {location.batch} = ? AND {location.pruned} IS NULL",
                    (now, now, row["batch"]),
                )
                conn.execute(
                    "UPDATE scans SET state = 'pruned', updated_at = ? WHERE"
                    " dtn_pruned_at IS NOT NULL AND cfs_pruned_at IS NOT NULL"
                    " AND state = 'archived' AND (dtn_prune_batch = ? OR cfs_prune_batch = ?)",
                    (now, row["batch"], row["batch"]),
                )
                summary[f"pruned_{location.name}"] += cursor.rowcount
                summary["prune_succeeded"] += 1
                return
            # Nothing unverified was deleted (the flow fails before deleting); the scans keep
            # their state and the batch shows as failed until an operator acts.
            reason = failure_reason(run)
            self._record_failure(conn, run, "prune", f"batch:{row['batch']}", reason)
            conn.execute(
                "UPDATE prune_timers SET state = 'failed', run_id = ?, last_error = ?,"
                " updated_at = ? WHERE batch = ?",
                (run["run_id"], reason, now, row["batch"]),
            )
        summary["prune_failed"] += 1
        log.error("prune batch %s failed: %s", row["batch"], reason)

    # -- 2. archive ------------------------------------------------------------------------
    def _resolve_submitting_groups(self, listing: _Listing, summary: Counter[str]) -> None:
        """Groups left in 'submitting' by a crash or a timeout: adopt their run, or retry."""
        for group in self.ledger.query("SELECT * FROM archive_groups WHERE state = 'submitting'"):
            run = listing.archive_by_label.get(group["label"])
            now = self.clock()
            if run is not None:
                with self.ledger.transaction() as conn:
                    conn.execute(
                        "UPDATE archive_groups SET state = 'submitted', run_id = ?,"
                        " updated_at = ? WHERE id = ? AND state = 'submitting'",
                        (run["run_id"], now, group["id"]),
                    )
                summary["archive_runs_adopted"] += 1
                if run.get("status") in FINAL_STATUSES:
                    self._finish_archive(group["id"], run, summary)
            elif listing.complete:
                # Proven absent: the attempt never reached the service, so it is not counted.
                with self.ledger.transaction() as conn:
                    conn.execute(
                        "UPDATE archive_groups SET state = 'open', attempts = MAX(attempts - 1, 0),"
                        " updated_at = ? WHERE id = ? AND state = 'submitting'",
                        (now, group["id"]),
                    )

    def _form_archive_groups(self, summary: Counter[str]) -> None:
        now = self.clock()
        quiet = self.settings.archive_quiet_seconds
        candidates: dict[tuple[str, str], list[sqlite3.Row]] = {}
        proposals: dict[tuple[str, str], str] = {}
        for row in self.ledger.query(
            "SELECT id, beamline, rel, size, transferred_at FROM scans"
            " WHERE state = 'transferred' AND archive_group_id IS NULL ORDER BY rel"
        ):
            settings = self.config.beamlines.get(row["beamline"])
            if settings is None:
                continue
            directory, proposal = proposal_directory(settings, row["rel"])
            candidates.setdefault((row["beamline"], directory), []).append(row)
            proposals[(row["beamline"], directory)] = proposal
        if not candidates:
            return
        last_change = {
            key: max(float(r["transferred_at"] or 0) for r in rows)
            for key, rows in candidates.items()
        }
        # A directory still receiving scans is not quiet, even if its transferred ones are.
        placeholders = ", ".join("?" for _ in IN_FLIGHT_SCAN_STATES)
        for row in self.ledger.query(
            f"SELECT beamline, rel, created_at FROM scans WHERE state IN ({placeholders})",
            IN_FLIGHT_SCAN_STATES,
        ):
            settings = self.config.beamlines.get(row["beamline"])
            if settings is None:
                continue
            key = (row["beamline"], proposal_directory(settings, row["rel"])[0])
            if key in last_change:
                last_change[key] = max(last_change[key], float(row["created_at"]))
        for key, rows in sorted(candidates.items()):
            if now - last_change[key] < quiet:
                continue
            beamline, directory = key
            for members in _chunks(rows, ARCHIVE_MAX_FILES):
                self._create_group(beamline, directory, proposals[key], members, summary)

    def _create_group(
        self,
        beamline: str,
        directory: str,
        proposal: str,
        members: list[sqlite3.Row],
        summary: Counter[str],
    ) -> None:
        now = self.clock()
        newest = max(float(m["transferred_at"] or now) for m in members)
        name = archive_name(beamline, proposal, [m["rel"] for m in members], newest)
        label = _shorten(f"{beamline} archive {name}")
        try:
            with self.ledger.transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO archive_groups (beamline, proposal, directory, archive_name,"
                    " state, label, attempts, last_change_at, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 'open', ?, 0, ?, ?, ?)",
                    (beamline, proposal, directory, name, label, newest, now, now),
                )
                group_id = cursor.lastrowid
                cursor = conn.executemany(
                    "UPDATE scans SET archive_group_id = ?, state = 'archive_submitted',"
                    " updated_at = ? WHERE id = ? AND state = 'transferred'"
                    " AND archive_group_id IS NULL",
                    [(group_id, now, m["id"]) for m in members],
                )
                if cursor.rowcount != len(members):
                    raise _Conflict
        except (_Conflict, sqlite3.IntegrityError):
            log.warning("archive group %s: members changed while forming it; next pass", name)
            return
        summary["archive_groups_formed"] += 1

    def _submit_archive_groups(
        self, flows: dict[str, str], summary: Counter[str], errors: list[str]
    ) -> None:
        limit = self.settings.max_archive_runs_in_flight
        in_flight = int(
            self.ledger.query(
                "SELECT COUNT(*) AS n FROM archive_groups"
                " WHERE state IN ('submitting', 'submitted')"
            )[0]["n"]
        )
        waiting = self.ledger.query("SELECT * FROM archive_groups WHERE state = 'open' ORDER BY id")
        for index, group in enumerate(waiting):
            if in_flight >= limit:
                summary["archive_groups_waiting"] += len(waiting) - index
                return
            outcome = self._submit_group(flows["archive"], group, summary, errors)
            if outcome == "stop":
                return
            if outcome == "started":
                in_flight += 1

    def _archive_body(self, group: sqlite3.Row, members: list[sqlite3.Row]) -> dict[str, Any]:
        from dichroism_control.routing import cfs_root_path, hpss_directory

        beamline = group["beamline"]
        archive = self.settings.archive
        endpoints = self.config.globus.compute_endpoints
        return {
            "input": {
                "beamline": beamline,
                "proposal": group["proposal"],
                "cfs_root": cfs_root_path(self.config, beamline),
                "files": [{"path": m["rel"], "size": int(m["size"])} for m in members],
                "hpss": {
                    "endpoint_id": endpoints.nersc,
                    "function_id": self.deployment.function_id("hpss_archive"),
                    "directory": hpss_directory(self.config, beamline),
                    "archive_name": group["archive_name"],
                    "options": {
                        "bundle_max_bytes": archive.bundle_max_bytes,
                        "single_file_threshold_bytes": archive.single_file_threshold_bytes,
                        "max_sessions": archive.max_hpss_sessions,
                        "walltime_seconds": archive.walltime_seconds,
                    },
                },
                "scicat": {
                    "endpoint_id": endpoints.scicat,
                    "function_id": self.deployment.function_id("scicat_add_location"),
                },
            }
        }

    def _submit_group(
        self, flow_id: str, group: sqlite3.Row, summary: Counter[str], errors: list[str]
    ) -> str:
        group_id = group["id"]
        members = self.ledger.query(
            "SELECT rel, size FROM scans WHERE archive_group_id = ? ORDER BY rel", (group_id,)
        )
        if not members:
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE archive_groups SET state = 'failed', last_error = 'no member scans',"
                    " updated_at = ? WHERE id = ?",
                    (self.clock(), group_id),
                )
            return "skipped"
        body = self._archive_body(group, members)
        invalid = self._validate("archive", body)
        if invalid:
            with self.ledger.transaction() as conn:
                self._fail_group(conn, group_id, invalid)
            summary["archive_failed"] += 1
            return "skipped"
        with self.ledger.transaction() as conn:
            cursor = conn.execute(
                "UPDATE archive_groups SET state = 'submitting', attempts = attempts + 1,"
                " updated_at = ? WHERE id = ? AND state = 'open'",
                (self.clock(), group_id),
            )
            if cursor.rowcount == 0:
                return "skipped"
        request = self._run_request(
            flow_id, body, group["label"], ["dichroism", group["beamline"], "archive"]
        )
        try:
            run = self.backend.run_flow(request)
        except TransientBackendError as exc:
            # The run may exist (a 502 after the service acted): stay 'submitting', so the
            # next pass looks it up by label before starting anything.
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE archive_groups SET last_error = ?, updated_at = ? WHERE id = ?",
                    (str(exc), self.clock(), group_id),
                )
            errors.append(f"archive {group['archive_name']}: {exc}")
            return "stop"
        except BackendError as exc:
            # Refused outright (400, 403): no run exists; counts as an attempt.
            with self.ledger.transaction() as conn:
                attempts = int(group["attempts"]) + 1
                if attempts >= self.settings.max_attempts:
                    self._fail_group(conn, group_id, f"run_flow refused: {exc}")
                    summary["archive_failed"] += 1
                else:
                    conn.execute(
                        "UPDATE archive_groups SET state = 'open', last_error = ?, updated_at = ?"
                        " WHERE id = ?",
                        (f"run_flow refused: {exc}", self.clock(), group_id),
                    )
            errors.append(f"archive {group['archive_name']}: {exc}")
            return "stop" if isinstance(exc, PermanentBackendError) else "skipped"
        with self.ledger.transaction() as conn:
            conn.execute(
                "UPDATE archive_groups SET state = 'submitted', run_id = ?, last_error = NULL,"
                " updated_at = ? WHERE id = ?",
                (run["run_id"], self.clock(), group_id),
            )
        summary["archive_runs_started"] += 1
        return "started"

    # -- 3. prune --------------------------------------------------------------------------
    def _retention(self, beamline: str, location: str) -> tuple[timedelta, bool]:
        """(retention, quiet_mode) for one (beamline, location)."""
        amount = int(getattr(self.config.beamline(beamline).retention_days, location))
        seconds_mode = self.settings.retention_unit == "seconds"
        delta = timedelta(seconds=amount) if seconds_mode else timedelta(days=amount)
        return delta, seconds_mode or amount == 0

    def _resolve_scheduling_prunes(
        self, listing: _Listing, summary: Counter[str], errors: list[str]
    ) -> list[str]:
        """Batches left in 'scheduling' by an earlier pass: adopt their timer or recreate it.

        Returns the batches that still need a timer. A batch whose timer cannot be looked up
        this pass (Timers unreachable) is left for the next one: never create blind.
        """
        rows = self.ledger.query("SELECT * FROM prune_timers WHERE state = 'scheduling'")
        if not rows:
            return []
        try:
            timers = {t.get("name"): t for t in self.backend.iter_timers()}
        except BackendError as exc:
            errors.append(f"listing timers: {exc}")
            return []
        pending: list[str] = []
        for row in rows:
            timer = timers.get(row["label"])
            fired = listing.prune_by_label.get(row["label"])
            if timer is None and fired is None:
                pending.append(row["batch"])
                continue
            timer_id = _timer_id(timer) if timer is not None else row["timer_id"]
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'scheduled', timer_id = ?, last_error = NULL,"
                    " updated_at = ? WHERE batch = ? AND state = 'scheduling'",
                    (timer_id, self.clock(), row["batch"]),
                )
            summary["prune_timers_adopted"] += 1
        return pending

    def _form_prune_batches(self, summary: Counter[str]) -> list[str]:
        """Close the batches that are complete; returns their keys (rows in 'scheduling')."""
        now = self.clock()
        created: list[str] = []
        quiet = self.settings.prune_batch_quiet_seconds
        for location in LOCATIONS.values():
            rows = self.ledger.query(
                f"SELECT id, beamline, rel, size, {location.confirmed} AS confirmed FROM scans"
                f" WHERE {location.confirmed} IS NOT NULL AND {location.batch} IS NULL"
                f" AND {location.pruned} IS NULL ORDER BY rel"
            )
            by_beamline: dict[str, list[sqlite3.Row]] = {}
            for row in rows:
                if row["beamline"] in self.config.beamlines:
                    by_beamline.setdefault(row["beamline"], []).append(row)
            for beamline, members in sorted(by_beamline.items()):
                retention, quiet_mode = self._retention(beamline, location.name)
                if quiet_mode:
                    newest = max(float(m["confirmed"]) for m in members)
                    if now - newest < quiet and len(members) < PRUNE_MAX_FILES:
                        continue
                    day = _utc(now).strftime("%Y-%m-%dT%H:%M:%SZ")
                    created += self._create_batches(
                        beamline, location, day, members, retention, summary
                    )
                    continue
                by_day: dict[str, list[sqlite3.Row]] = {}
                for member in members:
                    by_day.setdefault(_day(float(member["confirmed"])), []).append(member)
                today = _day(now)
                for confirmed_day, day_members in sorted(by_day.items()):
                    if confirmed_day >= today:
                        continue  # the day is still open: more scans may join its batch
                    # Keyed by the day the prune is due (confirmation day + retention),
                    # which is the day its timer fires unless we are running late.
                    due = (
                        datetime.fromisoformat(confirmed_day).replace(tzinfo=UTC) + retention
                    ).date()
                    created += self._create_batches(
                        beamline, location, due.isoformat(), day_members, retention, summary
                    )
        return created

    def _create_batches(
        self,
        beamline: str,
        location: Location,
        day: str,
        members: list[sqlite3.Row],
        retention: timedelta,
        summary: Counter[str],
    ) -> list[str]:
        now = self.clock()
        created: list[str] = []
        base = f"{beamline}/{location.name}/{day}"
        existing = {
            row["batch"]
            for row in self.ledger.query(
                "SELECT batch FROM prune_timers WHERE batch = ? OR batch LIKE ?",
                (base, base + "#%"),
            )
        }
        number = 0
        for chunk in _chunks(members, PRUNE_MAX_FILES):
            # Keys are never reused (a cancelled batch keeps its key), so a prune run's label
            # always names exactly one batch.
            while True:
                number += 1
                batch = base if number == 1 else f"{base}#{number}"
                if batch not in existing:
                    break
            suffix = "" if number == 1 else f" #{number}"
            label = _shorten(f"{beamline} prune {location.name} {day}{suffix}")
            newest = max(float(m["confirmed"]) for m in chunk)
            # Whole seconds, rounded up: Timers truncates to seconds and a file must never be
            # pruned a moment before its retention has passed.
            run_at = float(math.ceil(max(newest + retention.total_seconds(), now)))
            try:
                with self.ledger.transaction() as conn:
                    conn.execute(
                        "INSERT INTO prune_timers (batch, beamline, location, day, label, run_at,"
                        " files, state, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, 'scheduling', ?, ?)",
                        (batch, beamline, location.name, day, label, run_at, len(chunk), now, now),
                    )
                    cursor = conn.executemany(
                        f"UPDATE scans SET {location.batch} = ?, updated_at = ?"
                        f" WHERE id = ? AND {location.batch} IS NULL",
                        [(batch, now, m["id"]) for m in chunk],
                    )
                    if cursor.rowcount != len(chunk):
                        raise _Conflict
            except (_Conflict, sqlite3.IntegrityError):
                log.warning("prune batch %s: members changed while forming it; next pass", batch)
                return created
            existing.add(batch)
            created.append(batch)
            summary["prune_batches_formed"] += 1
        return created

    def _prune_body(self, row: sqlite3.Row, files: list[dict[str, Any]]) -> dict[str, Any]:
        from dichroism_control.routing import cfs_root_path, hpss_directory, source_root_path

        beamline = row["beamline"]
        settings = self.config.beamline(beamline)
        nersc = self.config.globus.compute_endpoints.nersc
        if row["location"] == "compute_dtn":
            target = {
                "collection_id": self.config.endpoint(settings.source).uuid,
                "root": source_root_path(self.config, beamline),
                "files": files,
            }
            safe_root = cfs_root_path(self.config, beamline)
            verifier = "cfs_verify"
        else:
            target = {
                "collection_id": self.config.endpoint(settings.destination).uuid,
                "root": cfs_root_path(self.config, beamline),
                "files": files,
            }
            safe_root = hpss_directory(self.config, beamline)
            verifier = "hpss_verify"
        return {
            "input": {
                "beamline": beamline,
                "location": row["location"],
                "target": target,
                "safe": {"root": safe_root},
                "verify": {
                    "endpoint_id": nersc,
                    "function_id": self.deployment.function_id(verifier),
                },
            }
        }

    def _schedule_prunes(
        self,
        flows: dict[str, str],
        pending: list[str],
        summary: Counter[str],
        errors: list[str],
    ) -> None:
        # Only batches this pass created, or looked up by name and did not find, get a
        # timer; a 'scheduling' row whose lookup failed waits for the next pass.
        wanted = set(pending)
        rows = self.ledger.query(
            "SELECT * FROM prune_timers WHERE state = 'scheduling' ORDER BY run_at, batch"
        )
        for row in rows:
            if row["batch"] in wanted and not self._schedule_one(
                flows["prune"], row, summary, errors
            ):
                return

    def _schedule_one(
        self, flow_id: str, row: sqlite3.Row, summary: Counter[str], errors: list[str]
    ) -> bool:
        """Create one batch's timer; False when the backend is in trouble (stop this pass)."""
        location = LOCATIONS[row["location"]]
        files = [
            {"path": m["rel"], "size": int(m["size"])}
            for m in self.ledger.query(
                f"SELECT rel, size FROM scans WHERE {location.batch} = ? ORDER BY rel",
                (row["batch"],),
            )
        ]
        now = self.clock()
        if not files:
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'cancelled', last_error = 'no member scans',"
                    " updated_at = ? WHERE batch = ?",
                    (now, row["batch"]),
                )
            return True
        body = self._prune_body(row, files)
        invalid = self._validate("prune", body)
        if invalid:
            # Shown by `timers list` and in the failures; the scans keep their copies.
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET state = 'failed', last_error = ?, updated_at = ?"
                    " WHERE batch = ?",
                    (invalid, now, row["batch"]),
                )
            summary["prune_failed"] += 1
            return True
        request = self._run_request(
            flow_id, body, row["label"], ["dichroism", row["beamline"], "prune", row["location"]]
        )
        try:
            timer = self.backend.create_flow_timer(
                name=row["label"], run_at=_utc(float(row["run_at"])), request=request
            )
        except BackendError as exc:
            # The row stays 'scheduling': the next pass looks the timer up by name first
            # (it may exist after a timeout) and creates it only if it does not.
            with self.ledger.transaction() as conn:
                conn.execute(
                    "UPDATE prune_timers SET last_error = ?, updated_at = ? WHERE batch = ?",
                    (str(exc), self.clock(), row["batch"]),
                )
            errors.append(f"timer {row['label']}: {exc}")
            return False
        with self.ledger.transaction() as conn:
            conn.execute(
                "UPDATE prune_timers SET state = 'scheduled', timer_id = ?, last_error = NULL,"
                " updated_at = ? WHERE batch = ? AND state = 'scheduling'",
                (_timer_id(timer), self.clock(), row["batch"]),
            )
        summary["prune_timers_scheduled"] += 1
        return True


def _timer_id(timer: dict[str, Any]) -> str | None:
    for key in ("job_id", "timer_id", "id"):
        value = timer.get(key)
        if value:
            return str(value)
    return None


# -- operator views (`dichroism timers`, `dichroism status`) -------------------------------
LIVE_BATCH_STATES = ("scheduling", "scheduled", "failed")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else _utc(float(ts)).isoformat()


def list_timers(ledger: Ledger, backend: Backend, *, include_done: bool = False) -> dict[str, Any]:
    """Ledger prune batches merged with the Timers service's timers.

    A ledger batch is matched to its remote timer by id (or by name while 'scheduling');
    remote timers we did not create (another tool's) are listed too, without a batch.
    """
    states = None if include_done else LIVE_BATCH_STATES
    sql = "SELECT * FROM prune_timers"
    params: tuple[Any, ...] = ()
    if states is not None:
        sql += f" WHERE state IN ({', '.join('?' for _ in states)})"
        params = states
    rows = ledger.query(sql + " ORDER BY run_at, batch", params)
    remote: list[dict[str, Any]] = []
    remote_error: str | None = None
    try:
        remote = list(backend.iter_timers())
    except BackendError as exc:
        remote_error = str(exc)
    by_id = {_timer_id(t): t for t in remote}
    by_name = {t.get("name"): t for t in remote}
    matched: set[str | None] = set()
    entries: list[dict[str, Any]] = []
    for row in rows:
        timer = by_id.get(row["timer_id"]) if row["timer_id"] else by_name.get(row["label"])
        if timer is not None:
            matched.add(_timer_id(timer))
        entries.append(
            {
                "id": row["timer_id"] or (_timer_id(timer) if timer else None),
                "name": row["label"],
                "batch": row["batch"],
                "beamline": row["beamline"],
                "location": row["location"],
                "next_run": (timer or {}).get("next_run") or _iso(row["run_at"]),
                "files": row["files"],
                "state": row["state"],
                "timer_status": (timer or {}).get("status"),
                "run_id": row["run_id"],
                "last_error": row["last_error"],
            }
        )
    known = {row["timer_id"] for row in ledger.query("SELECT timer_id FROM prune_timers")}
    for timer in remote:
        timer_id = _timer_id(timer)
        if timer_id in matched or timer_id in known:
            continue
        entries.append(
            {
                "id": timer_id,
                "name": timer.get("name"),
                "batch": None,
                "beamline": None,
                "location": None,
                "next_run": timer.get("next_run"),
                "files": None,
                "state": timer.get("status"),
                "timer_status": timer.get("status"),
                "run_id": None,
                "last_error": None,
            }
        )
    result: dict[str, Any] = {"timers": entries}
    if remote_error:
        result["remote_error"] = remote_error
    return result


def cancel_timer(
    ledger: Ledger, backend: Backend, ident: str, *, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Delete a timer; a prune batch's scans are released and rebatched on the next pass.

    Cancelling never loses a prune: the batch is marked 'cancelled' (kept, with its key, for
    the record) and its unpruned scans go back to the pool, so the next lifecycle pass puts
    them in a new batch (`#2`, ...) due at confirmation + the *current* retention. To keep
    files longer, raise the retention in config.yml first. A batch whose run has already
    started cannot be cancelled here (cancel the run instead), nor can a finished one.
    """
    from dichroism_control.errors import ConfigError

    rows = ledger.query(
        "SELECT * FROM prune_timers WHERE timer_id = ? OR batch = ?", (ident, ident)
    )
    if not rows:
        # Not ours: a timer another tool made (flight checks, ...). Just delete it.
        backend.delete_timer(ident)
        return {"id": ident, "batch": None, "deleted": True, "released_files": 0}
    row = rows[0]
    if row["state"] in ("succeeded", "cancelled"):
        raise ConfigError(f"prune batch {row['batch']} is already {row['state']}")
    if row["state"] == "scheduled" and row["run_id"]:
        raise ConfigError(
            f"prune batch {row['batch']} already started run {row['run_id']}; "
            f"cancel the run instead (`dichroism runs cancel {row['run_id']}`)"
        )
    timer_id = row["timer_id"]
    if timer_id is None and row["state"] == "scheduling":
        timer_id = next(
            (_timer_id(t) for t in backend.iter_timers() if t.get("name") == row["label"]),
            None,
        )
    deleted = False
    if timer_id:
        try:
            backend.delete_timer(timer_id)
            deleted = True
        except PermanentBackendError as exc:
            if exc.http_status != 404:
                raise
    location = LOCATIONS[row["location"]]
    now = clock()
    with ledger.transaction() as conn:
        cursor = conn.execute(
            f"UPDATE scans SET {location.batch} = NULL, updated_at = ?"
            f" WHERE {location.batch} = ? AND {location.pruned} IS NULL",
            (now, row["batch"]),
        )
        released = cursor.rowcount
        conn.execute(
            "UPDATE prune_timers SET state = 'cancelled', last_error = ?, updated_at = ?"
            " WHERE batch = ?",
            (
                f"cancelled by operator; {released} file(s) released for rescheduling",
                now,
                row["batch"],
            ),
        )
    return {"id": timer_id, "batch": row["batch"], "deleted": deleted, "released_files": released}
