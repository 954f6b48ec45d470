"""Is the pipeline healthy? One computation from the ledger, used by `status`,
`status --check`, `doctor`, the alert digests and the metrics endpoint.

It reads only the ledger (and `os.path.lexists` for refused files), so it answers the same
on every backend and from any process: the running `watch` service writes what it knows
into the ledger's meta table (heartbeat, clean stop, last lifecycle pass), and a flight
check writes its verdict there (`last_flight_check`).

Meta keys (JSON values):
- `heartbeat`: {"at", "pid", "host", "started_at", "components": {name: alive}}, every
  `health.heartbeat_seconds` while `watch` runs;
- `watch_stopped`: {"at", "pid"} when `watch` stopped cleanly (SIGTERM/SIGINT);
- `last_unclean_restart`: {"at", "previous_heartbeat_at", "previous_pid"} when `watch`
  started and found a heartbeat without a clean stop after it (it had crashed);
- `last_lifecycle_pass`: {"at", "errors": [...]} after every lifecycle pass;
- `last_flight_check`: {"verdict": "ok" | "failed" | ..., "at": POSIX seconds or ISO-8601,
  "detail": "..."}, written by the flight check (`never` until one has run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import iso_timestamp
from dichroism_control.ledger_schema import UNACKNOWLEDGED

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.ledger import Ledger

# Stages of the backlog, in pipeline order (scan states that still wait for something).
STAGES = ("detected", "submitting", "submitted", "transferred", "archive_submitted", "archived")
STAGE_LABELS = {"archived": "archived (awaiting prune)"}
# When a scan entered its stage (SQL over the scans table).
_STAGE_SINCE = {
    "detected": "created_at",
    "submitting": "created_at",
    "submitted": "COALESCE(submit_started_at, updated_at)",
    "transferred": "COALESCE(transferred_at, updated_at)",
    "archive_submitted": "updated_at",
    "archived": "COALESCE(archived_at, updated_at)",
}
THROUGHPUT_WINDOW = 86400.0
FLIGHT_CHECK_OK = frozenset({"ok", "passed", "succeeded", "success", "healthy"})
REFUSALS_SHOWN = 50
_DAY = 86400.0


# -- runs waiting for a person -------------------------------------------------------------
def waiting_for_a_person(ledger: Ledger) -> list[dict[str, Any]]:
    """Runs the lifecycle last saw INACTIVE (a missing consent, a paused run): one dict per
    run, {"run_id", "flow", "beamline", "label", "since" (POSIX seconds), "cause" (one line)},
    for `status`, `status --check`, `doctor`, the alert digest and the metrics."""
    waiting = ledger.waiting_runs()
    if not waiting:
        return []
    tables = {
        "scan": "SELECT beamline, label FROM scans WHERE id = ?",
        "group": "SELECT beamline, label FROM archive_groups WHERE id = ?",
        "batch": "SELECT beamline, label FROM prune_timers WHERE batch = ?",
    }
    out: list[dict[str, Any]] = []
    for run in waiting:
        kind, _, key = run.subject.partition(":")
        rows = ledger.query(tables[kind], (key,)) if kind in tables else []
        out.append(
            {
                "run_id": run.run_id,
                "flow": run.kind,
                "beamline": rows[0]["beamline"] if rows else None,
                "label": rows[0]["label"] if rows else None,
                "since": run.since,
                "cause": run.reason,
            }
        )
    return out


# -- the report ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One reason the pipeline is unhealthy: a stable `code` and a one-line `message`.

    `ref` pins the instance (the oldest waiting scan, a timestamp) so an alert is sent once
    per instance of a lasting condition, not once per digest."""

    code: str
    message: str
    ref: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass
