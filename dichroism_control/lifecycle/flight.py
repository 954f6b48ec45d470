"""The recurring flight check: one Globus Timer per beamline, its canary kept present, and
the verdict of every run it starts recorded (`dichroism_control.flight`).

Each pass, with `flight_check.enabled` and the flow deployed:
1. **Canary.** The fixed canary (`.dichroism-canary/<bl>.dat`, fixed content: the timer's
   body carries its size and MD5) is rewritten if it is missing or changed.
2. **Timer.** The wanted timer (name `"<bl> flight check"`, every `interval_hours`, the body
   of this deployment) is compared with what meta `flight_check_timers` recorded; a new
   or changed one replaces the old (deleted first: a 404 is fine). Exactly once across a
   crash: the entry is committed as `scheduling` before `create_recurring_flow_timer`, and
   a `scheduling` entry is looked up by name before a timer is created again. A run that
   should have come and has not for two intervals makes the pass look for the timer, and
   recreate it if it is gone (deleted by hand, expired).
3. **Runs.** Timers starts the runs with our tags and no label: each beamline's newest run
   with its flight tag is awaited only once one is due (`next_due`), so a pass does not
   read 12 hours of run history. A final run is judged and recorded in meta
   `last_flight_check`; an INACTIVE one is noted as waiting for a person.
With `enabled: false` the timers are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from dichroism_control.backend import FINAL_STATUSES, run_start_time
from dichroism_control.errors import BackendError, PermanentBackendError
from dichroism_control.flight import canary as canaries
from dichroism_control.flight.request import FLOW, flight_tag
from dichroism_control.flight.request import request as flight_request
from dichroism_control.flight.verdict import Who, judge, record
from dichroism_control.lifecycle.base import CLOCK_SKEW_SECONDS, Step, timer_id_of
from dichroism_control.lifecycle.follow import Awaited, Listing

log = logging.getLogger(__name__)
TIMERS_KEY = "flight_check_timers"
# What a timer-started run's verdict can name (the lifecycle has no terminal to log in from).
TIMER_WHO = Who(
    identity="the identity that owns this ledger's runs (`dichroism whoami` as it)",
    login="dichroism login",
)


def timer_name(beamline: str) -> str:
    return f"{beamline} flight check"


class FlightChecks(Step):
    """The recurring flight check's timers, canaries and runs (see the module docstring)."""

    def _entries(self) -> dict[str, dict[str, Any]]:
        value = self.ledger.get_meta(TIMERS_KEY)
        return dict(value) if isinstance(value, dict) else {}

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        self.ledger.set_meta(TIMERS_KEY, entries)

    def _enabled(self, flows: dict[str, str]) -> bool:
        return (
            self.config.flight_check.enabled
            and FLOW in flows
            and ("flight_check_endpoint" in self.deployment.functions)
        )

    # -- runs ------------------------------------------------------------------------------
    def awaited(self, flows: dict[str, str]) -> list[Awaited]:
        if FLOW not in flows:
            return []
        now = self.clock()
        found = []
        for beamline, entry in sorted(self._entries().items()):
            due = entry.get("next_due")
            if entry.get("state") == "scheduled" and due is not None and now >= float(due):
                since = float(due) - CLOCK_SKEW_SECONDS
                found.append(Awaited("tag", flight_tag(beamline), FLOW, since))
        return found

    def follow(self, listing: Listing, summary: Counter[str]) -> None:
        entries = self._entries()
        changed = False
        for beamline, entry in entries.items():
            run = listing.get("tag", flight_tag(beamline))
            if run is None or str(run.get("run_id")) == entry.get("last_run_id"):
                continue
            started = run_start_time(run)
            if started is not None and started < float(entry.get("last_started") or 0):
                continue  # older than the run last recorded: nothing new
            self.note_waiting(FLOW, [(run, f"flight:{beamline}")], summary)
            status = run.get("status")
            if status not in FINAL_STATUSES and status != "INACTIVE":
                continue
            if status == "INACTIVE" and entry.get("inactive_run") == run.get("run_id"):
                continue  # already told
            canary = canaries.fixed(self.config, beamline)
            verdict = judge(
                run,
                canary=canary,
                config=self.config,
                who=TIMER_WHO,
                delete_source=False,
                at=self.clock(),
            )
            record(self.ledger, [verdict])
            summary[f"flight_check_{verdict.verdict}"] += 1
            if status == "INACTIVE":
                entry["inactive_run"] = run.get("run_id")
            else:
                entry["last_run_id"] = str(run.get("run_id"))
                base = started if started is not None else self.clock()
                entry["last_started"] = base
                entry["next_due"] = base + self._interval()
            changed = True
        if changed:
            self._save(entries)

    # -- timers and canaries ------------------------------------------------------------------
    def _interval(self) -> float:
        return float(self.config.flight_check.interval_hours) * 3600.0

    def ensure(self, flows: dict[str, str], summary: Counter[str], errors: list[str]) -> None:
        entries = self._entries()
        if not self._enabled(flows):
            if entries and not self.config.flight_check.enabled:
                self._remove_all(entries, summary, errors)
            return
        for beamline in sorted(self.config.beamlines):
            try:
                _, rewritten = canaries.keep_fixed(self.config, beamline)
            except OSError as exc:
                errors.append(f"flight check canary of {beamline}: {exc}")
                continue
            if rewritten:
                summary["flight_canaries_written"] += 1
            try:
                self._ensure_timer(beamline, flows, entries, summary)
            except BackendError as exc:
                errors.append(f"flight check timer of {beamline}: {exc}")
                return  # the backend is in trouble: the next pass tries again
        for gone in sorted(set(entries) - set(self.config.beamlines)):
            self._delete(entries.pop(gone))
            self._save(entries)

    def _wanted(self, beamline: str, flows: dict[str, str]) -> tuple[Any, str]:
        canary = canaries.fixed(self.config, beamline)
        req = flight_request(
            self.config,
            self.deployment,
            canary,
            delete_source=False,
            label=timer_name(beamline),
            tag=flight_tag(beamline),
        )
        spec = {"flow_id": flows[FLOW], "interval": self._interval(), "body": req.timer_body()}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        return req, digest

    def _ensure_timer(
        self,
        beamline: str,
        flows: dict[str, str],
        entries: dict[str, dict[str, Any]],
        summary: Counter[str],
    ) -> None:
        req, digest = self._wanted(beamline, flows)
        entry = entries.get(beamline)
        now = self.clock()
        if entry is not None and entry.get("checksum") == digest:
            if entry.get("state") == "scheduled":
                self._recreate_if_gone(beamline, entry, entries, summary)
                return
            # 'scheduling' after a crash: the timer may exist; adopt it by name.
            found = self._find(timer_name(beamline))
            if found is not None:
                entry.update(state="scheduled", timer_id=timer_id_of(found))
                self._save(entries)
                summary["flight_timers_adopted"] += 1
                return
        elif entry is not None:
            self._delete(entry)  # another body, interval or flow: replace the timer
        start = datetime.fromtimestamp(now + 60.0, UTC)
        entry = {
            "state": "scheduling",
            "name": timer_name(beamline),
            "checksum": digest,
            "next_due": now + 60.0,
            "created_at": now,
        }
        entries[beamline] = entry
        self._save(entries)
        timer = self.backend.create_recurring_flow_timer(
            name=timer_name(beamline),
            interval_seconds=int(self._interval()),
            start=start,
            request=req,
        )
        entry.update(state="scheduled", timer_id=timer_id_of(timer))
        self._save(entries)
        summary["flight_timers_scheduled"] += 1

    def _recreate_if_gone(
        self,
        beamline: str,
        entry: dict[str, Any],
        entries: dict[str, dict[str, Any]],
        summary: Counter[str],
    ) -> None:
        """Two intervals without a run it should have started: is the timer still there?"""
        overdue = float(entry.get("next_due") or 0) + 2 * self._interval()
        checked = float(entry.get("checked_at") or 0)
        now = self.clock()
        if now < overdue or now - checked < self._interval():
            return
        entry["checked_at"] = now
        ids = {timer_id_of(t) for t in self.backend.iter_timers()}
        if entry.get("timer_id") not in ids:
            log.warning("flight check timer of %s is gone; creating it again", beamline)
            entry["checksum"] = None  # the next pass replaces it
            summary["flight_timers_missing"] += 1
        self._save(entries)

    def _find(self, name: str) -> dict[str, Any] | None:
        return next((t for t in self.backend.iter_timers() if t.get("name") == name), None)

    def _delete(self, entry: dict[str, Any]) -> None:
        timer_id = entry.get("timer_id")
        if not timer_id and entry.get("state") == "scheduling":
            found = self._find(str(entry.get("name")))
            timer_id = timer_id_of(found) if found else None
        if not timer_id:
            return
        try:
            self.backend.delete_timer(str(timer_id))
        except PermanentBackendError as exc:
            if exc.http_status != 404:
                raise

    def _remove_all(
        self, entries: dict[str, dict[str, Any]], summary: Counter[str], errors: list[str]
    ) -> None:
        for beamline in sorted(entries):
            try:
                self._delete(entries[beamline])
            except BackendError as exc:
                errors.append(f"flight check timer of {beamline}: {exc}")
                return
            del entries[beamline]
            self._save(entries)
            summary["flight_timers_deleted"] += 1
