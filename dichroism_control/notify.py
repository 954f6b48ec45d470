"""Alerts that reach a person: a digest through Apprise, at most every `notify.interval_minutes`.

The running `watch` service assembles, from the ledger and the health report, what a person
must hear about: scans that failed permanently, runs waiting for a person (INACTIVE),
prune refusals (files a prune kept, and failed prune batches), a failed flight check, a
backlog older than the threshold, a restart after a crash, a stalled lifecycle loop. Every
item has a key; keys already sent are kept in the ledger (`notified`), so a digest is never
one message per scan and a restart never sends the same items again. A lasting condition
(a backlog) is sent once per instance and its key is forgotten when it clears, so it is sent
again if it comes back.

Apprise URLs carry secrets (tokens, passwords): they come from the environment through
`${VAR}` in config.yml and are never printed or logged; `mask_url` is all anyone sees.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dichroism_control.health import (
    FLIGHT_CHECK_OK,
    Report,
    assess,
    backlog_problems,
    duration,
    timestamp,
)
from dichroism_control.ledger_schema import UNACKNOWLEDGED

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)

SECTIONS = (
    "Scans failed permanently",
    "Runs waiting for a person",
    "Prune refusals",
    "Flight check",
    "Backlog",
    "Service",
)
LAST_SENT_KEY = "notify_last_sent"
_ATTEMPTS_PREFIX = re.compile(r"^after \d+ attempt\(s\): ")

# Sends (title, body); returns the masked targets that failed (empty: all delivered).
Sender = Callable[[str, str], list[str]]


@dataclass(frozen=True)
class Item:
    key: str
    section: str
    text: str
    condition: bool = False  # a lasting condition: its key is forgotten once it clears


def mask_url(url: str) -> str:
    """Only the scheme: tokens hide in the user, password, host and path parts alike."""
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"{scheme}://****"


def prune_kept_files(ledger: Ledger) -> list[dict[str, Any]]:
    """Files a prune run left in place (and re-queued) while deleting others, one dict per
    file: {"key", "beamline", "path", "reason"}. Each time a file is kept is told once (the
    key carries its count); one that now needs a person is told as a failed scan instead."""
    return [
        {
            "key": f"kept:{row['id']}:{row['kept']}",
            "beamline": row["beamline"],
            "path": row["rel"],
            "reason": row["last_error"],
        }
        for row in ledger.query(
            "SELECT id, beamline, rel, kept, last_error FROM scans WHERE kept > 0"
            " AND state != 'failed' AND last_error LIKE 'kept by prune%' ORDER BY updated_at, id"
        )
    ]


# -- what to tell ---------------------------------------------------------------------------
def collect(config: Config, ledger: Ledger, report: Report) -> list[Item]:
    items: list[Item] = []
    for row in ledger.query(
        "SELECT id, beamline, rel, failed_step, attempts, last_error, updated_at FROM scans"
        " WHERE state = 'failed' AND "
        + UNACKNOWLEDGED.format(subject="'scan:' || scans.id")
        + " ORDER BY updated_at, id"
    ):
        reason = _ATTEMPTS_PREFIX.sub("", row["last_error"] or "no reason recorded")
        items.append(
            Item(
                f"scan_failed:{row['id']}:{row['updated_at']}",
                SECTIONS[0],
                f"{row['beamline']} {row['rel']} [{row['failed_step']}, {row['attempts']} "
                f"attempt(s)]: {reason}",
            )
        )
    for run in report.waiting:
        items.append(
            Item(
                f"inactive:{run.get('run_id')}",
                SECTIONS[1],
                f"{run.get('label') or run.get('run_id')}: {run.get('cause') or 'INACTIVE'}",
            )
        )
    for row in ledger.query(
        "SELECT batch, beamline, location, files, last_error, updated_at FROM prune_timers"
        " WHERE state = 'failed' AND "
        + UNACKNOWLEDGED.format(subject="'batch:' || prune_timers.batch")
        + " ORDER BY updated_at"
    ):
        items.append(
            Item(
                f"prune_failed:{row['batch']}:{row['updated_at']}",
                SECTIONS[2],
                f"{row['beamline']} {row['location']} batch {row['batch']}: {row['files']} "
                f"file(s) kept: {row['last_error']}",
            )
        )
    for kept in prune_kept_files(ledger):
        items.append(
            Item(
                f"prune_kept:{kept['key']}",
                SECTIONS[2],
                f"{kept['beamline']} {kept['path']} kept: {kept['reason']}",
            )
        )
    flight = report.flight_check
    if flight.get("verdict", "never") != "never" and (
        str(flight["verdict"]).lower() not in FLIGHT_CHECK_OK
    ):
        detail = f": {flight['detail']}" if flight.get("detail") else ""
        items.append(
            Item(
                f"flight:{flight.get('at')}",
                SECTIONS[3],
                f"flight check {flight['verdict']} at {flight.get('at')}{detail}",
            )
        )
    threshold = config.notify.backlog_age_seconds
    for problem in backlog_problems(config, report, older_than=threshold):
        items.append(Item(f"{problem.code}:{problem.ref}", SECTIONS[4], problem.message, True))
    restart = report.last_unclean_restart
    if restart is not None:
        at = timestamp(restart.get("at"))
        before = timestamp(restart.get("previous_heartbeat_at"))
        gap = f" (silent {duration(at - before)} before it)" if at and before else ""
        items.append(
            Item(
                f"restart:{restart.get('at')}",
                SECTIONS[5],
                f"watch restarted after a crash of pid {restart.get('previous_pid')}{gap}",
            )
        )
    for problem in report.problems:
        if problem.code in ("lifecycle", "watcher_component"):
            items.append(Item(f"{problem.code}:{problem.ref}", SECTIONS[5], problem.message, True))
    return items


def render(config: Config, items: list[Item], host: str) -> tuple[str, str]:
    title = f"{config.notify.title}: {len(items)} new item(s) on {host}"
    lines: list[str] = []
    for section in SECTIONS:
        chosen = [i for i in items if i.section == section]
        if not chosen:
            continue
        lines.append(f"{section} ({len(chosen)}):")
        shown = chosen[: config.notify.max_items]
        lines.extend(f"  - {item.text}" for item in shown)
        if len(chosen) > len(shown):
            lines.append(f"  ... and {len(chosen) - len(shown)} more")
        lines.append("")
    lines.append("Details: `dichroism status` on " + host)
    return title, "\n".join(lines)


# -- delivery ---------------------------------------------------------------------------------
def url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL that may be secret: all of it after `scheme://`, and each
    user, password, host, path and query piece (ports and short pieces aside)."""
    rest = url.split("://", 1)[-1]
    pieces = [p for p in re.split(r"[/:@?&=#,]+", rest) if len(p) >= 4 and not p.isdigit()]
    return sorted({rest, *pieces}, key=len, reverse=True)


