"""`dichroism scan show PATH`: one scan's story, from the ledger alone (no network).

Every version of the path (checksum, size, mtime, state, superseded or not) with, for each:
its runs (new_file, its archive group's, its prune batches', each with its web-app link),
when each step happened, its tape location, its prune batches and when they are due, the
last error (one line; the whole cause for `--format json`), who acknowledged or retried it,
and what tape verification can and cannot prove. Run statuses are the ledger's knowledge
as of the last lifecycle pass (`runs show ID` asks the service).
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from dichroism_control.operations.selection import scan_versions

if TYPE_CHECKING:
    from dichroism_control.ledger import Ledger

WEB_APP_RUN = "https://app.globus.org/runs/{run_id}"
TAPE_NOTE = (
    "tape copies are verified by size; content was checked on CFS (MD5) right before archiving"
    " and the CFS copy is hashed again before a CFS prune"
)


def run_link(run_id: str | None) -> str | None:
    return WEB_APP_RUN.format(run_id=run_id) if run_id else None


def story(ledger: Ledger, path: str) -> dict[str, Any]:
    versions = scan_versions(ledger, path)
    latest = versions[-1]
    return {
        "path": latest["path"],
        "beamline": latest["beamline"],
        "rel": latest["rel"],
        "latest_version": latest["version"],
        "versions": [_version(ledger, row) for row in reversed(versions)],
        "tape_verification": TAPE_NOTE,
    }


def _iso(ts: float | None) -> str | None:
    from dichroism_control.health import iso

    return iso(ts)


def _version(ledger: Ledger, row: sqlite3.Row) -> dict[str, Any]:
    group = _one(ledger, "SELECT * FROM archive_groups WHERE id = ?", row["archive_group_id"])
    failures = _failures(ledger, row, group)
    subjects = [f"scan:{row['id']}"] + ([f"group:{group['id']}"] if group is not None else [])
    return {
        "version": row["version"],
        "checksum_md5": row["checksum"],
        "size": row["size"],
        "mtime": _iso(row["mtime"]),
        "state": row["state"],
        "superseded": row["superseded_at"] is not None,
        "superseded_at": _iso(row["superseded_at"]),
        "steps": {
            "detected_at": _iso(row["created_at"]),
            "transferred_at": _iso(row["transferred_at"]),
            "archived_at": _iso(row["archived_at"]),
            "pruned_compute_dtn_at": _iso(row["dtn_pruned_at"]),
            "pruned_cfs_at": _iso(row["cfs_pruned_at"]),
        },
        "tape": {"path": row["tape_path"], "member": row["tape_member"]}
        if row["tape_path"]
        else None,
        "runs": {
            "new_file": _new_file_runs(row, failures),
            "archive": _archive_runs(group, failures),
            "prune": _prune_runs(ledger, row),
        },
        "kept_by_prunes": row["kept"],
        "last_error": _last_error(row, group, failures),
        "acknowledged": _acknowledged(ledger, f"scan:{row['id']}"),
        "interventions": _interventions(ledger, subjects),
    }


def _one(ledger: Ledger, sql: str, key: Any) -> sqlite3.Row | None:
    if key is None:
        return None
    rows = ledger.query(sql, (key,))
    return rows[0] if rows else None


def _failures(
    ledger: Ledger, row: sqlite3.Row, group: sqlite3.Row | None
) -> dict[str, sqlite3.Row]:
    subjects = [f"scan:{row['id']}"] + ([f"group:{group['id']}"] if group is not None else [])
    marks = ", ".join("?" for _ in subjects)
    return {
        str(r["run_id"]): r
        for r in ledger.query(
            f"SELECT * FROM run_failures WHERE subject IN ({marks}) ORDER BY failed_at",
            tuple(subjects),
        )
    }


def _run(run_id: str, status: str, failure: sqlite3.Row | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"run_id": run_id, "status": status, "link": run_link(run_id)}
    if failure is not None:
        entry["reason"] = failure["reason"]
        entry["retried_at"] = _iso(failure["cleared_at"])
    return entry


def _new_file_runs(row: sqlite3.Row, failures: dict[str, sqlite3.Row]) -> list[dict[str, Any]]:
    runs = [
        _run(run_id, failure["status"], failure)
        for run_id, failure in failures.items()
        if failure["flow"] == "new_file"
    ]
    current = row["run_id"]
    if current and current not in failures:
        if row["transferred_at"] is not None:
            status = "SUCCEEDED"
        elif row["state"] in ("submitting", "submitted"):
            status = "ACTIVE"
        else:
            status = "unknown"
        runs.append(_run(str(current), status))
    return runs


def _archive_runs(
    group: sqlite3.Row | None, failures: dict[str, sqlite3.Row]
) -> dict[str, Any] | None:
    if group is None:
        return None
    runs = [
        _run(run_id, failure["status"], failure)
        for run_id, failure in failures.items()
        if failure["flow"] == "archive"
    ]
    current = group["run_id"]
    if current and current not in failures:
        status = {"succeeded": "SUCCEEDED", "submitted": "ACTIVE"}.get(group["state"], "unknown")
        runs.append(_run(str(current), status))
    return {
        "group": group["archive_name"],
        "state": group["state"],
        "label": group["label"],
        "runs": runs,
    }


def _prune_runs(ledger: Ledger, row: sqlite3.Row) -> list[dict[str, Any]]:
    out = []
    for location, column in (("compute_dtn", "dtn_prune_batch"), ("cfs", "cfs_prune_batch")):
        batch = _one(ledger, "SELECT * FROM prune_timers WHERE batch = ?", row[column])
        if batch is None:
            continue
        run_id = batch["run_id"]
        status = {
            "succeeded": "SUCCEEDED",
            "failed": "FAILED",
            "scheduled": "ACTIVE" if run_id else None,
        }.get(batch["state"])
        out.append(
            {
                "location": location,
                "batch": batch["batch"],
                "state": batch["state"],
                "scheduled_for": _iso(batch["run_at"]),
                "timer_id": batch["timer_id"],
                "run_id": run_id,
                "status": status,
                "link": run_link(run_id),
            }
        )
    return out


def _last_error(
    row: sqlite3.Row, group: sqlite3.Row | None, failures: dict[str, sqlite3.Row]
) -> dict[str, Any] | None:
    from dichroism_control.causes import explain_text, one_line

    text = row["last_error"]
    if not text:
        return None
    failed_run = group["run_id"] if row["failed_step"] == "archive" and group else row["run_id"]
    stored = failures.get(str(failed_run)) if failed_run else None
    cause: Any = None
    if stored is not None and stored["cause"]:
        try:
            cause = json.loads(stored["cause"])
        except ValueError:
            cause = None
    if not isinstance(cause, dict):
        cause = explain_text(text).as_dict()
    return {"line": one_line(text), "cause": cause}


def _acknowledged(ledger: Ledger, subject: str) -> dict[str, Any] | None:
    known = ledger.acknowledgement(subject)
    if known is None:
        return None
    return {"by": known["by"], "at": _iso(known["at"]), "note": known["note"]}


def _interventions(ledger: Ledger, subjects: list[str]) -> list[dict[str, Any]]:
    marks = ", ".join("?" for _ in subjects)
    return [
        {
            "at": _iso(r["at"]),
            "by": r["by"],
            "action": r["action"],
            "subject": r["subject"],
            "note": r["note"],
        }
        for r in ledger.query(
            f"SELECT * FROM interventions WHERE subject IN ({marks}) ORDER BY at, id",
            tuple(subjects),
        )
    ]
