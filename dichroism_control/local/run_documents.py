"""Run documents: a `local_runs` row shaped like the Flows API's run document (`get_run`,
`list_runs`), plus the timestamp helpers the local backend's records share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dichroism_control.errors import PermanentBackendError
from dichroism_control.local.store import loads

if TYPE_CHECKING:
    import sqlite3


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def not_found(what: str, ident: str) -> PermanentBackendError:
    return PermanentBackendError(f"404 NOT_FOUND: no {what} {ident!r}", http_status=404)


def run_document(row: sqlite3.Row, owner: str) -> dict[str, Any]:
    """The Flows run document of one stored run; `owner` is the run owner's identity URN."""
    meta = loads(row["request"]) or {}
    return {
        "run_id": row["run_id"],
        "action_id": row["run_id"],
        "flow_id": row["flow_id"],
        "flow_title": row["flow_title"],
        "status": row["status"],
        "display_status": row["status"],
        "label": row["label"],
        "tags": loads(row["tags"]),
        "start_time": row["start_time"],
        "completion_time": row["completion_time"],
        "details": loads(row["details"]),
        "run_managers": meta.get("run_managers") or [],
        "run_monitors": meta.get("run_monitors") or [],
        "manage_by": meta.get("run_managers") or [],
        "monitor_by": meta.get("run_monitors") or [],
        "activity_notification_policy": meta.get("activity_notification_policy"),
        "run_owner": owner,
        "created_by": owner,
        "user_role": "run_owner",
    }
