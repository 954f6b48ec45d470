"""Archive groups: transferred scans of one (beamline, proposal directory), once quiet, go
to tape in one `archive` run; at most `max_archive_runs_in_flight` at a time.

Exactly once: a group is committed as `submitting` before `run_flow`; a group found in that
state later (a crash, a timeout) is looked up by its label in the run listing, adopted if
its run exists, and only re-opened when a complete listing proves it does not.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from typing import Any

from dichroism_control.errors import (
    BackendError,
    PermanentBackendError,
    TransientBackendError,
)
from dichroism_control.lifecycle.archive_runs import fail_group
from dichroism_control.lifecycle.base import (
    ARCHIVE_MAX_FILES,
    IN_FLIGHT_SCAN_STATES,
    Conflict,
    Step,
    archive_name,
    chunks,
    proposal_directory,
    shorten,
    version_member,
)

log = logging.getLogger(__name__)


class ArchiveGroups(Step):
    """Forms, starts and follows archive runs (see the module docstring)."""

    def form(self, summary: Counter[str]) -> None:
        now = self.clock()
        quiet = self.settings.archive_quiet_seconds
        candidates: dict[tuple[str, str], list[sqlite3.Row]] = {}
        proposals: dict[tuple[str, str], str] = {}
        for row in self.ledger.query(
            "SELECT id, beamline, rel, version, checksum, transferred_at FROM scans"
            " WHERE state = 'transferred' AND archive_group_id IS NULL"
            " AND superseded_at IS NULL AND checksum IS NOT NULL ORDER BY rel, version"
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
            for members in chunks(rows, ARCHIVE_MAX_FILES):
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
        versions = [version_member(m["rel"], m["version"], m["checksum"]) for m in members]
        name = archive_name(beamline, proposal, versions, newest)
        label = shorten(f"{beamline} archive {name}")
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
                    raise Conflict
        except (Conflict, sqlite3.IntegrityError):
            log.warning("archive group %s: members changed while forming it; next pass", name)
            return
        summary["archive_groups_formed"] += 1

    def submit(self, flows: dict[str, str], summary: Counter[str], errors: list[str]) -> None:
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
                "files": [
                    {
                        "path": m["rel"],
                        "size": int(m["size"]),
                        "checksum": m["checksum"],
                        "version": int(m["version"]),
                    }
                    for m in members
                ],
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
            "SELECT rel, size, checksum, version FROM scans WHERE archive_group_id = ?"
            " ORDER BY rel, version",
            (group_id,),
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
        invalid = self.validate("archive", body)
        if invalid:
            with self.ledger.transaction() as conn:
                fail_group(conn, group_id, self.clock(), invalid)
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
        request = self.run_request(
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
                    fail_group(
                        conn,
                        group_id,
                        self.clock(),
                        f"after {attempts} attempt(s): run_flow refused: {exc}",
                    )
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
