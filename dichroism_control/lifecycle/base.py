"""What every lifecycle step shares: constants, small helpers and the `Step` base class.

A step is one room of the lifecycle (new_file runs, archive groups, prune batches); each
holds the same handles (config, ledger, backend, deployment, clock) and the same three
services: validating a run body against the deployed schema, building a `RunRequest`, and
recording a failed run exactly once.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from dichroism_control.backend import Backend, RunRequest
from dichroism_control.binding import input_validator
from dichroism_control.causes import explain_run
from dichroism_control.config import Beamline, Config
from dichroism_control.deploy_state import Deployment
from dichroism_control.ledger import Ledger

# The schemas' limits (tools/gen_definitions.py: BATCH_MAX_FILES, ARCHIVES_MAX), which keep
# every run's state under the Flows 200 KB cap; tests/test_definitions.py checks they agree.
ARCHIVE_MAX_FILES = 200  # archive input_schema: files.maxItems
PRUNE_MAX_FILES = 200  # prune input_schema: target.files.maxItems
PRUNE_MAX_ARCHIVES = 50  # prune input_schema: safe.archives.maxItems
# A version a prune left in place this many times stops being re-queued: a person looks.
MAX_KEPT = 3
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


class Conflict(Exception):
    """Rows changed under us (another writer); the transaction is rolled back."""


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def utc_day(ts: float) -> str:
    return utc(ts).date().isoformat()


def shorten(text: str, limit: int = 128) -> str:
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2 :]


def failure_reason(run: dict[str, Any]) -> str:
    """The one-line reason recorded for a failed run: its innermost cause and the next step
    (`causes.explain_run`; the full structure goes to `run_failures.cause`)."""
    return explain_run(run).line()


def waiting_reason(run: dict[str, Any]) -> tuple[str | None, str]:
    """(details.code, one-line reason) of a run seen INACTIVE, e.g. ConsentRequired."""
    details = run.get("details") if isinstance(run.get("details"), dict) else {}
    code = details.get("code") if isinstance(details, dict) else None
    description = details.get("description") if isinstance(details, dict) else None
    reason = ": ".join(str(p) for p in (code, description) if p) or "run INACTIVE"
    reason = reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 1] + "…"
    return (str(code) if code else None), reason


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


def archive_name(beamline: str, proposal: str, members: list[str], newest: float) -> str:
    """`{proposal}_{YYYY-MM-DD}_{hash}`: the same members always give the same name.

    `members` identify versions (path, version and checksum), so a later version of a file
    goes into an archive of another name and never matches the older one's members."""
    safe = _NAME_UNSAFE.sub("_", proposal)[:60] or UNSORTED_PROPOSAL
    digest = hashlib.sha256("\n".join([beamline, *sorted(members)]).encode()).hexdigest()[:10]
    return f"{safe}_{utc_day(newest)}_{digest}"


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_output(backend: Backend, run: dict[str, Any]) -> dict[str, Any]:
    """A final run's output (its last state). A listing may carry only a summary of each
    run; then the run document is read in full."""
    details = run.get("details")
    output = details.get("output") if isinstance(details, dict) else None
    if not isinstance(output, dict):
        details = backend.get_run(str(run["run_id"])).get("details")
        output = details.get("output") if isinstance(details, dict) else None
    return output if isinstance(output, dict) else {}


def compute_result(output: dict[str, Any], key: str) -> dict[str, Any]:
    """The first task result of the Compute action stored at `$.{key}` (the Compute action
    provider puts it in details.result[0]; globus-compute docs/actionprovider.rst)."""
    action = output.get(key)
    details = action.get("details") if isinstance(action, dict) else None
    results = details.get("result") if isinstance(details, dict) else None
    first = results[0] if isinstance(results, list) and results else None
    return first if isinstance(first, dict) else {}


def single_tape_path(hpss_dir: str, rel: str, version: int) -> str:
    """Where hpss_archive sends a file alone (hsi): `{hpss_dir}/{rel}` for version 1,
    `{hpss_dir}/{rel}@v{n}` after that, so every version stays on tape (compute_functions/
    hpss.py keeps the same rule)."""
    base = f"{hpss_dir.rstrip('/')}/{rel}"
    return base if int(version) == 1 else f"{base}@v{int(version)}"


def version_member(rel: str, version: int, checksum: str | None) -> str:
    return f"{rel}\0{version}\0{checksum or ''}"


def timer_id_of(timer: dict[str, Any]) -> str | None:
    for key in ("job_id", "timer_id", "id"):
        value = timer.get(key)
        if value:
            return str(value)
    return None


class Step:
    """The handles and services every lifecycle step uses (see the module docstring)."""

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

    def validate(self, flow: str, body: dict[str, Any]) -> str | None:
        """The first schema error of a run body against the deployed (specialised) schema."""
        validator = self._validators.get(flow)
        if validator is None:
            validator = self._validators[flow] = input_validator(
                self.config, flow, functions=self.deployment.functions
            )
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top)"
        return f"{flow} input invalid at {where}: {first.message[:300]}"

    def run_request(
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

    def note_waiting(
        self,
        flow: str,
        seen: list[tuple[dict[str, Any], str]],
        summary: Counter[str],
    ) -> None:
        """Record which of the runs just seen (run, subject) are INACTIVE, and forget those
        that are not any more: an INACTIVE run needs a person and is never progress
        (`Ledger.waiting_runs`)."""
        if not seen:
            return
        now = self.clock()
        with self.ledger.transaction() as conn:
            for run, subject in seen:
                if run.get("status") == "INACTIVE":
                    code, reason = waiting_reason(run)
                    self.ledger.record_waiting(
                        conn,
                        run_id=str(run["run_id"]),
                        flow=flow,
                        subject=subject,
                        code=code,
                        reason=reason,
                        now=now,
                    )
                    summary["runs_inactive"] += 1
            self.ledger.clear_waiting(
                conn, [str(r["run_id"]) for r, _ in seen if r.get("status") != "INACTIVE"]
            )

    def record_failure(
        self, conn: sqlite3.Connection, run: dict[str, Any], flow: str, subject: str, reason: str
    ) -> int | None:
        """Record a failed run once; the subject's failure count since its last retry by a
        person, or None if already known."""
        cause = json.dumps(explain_run(run).as_dict(), sort_keys=True, default=str)
        cursor = conn.execute(
            "INSERT OR IGNORE INTO run_failures (run_id, flow, subject, status, reason,"
            " failed_at, cause) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run["run_id"],
                flow,
                subject,
                run.get("status", "FAILED"),
                reason,
                self.clock(),
                cause,
            ),
        )
        if cursor.rowcount == 0:
            return None
        # Failures before a person's retry (`cleared_at`) no longer count as attempts.
        row = conn.execute(
            "SELECT COUNT(*) FROM run_failures WHERE subject = ? AND cleared_at IS NULL",
            (subject,),
        ).fetchone()
        return int(row[0])
