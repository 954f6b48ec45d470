"""`dichroism status [--check]`: per beamline, states, backlog with the oldest item,
throughput, health, and failures (one line each: the innermost cause and the next step).

The health part comes from `dichroism_control.health` (the same report `doctor`, the alert
digests and the metrics use). `--check` prints one line per problem and exits 1 when there
is any, 0 (silently) when healthy: cron mails exactly when something needs a person.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import sqlite3

    from dichroism_control.ledger import Ledger

_ATTEMPTS_PREFIX = re.compile(r"^(after \d+ attempt\(s\)|attempt \d+ failed): ")


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    ctx: typer.Context,
    *,
    failures: Annotated[
        int, typer.Option("--failures", min=0, help="How many recent failures to list.")
    ] = 20,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Only the health verdict: one line per problem, exit 1 when unhealthy.",
        ),
    ] = False,
) -> None:
    """Per beamline: states, backlog and oldest age, throughput, health, failures."""
    from dichroism_control.cli.context import Context
    from dichroism_control.health import assess, iso
    from dichroism_control.ledger_schema import SCAN_STATES

    state: Context = ctx.obj
    config = state.config()
    ledger = state.ledger()
    report = assess(config, ledger)
    if check:
        state.emit(report.as_dict(), text=_check_text)
        if not report.healthy:
            raise typer.Exit(1)
        return
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
        health = report.beamlines.get(name, {})
        beamlines[name] = {
            "states": per_state,
            "total": sum(per_state.values()),
            "retry_queued": queued.get(name, 0),
            "backlog": health.get("backlog", {}),
            "throughput_24h": health.get("throughput_24h", {}),
            "prune_overdue": health.get("prune_overdue", {}),
        }
    recent = [
        {
            "beamline": row["beamline"],
            "rel": row["rel"],
            "step": row["failed_step"],
            "reason": _reason(row["last_error"]),
            "attempts": row["attempts"],
            "run_id": row["failed_run"],
            "at": iso(row["updated_at"]),
            "cause": _cause(row["cause"], row["last_error"]),
        }
        for row in _failed_scans(ledger, failures)
    ]
    batches = [
        {
            "step": row["step"],
            "beamline": row["beamline"],
            "subject": row["subject"],
            "label": row["label"],
            "reason": _reason(row["last_error"]),
            "attempts": row["attempts"],
            "files": row["files"],
            "run_id": row["run_id"],
            "at": iso(row["updated_at"]),
            "cause": _cause(_stored_cause(ledger, row["run_id"]), row["last_error"]),
        }
        for row in ledger.batch_failures(limit=failures)
    ]
    state.emit(
        {
            "beamlines": beamlines,
            "failures": recent,
            "batch_failures": batches,
            "health": report.as_dict(),
        },
        text=_text,
    )


# -- failures -------------------------------------------------------------------------------
def _failed_scans(ledger: Ledger, limit: int) -> list[sqlite3.Row]:
    """Failed scans no person acknowledged, newest first, with the run that failed and its
    recorded cause (an archive failure's run is its group's)."""
    return ledger.query(
        "SELECT s.beamline, s.rel, s.failed_step, s.last_error, s.attempts, s.updated_at,"
        " CASE WHEN s.failed_step = 'archive' THEN g.run_id ELSE s.run_id END AS failed_run,"
        " f.cause AS cause"
        " FROM scans s LEFT JOIN archive_groups g ON g.id = s.archive_group_id"
        " LEFT JOIN run_failures f ON f.run_id ="
        " (CASE WHEN s.failed_step = 'archive' THEN g.run_id ELSE s.run_id END)"
        " WHERE s.state = 'failed' AND NOT EXISTS (SELECT 1 FROM acknowledged a"
        " WHERE a.subject = 'scan:' || s.id) ORDER BY s.updated_at DESC LIMIT ?",
        (limit,),
    )


def _stored_cause(ledger: Ledger, run_id: str | None) -> str | None:
    if not run_id:
        return None
    rows = ledger.query("SELECT cause FROM run_failures WHERE run_id = ?", (run_id,))
    return str(rows[0]["cause"]) if rows and rows[0]["cause"] else None


def _reason(text: str | None) -> str:
    """The cause line without the attempt count (status shows that in its own column)."""
    return _ATTEMPTS_PREFIX.sub("", text or "no reason recorded")


def _cause(stored: str | None, last_error: str | None) -> dict[str, Any]:
    """The full structure for `--format json`: the failed run's recorded cause, or (a
    refused submission, an older ledger) the reason text with its next step."""
    from dichroism_control.causes import explain_text

    if stored:
        try:
            loaded = json.loads(stored)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            return loaded
    return explain_text(_reason(last_error)).as_dict()


# -- text -----------------------------------------------------------------------------------
def _check_text(report: dict[str, Any]) -> str:
    return "\n".join(problem["message"] for problem in report["problems"])


def _ago(seconds: float | None) -> str:
    from dichroism_control.health import duration

    return "-" if seconds is None else f"{duration(seconds)} ago"


def _service_lines(health: dict[str, Any]) -> list[str]:
    from dichroism_control.output import local_time, record

    watcher = health["watcher"]
    if watcher["state"] == "never":
        watcher_text = "never ran with this ledger"
    else:
        watcher_text = (
            f"{watcher['state']}: heartbeat {_ago(watcher.get('age_seconds'))} "
            f"(pid {watcher.get('pid')} on {watcher.get('host')}, up since "
            f"{local_time(watcher.get('started_at'))})"
        )
        if watcher["state"] == "stopped":
            watcher_text = f"stopped at {local_time(watcher.get('stopped_at'))} (clean shutdown)"
    lifecycle = health["lifecycle"]
    lifecycle_text = (
        f"last pass {_ago(lifecycle.get('age_seconds'))}"
        if lifecycle.get("last_pass_at")
        else "no pass recorded"
    )
    if lifecycle.get("errors"):
        lifecycle_text += f" with {len(lifecycle['errors'])} error(s): {lifecycle['errors'][0]}"
    flight = health["flight_check"]
    flight_text = (
        "never"
        if flight["verdict"] == "never"
        else f"{flight['verdict']} at {local_time(flight.get('at'))}"
        + (f": {flight['detail']}" if flight.get("detail") else "")
    )
    fields: list[tuple[str, Any]] = [
        ("Watcher", watcher_text),
        ("Lifecycle", lifecycle_text),
        ("Flight Check", flight_text),
    ]
    crash = health.get("last_unclean_restart")
    if crash:
        fields.append(
            (
                "Last Crash",
                f"restarted at {local_time(crash.get('at'))} after pid "
                f"{crash.get('previous_pid')} stopped without a clean shutdown",
            )
        )
    return [record(fields)]


def _text(report: dict[str, Any]) -> str:
    from dichroism_control.health import STAGE_LABELS, STAGES
    from dichroism_control.ledger_schema import SCAN_STATES
    from dichroism_control.output import human_bytes, local_time, table

    health = report["health"]
    lines = _service_lines(health)
    lines.append("")
    rows = [
        [name, *(info["states"][s] for s in SCAN_STATES), info["total"]]
        for name, info in report["beamlines"].items()
    ]
    headers = ["Beamline", *(s.replace("_", " ").title() for s in SCAN_STATES), "Total"]
    lines.append(table(rows, headers))
    waiting = {n: i["retry_queued"] for n, i in report["beamlines"].items() if i["retry_queued"]}
    if waiting:
        lines.append(
            "waiting for a retry: " + ", ".join(f"{n}: {c}" for n, c in sorted(waiting.items()))
        )

    backlog = [
        [
            name,
            STAGE_LABELS.get(stage, stage),
            item["count"],
            human_bytes(item["bytes"]),
            _ago(item["oldest_age_seconds"]).removesuffix(" ago"),
            local_time(item["oldest_at"]),
        ]
        for name, info in report["beamlines"].items()
        for stage in STAGES
        if (item := info["backlog"].get(stage))
    ]
    lines.append("")
    if backlog:
        lines.append("Backlog:")
        lines.append(table(backlog, ["Beamline", "Stage", "Scans", "Size", "Oldest", "Since"]))
    else:
        lines.append("Backlog: none")

    throughput = []
    for name, info in report["beamlines"].items():
        moved = info["throughput_24h"]
        if not moved:
            continue
        transferred, archived = moved["transferred"], moved["archived"]
        throughput.append(
            [
                name,
                f"{transferred['scans_per_hour']:g}",
                human_bytes(transferred["bytes_per_hour"]),
                f"{archived['scans_per_hour']:g}",
                human_bytes(archived["bytes_per_hour"]),
            ]
        )
    lines.append("")
    lines.append("Throughput, last 24 h (per hour):")
    lines.append(
        table(
            throughput,
            ["Beamline", "Transferred", "Transferred Size", "Archived", "Archived Size"],
        )
    )

    lines.append("")
    if health["waiting_for_a_person"]:
        lines.append(f"Waiting for a person ({len(health['waiting_for_a_person'])}):")
        for run in health["waiting_for_a_person"]:
            lines.append(
                f"  {run.get('label') or run.get('run_id')}: {run.get('cause') or 'INACTIVE'}"
            )
    else:
        lines.append("Waiting for a person: none")
    if health["refusals"]:
        lines.append(f"Refused files ({health['refusals_total']}):")
        for item in health["refusals"]:
            lines.append(f"  {local_time(item['last_at'])}  {item['path']}: {item['reason']}")

    if report["failures"]:
        lines.append("")
        lines.append(f"Recent failures ({len(report['failures'])}):")
        for item in report["failures"]:
            lines.append(
                f"  {local_time(item['at'])}  {item['beamline']} {item['rel']}  "
                f"[{item['step']}, {item['attempts']} attempt(s)]: {item['reason']}"
            )
    if report["batch_failures"]:
        lines.append("")
        lines.append(f"Failed archive groups / prune batches ({len(report['batch_failures'])}):")
        for item in report["batch_failures"]:
            files = f", {item['files']} file(s) kept" if item["files"] is not None else ""
            lines.append(
                f"  {local_time(item['at'])}  {item['beamline']} {item['step']} "
                f"{item['subject']} [{item['attempts']} attempt(s){files}]: {item['reason']}"
            )
    if not report["failures"] and not report["batch_failures"]:
        lines.append("")
        lines.append("No failures")

    lines.append("")
    if health["healthy"]:
        lines.append("Health: OK")
    else:
        lines.append(f"Health: {len(health['problems'])} problem(s)")
        lines.extend(f"  - {p['message']}" for p in health["problems"])
    return "\n".join(lines)
