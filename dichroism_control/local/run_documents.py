"""Run documents: a `local_runs` row shaped like the Flows API's run document (`get_run`,
`list_runs`; service_rules.flows.run_document), plus the timestamp helpers the local
backend's records share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dichroism_control.local.service_rules import flows
from dichroism_control.local.store import loads

if TYPE_CHECKING:
    import sqlite3


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def run_document(row: sqlite3.Row, owner: str) -> dict[str, Any]:
    """The Flows run document of one stored run; `owner` is the run owner's identity URN.

    The label column is never NULL (older ledgers declare it NOT NULL): a run without a
    label (one a timer started) is stored as "" and shown as None.
    """
    meta = loads(row["request"]) or {}
    policy = meta.get("activity_notification_policy") or {}
    return flows.run_document(
        run_id=row["run_id"],
        flow_id=row["flow_id"],
        flow_title=row["flow_title"],
        status=row["status"],
        label=row["label"] or None,
        tags=loads(row["tags"]),
        start_time=row["start_time"],
        completion_time=row["completion_time"],
        details=loads(row["details"]),
        run_managers=meta.get("run_managers") or [],
        run_monitors=meta.get("run_monitors") or [],
        notify_on=policy.get("status"),
        owner=owner,
    )
