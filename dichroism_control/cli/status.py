"""`dichroism status`: per beamline, scans per lifecycle state and recent failures."""

from __future__ import annotations

from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    ctx: typer.Context,
    *,
    failures: Annotated[
        int, typer.Option("--failures", min=0, help="How many recent failures to list.")
    ] = 20,
) -> None:
    """Scans per state for each beamline, and the latest failures with their reasons."""
    from datetime import UTC, datetime

    from dichroism_control.cli.context import Context
    from dichroism_control.ledger import SCAN_STATES

    state: Context = ctx.obj
    config = state.config()
    ledger = state.ledger()
    counts = ledger.state_counts()
    queued = {
        row["beamline"]: row["n"]
        for row in ledger.query(
            "SELECT beamline, COUNT(*) AS n FROM scans WHERE state = 'detected'"
            " AND next_attempt_at > 0 GROUP BY beamline"
        )
    }
    beamlines: dict[str, Any] = {}
    for name in sorted(set(config.beamlines) | set(counts)):
        per_state = {s: counts.get(name, {}).get(s, 0) for s in SCAN_STATES}
        beamlines[name] = {
            "states": per_state,
            "total": sum(per_state.values()),
            "retry_queued": queued.get(name, 0),
        }
    recent = [
        {
            "beamline": row["beamline"],
            "rel": row["rel"],
            "step": row["failed_step"],
            "reason": row["last_error"],
            "attempts": row["attempts"],
            "run_id": row["run_id"],
            "at": datetime.fromtimestamp(row["updated_at"], UTC).isoformat(timespec="seconds"),
        }
        for row in ledger.recent_failures(limit=failures)
    ]
    batches = [
        {
            "step": row["step"],
            "beamline": row["beamline"],
            "subject": row["subject"],
            "label": row["label"],
            "reason": row["last_error"],
            "run_id": row["run_id"],
            "at": datetime.fromtimestamp(row["updated_at"], UTC).isoformat(timespec="seconds"),
        }
        for row in ledger.batch_failures(limit=failures)
    ]
    state.emit({"beamlines": beamlines, "failures": recent, "batch_failures": batches}, text=_text)


def _text(report: dict[str, Any]) -> str:
    from dichroism_control.ledger import SCAN_STATES
    from dichroism_control.output import table

    rows = [
        [name, *(info["states"][s] for s in SCAN_STATES), info["total"]]
        for name, info in report["beamlines"].items()
    ]
    lines = [table(rows, ["beamline", *SCAN_STATES, "total"])]
    waiting = {n: i["retry_queued"] for n, i in report["beamlines"].items() if i["retry_queued"]}
    if waiting:
        lines.append(
            "waiting for a retry: " + ", ".join(f"{n}: {c}" for n, c in sorted(waiting.items()))
        )
    if report["failures"]:
        lines.append("")
        lines.append(f"recent failures ({len(report['failures'])}):")
        for item in report["failures"]:
            lines.append(
                f"  {item['at']}  {item['beamline']} {item['rel']}  [{item['step']}, "
                f"{item['attempts']} attempt(s)]: {item['reason']}"
            )
    if report["batch_failures"]:
        lines.append("")
        lines.append(f"failed archive groups / prune batches ({len(report['batch_failures'])}):")
        for item in report["batch_failures"]:
            lines.append(
                f"  {item['at']}  {item['beamline']} {item['step']} {item['subject']}"
                f" (run {item['run_id']}): {item['reason']}"
            )
    if not report["failures"] and not report["batch_failures"]:
        lines.append("no failures")
    return "\n".join(lines)