class Report:
    checked_at: float
    watcher: dict[str, Any]
    lifecycle: dict[str, Any]
    flight_check: dict[str, Any]
    last_unclean_restart: dict[str, Any] | None
    beamlines: dict[str, dict[str, Any]]
    waiting: list[dict[str, Any]]
    refusals: list[dict[str, Any]]
    refusals_total: int
    failed_groups: int
    failed_batches: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checked_at": iso(self.checked_at),
            "problems": [p.as_dict() for p in self.problems],
            "watcher": self.watcher,
            "lifecycle": self.lifecycle,
            "flight_check": self.flight_check,
            "last_unclean_restart": self.last_unclean_restart,
            "beamlines": self.beamlines,
            "waiting_for_a_person": self.waiting,
            "refusals": self.refusals,
            "refusals_total": self.refusals_total,
            "failed_archive_groups": self.failed_groups,
            "failed_prune_batches": self.failed_batches,
        }


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def timestamp(value: Any) -> float | None:
    """POSIX seconds from a number or an ISO-8601 string (naive: UTC), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return iso_timestamp(value)


def duration(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


# -- pieces --------------------------------------------------------------------------------
def _meta(ledger: Ledger, key: str) -> dict[str, Any] | None:
    value = ledger.get_meta(key)
    return value if isinstance(value, dict) else None


def _watcher(config: Config, ledger: Ledger, now: float) -> tuple[dict[str, Any], list[Problem]]:
    beat = _meta(ledger, "heartbeat")
    stopped = _meta(ledger, "watch_stopped")
    stale_after = config.health.heartbeat_stale_seconds
    if beat is None or timestamp(beat.get("at")) is None:
        info: dict[str, Any] = {"state": "never"}
        return info, [
            Problem("watcher", "watcher: no heartbeat ever: `dichroism watch` has not run here")
        ]
    at = timestamp(beat.get("at")) or 0.0
    age = now - at
    info = {
        "heartbeat_at": iso(at),
        "age_seconds": round(age, 1),
        "pid": beat.get("pid"),
        "host": beat.get("host"),
        "started_at": iso(timestamp(beat.get("started_at"))),
        "components": beat.get("components") or {},
    }
    where = f"pid {beat.get('pid')} on {beat.get('host')}"
    stop_at = timestamp((stopped or {}).get("at"))
    if stop_at is not None and stop_at >= at:
        info.update(state="stopped", stopped_at=iso(stop_at))
        return info, [
            Problem(
                "watcher",
                f"watcher: stopped {duration(now - stop_at)} ago (clean shutdown, {where})",
                str(stop_at),
            )
        ]
    if age > stale_after:
        info["state"] = "stale"
        return info, [
            Problem(
                "watcher",
                f"watcher: no heartbeat for {duration(age)} (last from {where}; threshold "
                f"{duration(stale_after)}): is `dichroism watch` running?",
                str(at),
            )
        ]
    info["state"] = "alive"
    dead = sorted(name for name, alive in info["components"].items() if not alive)
    problems = [
        Problem("watcher_component", f"watcher: its {name} thread is not running ({where})", name)
        for name in dead
    ]
    return info, problems


def _lifecycle(
    config: Config, ledger: Ledger, now: float, watcher: dict[str, Any]
) -> tuple[dict[str, Any], list[Problem]]:
    last = _meta(ledger, "last_lifecycle_pass")
    at = timestamp((last or {}).get("at"))
    limit = config.health.lifecycle_stale_seconds
    if at is None:
        info: dict[str, Any] = {"last_pass_at": None}
        # A service that just started has not finished its first pass yet: not a problem
        # until it has run for longer than the threshold.
        up_since = timestamp(watcher.get("started_at"))
        if watcher.get("state") == "alive" and up_since is not None and now - up_since > limit:
            return info, [
                Problem("lifecycle", f"lifecycle: no pass in {duration(now - up_since)} of watch")
            ]
        return info, []
    errors = list((last or {}).get("errors") or [])
    info = {"last_pass_at": iso(at), "age_seconds": round(now - at, 1), "errors": errors}
    if now - at > limit:
        return info, [
            Problem(
                "lifecycle",
                f"lifecycle: no pass for {duration(now - at)} (threshold {duration(limit)})",
                str(at),
            )
        ]
    return info, []


def _flight_check(
    config: Config, ledger: Ledger, now: float
) -> tuple[dict[str, Any], list[Problem]]:
    check = _meta(ledger, "last_flight_check")
    at = timestamp((check or {}).get("at"))
    if check is None or at is None:
        return {"verdict": "never"}, []
    verdict = str(check.get("verdict") or "unknown")
    detail = check.get("detail")
    info = {"verdict": verdict, "at": iso(at), "age_seconds": round(now - at, 1), "detail": detail}
    if verdict.lower() not in FLIGHT_CHECK_OK:
        suffix = f": {detail}" if detail else ""
        return info, [
            Problem(
                "flight_check",
                f"flight check: {verdict} {duration(now - at)} ago{suffix}",
                str(at),
            )
        ]
    limit = config.health.flight_check_max_age_seconds
    if now - at > limit:
        return info, [
            Problem(
                "flight_check",
                f"flight check: last one passed {duration(now - at)} ago (threshold "
                f"{duration(limit)})",
                str(at),
            )
        ]
    return info, []


def _retention_seconds(config: Config, days: int) -> float:
    return days * (_DAY if config.lifecycle.retention_unit == "days" else 1.0)


def _beamlines(config: Config, ledger: Ledger, now: float) -> dict[str, dict[str, Any]]:
    names = sorted(set(config.beamlines))
    for row in ledger.query("SELECT DISTINCT beamline FROM scans"):
        if row["beamline"] not in names:
            names.append(row["beamline"])
    report: dict[str, dict[str, Any]] = {
        name: {
            "backlog": {},
            "failed": 0,
            "acknowledged": 0,
            "throughput_24h": {},
            "prune_overdue": {"compute_dtn": 0, "cfs": 0},
        }
        for name in names
    }
    # One pass over the scans still on their way (the state index skips the history);
    # SQLite gives a bare column (id) from the row that holds the MIN().
    since = " ".join(f"WHEN '{stage}' THEN {expr}" for stage, expr in _STAGE_SINCE.items())
    marks = ", ".join("?" for _ in STAGES)
    for row in ledger.query(
        f"SELECT beamline, state, COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes,"
        f" MIN(CASE state {since} END) AS oldest, id FROM scans WHERE state IN ({marks})"
        f" GROUP BY beamline, state",
        STAGES,
    ):
        oldest = float(row["oldest"]) if row["oldest"] is not None else None
        report[row["beamline"]]["backlog"][row["state"]] = {
            "count": int(row["n"]),
            "bytes": int(row["bytes"]),
            "oldest_at": iso(oldest),
            "oldest_age_seconds": round(now - oldest, 1) if oldest is not None else None,
            "oldest_scan_id": int(row["id"]),
        }
    # A failure a person acknowledged (`dichroism ack`) is dealt with: counted apart.
    unacked = UNACKNOWLEDGED.format(subject="'scan:' || scans.id")
    for row in ledger.query(
        f"SELECT beamline, SUM({unacked}) AS n, COUNT(*) AS total FROM scans"
        " WHERE state = 'failed' GROUP BY beamline"
    ):
        report[row["beamline"]]["failed"] = int(row["n"])
        report[row["beamline"]]["acknowledged"] = int(row["total"]) - int(row["n"])
    window_start = now - THROUGHPUT_WINDOW
    hours = THROUGHPUT_WINDOW / 3600
    for step, column in (("transferred", "transferred_at"), ("archived", "archived_at")):
        for name in names:
            report[name]["throughput_24h"][step] = {
                "scans": 0,
                "bytes": 0,
                "scans_per_hour": 0.0,
                "bytes_per_hour": 0.0,
            }
        for row in ledger.query(
            f"SELECT beamline, COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM scans"
            f" INDEXED BY scans_{column} WHERE {column} >= ? GROUP BY beamline",
            (window_start,),
        ):
            report[row["beamline"]]["throughput_24h"][step] = {
                "scans": int(row["n"]),
                "bytes": int(row["bytes"]),
                "scans_per_hour": round(row["n"] / hours, 2),
                "bytes_per_hour": round(row["bytes"] / hours, 1),
            }
    overdue_after = config.health.prune_overdue_seconds
    for name, settings in config.beamlines.items():
        for location, column, pruned, index, days in (
            (
                "compute_dtn",
                "transferred_at",
                "dtn_pruned_at",
                "scans_dtn_unpruned",
                settings.retention_days.compute_dtn,
            ),
            (
                "cfs",
                "archived_at",
                "cfs_pruned_at",
                "scans_cfs_unpruned",
                settings.retention_days.cfs,
            ),
        ):
            cutoff = now - _retention_seconds(config, days) - overdue_after
            # The partial index holds only unpruned copies: a handful, not the history.
            (row,) = ledger.query(
                f"SELECT COUNT(*) AS n FROM scans INDEXED BY {index} WHERE {pruned} IS NULL"
                f" AND {column} < ? AND beamline = ? AND state != 'failed'",
                (cutoff, name),
            )
            report[name]["prune_overdue"][location] = int(row["n"])
    return report


def _backlog_problems(
    config: Config, beamlines: dict[str, dict[str, Any]], *, override: float | None = None
) -> list[Problem]:
    problems: list[Problem] = []
    limits = config.health.backlog_age_warn_seconds
    for name, info in beamlines.items():
        for stage, item in info["backlog"].items():
            limit = override if override is not None else getattr(limits, stage, None)
            if stage == "archived" or limit is None or item["oldest_age_seconds"] is None:
                continue  # archived scans wait out their retention: see prune_overdue
            if item["oldest_age_seconds"] > limit:
                problems.append(
                    Problem(
                        f"backlog:{name}:{stage}",
                        f"{name}: {item['count']} scan(s) {STAGE_LABELS.get(stage, stage)}, "
                        f"oldest {duration(item['oldest_age_seconds'])} (threshold "
                        f"{duration(limit)})",
                        str(item["oldest_scan_id"]),
                    )
                )
        for location, count in info["prune_overdue"].items():
            if count:
                problems.append(
                    Problem(
                        f"prune_overdue:{name}:{location}",
                        f"{name}: {count} scan(s) past their {location} retention by more than "
                        f"{duration(config.health.prune_overdue_seconds)}, not pruned",
                    )
                )
    return problems


def backlog_problems(
    config: Config, report: Report, *, older_than: float | None = None
) -> list[Problem]:
    """The backlog problems of a report, against `older_than` seconds instead of the health
    thresholds when given (alerts may page later than `status` warns)."""
    return _backlog_problems(config, report.beamlines, override=older_than)


def _refusals(ledger: Ledger) -> tuple[list[dict[str, Any]], int]:
    """Refused files that are still there (renaming or moving one away clears it)."""
    present: list[dict[str, Any]] = []
    total = 0
    for row in ledger.query("SELECT * FROM refusals ORDER BY last_at DESC"):
        if not os.path.lexists(row["path"]):
            continue
        total += 1
        if len(present) < REFUSALS_SHOWN:
            present.append(
                {
                    "path": row["path"],
                    "beamline": row["beamline"],
                    "reason": row["reason"],
                    "kind": row["kind"],
                    "count": row["count"],
                    "first_at": iso(row["first_at"]),
                    "last_at": iso(row["last_at"]),
                }
            )
    return present, total


# -- the one entry point -------------------------------------------------------------------
def assess(
    config: Config,
    ledger: Ledger,
    *,
    now: float | None = None,
    waiting: Callable[[Ledger], list[dict[str, Any]]] = waiting_for_a_person,
) -> Report:
    """Everything `status` shows about health, and the problems (empty: healthy)."""
    now = time.time() if now is None else now
    watcher, problems = _watcher(config, ledger, now)
    lifecycle, found = _lifecycle(config, ledger, now, watcher)
    problems += found
    flight, found = _flight_check(config, ledger, now)
    problems += found
    beamlines = _beamlines(config, ledger, now)
    problems += _backlog_problems(config, beamlines)
    for name, info in beamlines.items():
        if info["failed"]:
            problems.append(
                Problem(
                    f"failed:{name}",
                    f"{name}: {info['failed']} scan(s) failed permanently (see `dichroism "
                    "status`; `dichroism retry` or `dichroism ack` them)",
                    str(info["failed"]),
                )
            )
    (groups,) = ledger.query(
        "SELECT COUNT(*) AS n FROM archive_groups WHERE state = 'failed' AND "
        + UNACKNOWLEDGED.format(subject="'group:' || archive_groups.id")
    )
    (batches,) = ledger.query(
        "SELECT COUNT(*) AS n FROM prune_timers WHERE state = 'failed' AND "
        + UNACKNOWLEDGED.format(subject="'batch:' || prune_timers.batch")
    )
    if groups["n"]:
        problems.append(Problem("failed_archive_groups", f"{groups['n']} archive group(s) failed"))
    if batches["n"]:
        problems.append(
            Problem(
                "failed_prune_batches",
                f"{batches['n']} prune batch(es) failed (their files were kept)",
            )
        )
    waiting_runs = waiting(ledger)
    if waiting_runs:
        problems.append(
            Problem(
                "waiting_for_a_person",
                f"{len(waiting_runs)} run(s) waiting for a person (INACTIVE): first "
                f"{waiting_runs[0].get('label') or waiting_runs[0].get('run_id')}",
            )
        )
    refusals, refusals_total = _refusals(ledger)
    if refusals_total:
        first = refusals[0]
        problems.append(
            Problem(
                "refusals",
                f"{refusals_total} file(s) refused by the watcher, e.g. {first['path']}: "
                f"{first['reason']}",
            )
        )
    return Report(
        checked_at=now,
        watcher=watcher,
        lifecycle=lifecycle,
        flight_check=flight,
        last_unclean_restart=_meta(ledger, "last_unclean_restart"),
        beamlines=beamlines,
        waiting=waiting_runs,
        refusals=refusals,
        refusals_total=refusals_total,
        failed_groups=int(groups["n"]),
        failed_batches=int(batches["n"]),
        problems=problems,
    )
