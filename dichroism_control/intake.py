"""Intake: finished files -> routed, identified (content hash) and recorded as scan versions.

When the ledger cannot be written (a full disk, a read-only state_dir, a lock held too long)
the files wait in the settle tracker and are retried after 5 s, doubling up to a minute:
nothing is dropped and nothing is sent (only a recorded scan is ever claimed). Files that will
never be shipped are refused: named in the log once and in the ledger's refusals.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dichroism_control.database import StateError
from dichroism_control.identity import IdentityError, StillChanging, identify
from dichroism_control.quietlog import Throttle
from dichroism_control.routing import Route, RouteError, route
from dichroism_control.versions import Seen, stale_paths
from dichroism_control.versions import record as record_versions

if TYPE_CHECKING:
    from dichroism_control.config import Beamline, Config
    from dichroism_control.ledger import Ledger
    from dichroism_control.settle import Finished, SettleTracker

log = logging.getLogger(__name__)

LEDGER_ERRORS = (sqlite3.Error, StateError)
PAUSE_FIRST_SECONDS = 5.0
PAUSE_MAX_SECONDS = 60.0
_REFUSALS_REMEMBERED = 10_000


def utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Intake:
    """Records what the settle tracker declares finished. Called from the settle thread and
    the catch-up (never concurrently with itself for one beamline)."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        beamlines: dict[str, Beamline],
        tracker: SettleTracker,
        *,
        wake: Callable[[], None],
        on_detected: Callable[[int], None] | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.beamlines = beamlines
        self.tracker = tracker
        self.wake = wake
        self.on_detected = on_detected
        self.detected = 0
        self.refused = 0
        self._refused: set[str] = set()
        self._throttle = throttle or Throttle()
        self._paused_since: float | None = None
        self._pause_delay = 0.0

    def record(self, finished: list[Finished]) -> None:
        """Route, identify (hash) and record finished files as scan versions."""
        routed: list[tuple[Finished, Route]] = []
        for item in finished:
            try:
                routed.append((item, route(self.config, item.path, beamline=item.beamline)))
            except RouteError as exc:
                self.refuse(item.beamline, item.path, str(exc))
        if not routed:
            return
        stats = {}
        for _item, found in routed:
            try:
                info = os.lstat(found.local_path)
            except OSError:
                continue  # gone already: nothing to record
            stats[found.local_path] = (info.st_size, info.st_mtime_ns, info.st_ino)
        try:
            stale = stale_paths(self.ledger, stats)
        except LEDGER_ERRORS as exc:
            self._intake_paused([item for item, _ in routed], exc)
            return
        seen: list[Seen] = []
        for item, found in routed:
            if found.local_path not in stale:
                continue
            try:
                identity = identify(found.local_path, real_path=found.real_path)
            except StillChanging:
                # Written to while it was read: not finished after all; settle again.
                if self.tracker.existing(item.path, self.beamlines[item.beamline], item.beamline):
                    self.wake()
                continue
            except IdentityError as exc:
                self.refuse(item.beamline, item.path, str(exc))
                continue
            seen.append(Seen(found.beamline, found.local_path, found.rel, identity))
        try:
            result = record_versions(self.ledger, seen)
        except LEDGER_ERRORS as exc:
            self._intake_paused([item for item, _ in routed], exc)
            return
        self._intake_resumed()
        new = len(result.new_ids)
        if result.new_versions:
            log.info("%d changed file(s) recorded as new versions", result.new_versions)
        if new:
            self.detected += new
            if self.on_detected is not None:
                self.on_detected(new)

    def _intake_paused(self, items: list[Finished], exc: BaseException) -> None:
        """The ledger cannot be written (disk full, read-only, locked): keep every finished
        file in the tracker and try again later; nothing is dropped, nothing is sent (only a
        recorded scan is ever claimed), so exactly-once is untouched."""
        if self._paused_since is None:
            self._paused_since = time.monotonic()
        self._pause_delay = min(max(self._pause_delay * 2, PAUSE_FIRST_SECONDS), PAUSE_MAX_SECONDS)
        wake = False
        for item in items:
            beamline = self.beamlines.get(item.beamline)
            if beamline is not None:
                self.tracker.gone(item.path)
                wake |= self.tracker.existing(
                    item.path, beamline, item.beamline, first_wait=self._pause_delay
                )
        if wake:
            self.wake()
        if self._throttle.due("intake"):
            log.error(
                "ledger cannot be written (%s): intake paused, %d finished file(s) waiting;"
                " retrying every %.0f s",
                exc,
                len(items),
                self._pause_delay,
            )

    def _intake_resumed(self) -> None:
        if self._paused_since is None:
            return
        log.warning(
            "ledger writable again: intake resumed after %.0f s",
            time.monotonic() - self._paused_since,
        )
        self._paused_since = None
        self._pause_delay = 0.0
        self._throttle.clear("intake")

    def refuse(self, beamline: str, path: str, reason: str) -> None:
        """Name a file that will not be shipped: in the log once, and in the ledger, where
        `status` and the alerts show it (a name that is not UTF-8 is kept escaped)."""
        self.refused += 1
        if path in self._refused or len(self._refused) >= _REFUSALS_REMEMBERED:
            return
        self._refused.add(path)
        log.warning("refused: %s", reason)
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        try:
            self.ledger.record_refusals([(beamline, shown, reason)])
        except LEDGER_ERRORS as exc:
            if self._throttle.due("refusals"):
                log.error("cannot record refusals in the ledger (%s)", exc)