class RedactSecrets(logging.Filter):
    """Masks the alert URLs' secrets in log records of the HTTP stack (urllib3 logs the
    request line, token included, at DEBUG: `-vv`)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "****")
            record.msg, record.args = message, None
        return True


_HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3", "requests")


def apprise_sender(urls: list[str]) -> Sender:
    """Send through each URL with Apprise (imported here: it is slow to import)."""
    redact = RedactSecrets([secret for url in urls for secret in url_secrets(url)])
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).addFilter(redact)

    def send(title: str, body: str) -> list[str]:
        import apprise

        # Apprise's own log lines may quote a target: keep them out of our logs entirely
        # and report each target masked instead.
        logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
        failed: list[str] = []
        for index, url in enumerate(urls):
            target = apprise.Apprise()
            where = f"#{index + 1} {mask_url(url)}"
            if not target.add(url):
                failed.append(f"{where} (not a URL Apprise understands)")
            elif not target.notify(title=title, body=body):
                failed.append(where)
        return failed

    return send


class Notifier:
    """Builds and sends the digest; `tick()` once, or `start()`/`stop()` a thread."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        send: Sender | None = None,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.send = send if send is not None else apprise_sender(config.notify.urls)
        self.clock = clock
        self.host = host or socket.gethostname()
        self.interval = config.notify.interval_minutes * 60
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> bool:
        last = self.ledger.get_meta(LAST_SENT_KEY)
        at = last.get("at") if isinstance(last, dict) else None
        return not isinstance(at, int | float) or self.clock() - at >= self.interval

    def tick(self) -> dict[str, Any] | None:
        """Send a digest of what is new, if one is due; returns what was sent (or None)."""
        if not self.due():
            return None
        report = assess(self.config, self.ledger, now=self.clock())
        items = collect(self.config, self.ledger, report)
        sent = {row["key"] for row in self.ledger.query("SELECT key FROM notified")}
        self._forget_cleared(items, sent)
        new = [item for item in items if item.key not in sent]
        if not new:
            return None
        title, body = render(self.config, new, self.host)
        failed = self.send(title, body)
        targets = len(self.config.notify.urls) if self.config.notify.urls else 1
        if failed:
            log.warning("alert digest not delivered to %s", ", ".join(failed))
        if len(failed) >= targets:
            return None  # nobody got it: the same items go out with the next attempt
        now = self.clock()
        with self.ledger.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO notified (key, sent_at) VALUES (?, ?)",
                [(item.key, now) for item in new],
            )
        self.ledger.set_meta(LAST_SENT_KEY, {"at": now, "items": len(new)})
        log.info("alert digest sent: %d item(s)", len(new))
        return {"title": title, "body": body, "items": len(new), "failed": failed}

    def _forget_cleared(self, items: list[Item], sent: set[str]) -> None:
        """Condition keys that no longer hold are forgotten: if it recurs, it is news."""
        current = {item.key for item in items}
        prefixes = ("backlog:", "prune_overdue:", "lifecycle:", "watcher_component:")
        cleared = [k for k in sent if k.startswith(prefixes) and k not in current]
        if cleared:
            with self.ledger.transaction() as conn:
                conn.executemany("DELETE FROM notified WHERE key = ?", [(k,) for k in cleared])
            sent.difference_update(cleared)

    # -- the service thread ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        check_every = min(60.0, self.interval)
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("building or sending the alert digest failed")
            if self._stop.wait(check_every):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
