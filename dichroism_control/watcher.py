"""The watcher: watchdog observers -> settle -> ledger. It detects and records, nothing more;
submission belongs to the launcher (`launcher.Dispatcher`), which it wakes.

Threads, and why each exists:
- one watchdog observer per beamline (inotify; a polling observer for NFS/SMB mounts, where
  inotify sees nothing);
- the settle thread: sleeps until the earliest settle deadline (a heap, no per-file timers,
  no directory rescans per event) and records finished scans in batches.

"Finished" (DESIGN, GLOBUS_NOTES): with inotify, a close-after-write and then no size/mtime
change for `settle_seconds`; with polling, which sees no close, the size/mtime rule alone.
Files that appear without any write seen (moved in from elsewhere, found at start-up or in a
new directory) also follow the size/mtime rule: there is no close to wait for.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from dichroism_control.config import CANARY_DIR
from dichroism_control.identity import IdentityError, StillChanging, identify
from dichroism_control.ledger import StateError
from dichroism_control.quietlog import Throttle
from dichroism_control.routing import Route, RouteError, matches, route
from dichroism_control.versions import Seen, stale_paths
from dichroism_control.versions import record as record_versions

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from dichroism_control.config import Beamline, Config
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)

# Ledger writes that fail (a full disk, a read-only state_dir, a lock held too long): the
# files wait in the tracker, retried after 5 s, doubling up to a minute.
LEDGER_ERRORS = (sqlite3.Error, StateError)
PAUSE_FIRST_SECONDS = 5.0
PAUSE_MAX_SECONDS = 60.0
# Safety net for events the kernel dropped (inotify queue overflow): a cheap walk now and
# then, comparing against the ledger in chunks.
DEFAULT_RESCAN_SECONDS = 900.0
# Files found in a directory created a moment ago were opened before inotify watched it, so
# their writer's close may never be seen: give its next write (which makes us wait for the
# close) this many settle periods to show up before the size/mtime rule alone decides.
NEW_DIRECTORY_GRACE_FACTOR = 5.0


# -- settling ------------------------------------------------------------------------------
@dataclass
class _Entry:
    beamline: str
    settle: float
    require_close: bool
    written: bool = False  # a write was seen: with inotify, wait for its close
    closed: bool = False
    size: int = -1
    mtime_ns: int = -1
    due: float = math.inf
    gen: int = 0


@dataclass(frozen=True)
class Finished:
    path: str
    beamline: str
    size: int
    mtime: float


class SettleTracker:
    """Files being written, and when each may be declared finished. Thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._gen = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def _schedule(self, path: str, entry: _Entry, due: float) -> bool:
        """Returns True when this deadline is now the earliest (the settle thread must wake)."""
        entry.gen = next(self._gen)
        entry.due = due
        if due == math.inf:
            return False
        earliest = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (due, entry.gen, path))
        return due < earliest

    def _stat_into(self, path: str, entry: _Entry) -> bool:
        try:
            info = os.stat(path)
        except OSError:
            return False
        entry.size, entry.mtime_ns = info.st_size, info.st_mtime_ns
        return True

    def created(self, path: str, beamline: Beamline, name: str, *, require_close: bool) -> bool:
        with self._lock:
            if path in self._entries:
                return False
            entry = _Entry(name, beamline.watch.settle_seconds, require_close)
            self._entries[path] = entry
            self._stat_into(path, entry)
            return self._schedule(path, entry, self.clock() + entry.settle)

    def written(self, path: str, beamline: Beamline, name: str, *, require_close: bool) -> bool:
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                entry = _Entry(name, beamline.watch.settle_seconds, require_close)
                self._entries[path] = entry
            entry.written = True
            # A write seen with inotify means a writer is there: its close is now awaited,
            # even for a file first found by a walk (size/mtime rule).
            entry.require_close = entry.require_close or require_close
            if entry.require_close:
                # Many modify events per file: no stat here, the close will do it.
                entry.closed = False
                return self._schedule(path, entry, math.inf)
            self._stat_into(path, entry)
            return self._schedule(path, entry, self.clock() + entry.settle)

    def closed(self, path: str, beamline: Beamline, name: str) -> bool:
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                entry = _Entry(name, beamline.watch.settle_seconds, True, written=True)
                self._entries[path] = entry
            entry.closed = True
            self._stat_into(path, entry)
            return self._schedule(path, entry, self.clock() + entry.settle)

    def existing(
        self, path: str, beamline: Beamline, name: str, *, first_wait: float | None = None
    ) -> bool:
        """A file that appeared without a write we saw: size/mtime rule only.

        `first_wait` lengthens the first check (files found in a directory just created,
        whose writer may still hold them open: its next write or close decides sooner)."""
        with self._lock:
            if path in self._entries:
                return False
            entry = _Entry(name, beamline.watch.settle_seconds, require_close=False)
            self._entries[path] = entry
            self._stat_into(path, entry)
            wait = entry.settle if first_wait is None else max(first_wait, entry.settle)
            return self._schedule(path, entry, self.clock() + wait)

    def gone(self, path: str) -> None:
        with self._lock:
            self._entries.pop(path, None)

    def next_deadline(self) -> float | None:
        with self._lock:
            while self._heap:
                due, gen, path = self._heap[0]
                entry = self._entries.get(path)
                if entry is not None and entry.gen == gen:
                    return due
                heapq.heappop(self._heap)  # superseded deadline
            return None

    def pop_finished(self) -> list[Finished]:
        """Check every due entry (stat outside the lock) and return the finished ones."""
        now = self.clock()
        due: list[tuple[str, int]] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, gen, path = heapq.heappop(self._heap)
                entry = self._entries.get(path)
                if entry is not None and entry.gen == gen:
                    due.append((path, gen))
        finished: list[Finished] = []
        for path, gen in due:
            try:
                info: os.stat_result | None = os.stat(path)
            except OSError:
                info = None
            with self._lock:
                entry = self._entries.get(path)
                if entry is None or entry.gen != gen:
                    continue  # an event arrived meanwhile; it rescheduled the entry
                if info is None:
                    del self._entries[path]
                    continue
                if entry.require_close and entry.written and not entry.closed:
                    continue
                if (
                    not entry.written
                    and not entry.closed
                    and entry.require_close
                    and not info.st_size
                ):
                    # Created empty and nothing since: most likely a writer that has not
                    # written yet. Its first write (or the rescan) brings it back.
                    entry.due = math.inf
                    continue
                if (info.st_size, info.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    entry.size, entry.mtime_ns = info.st_size, info.st_mtime_ns
                    self._schedule(path, entry, self.clock() + entry.settle)
                    continue
                del self._entries[path]
                finished.append(Finished(path, entry.beamline, info.st_size, info.st_mtime))
        return finished


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- walking (catch-up, new directories, rescans) ------------------------------------------
def walk_files(root: str, beamline: Beamline) -> Iterator[str]:
    """Files below `root` that may be scans: ignored directories are not entered, and
    directory symlinks are not followed (routing refuses what escapes the root anyway)."""
    ignore = beamline.watch.ignore
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            log.warning("%s: cannot list (%s)", directory, exc.strerror)
            continue
        for entry in entries:
            if entry.name == CANARY_DIR or any(
                fnmatch.fnmatch(entry.name, pattern) for pattern in ignore
            ):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    yield entry.path
            except OSError:
                continue


# -- the watcher ---------------------------------------------------------------------------
class Watcher:
    """Observers + settle + catch-up; records finished scans. `start()`, then `stop()`."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        beamlines: list[str] | None = None,
        poll: bool = False,
        rescan_seconds: float = DEFAULT_RESCAN_SECONDS,
        on_detected: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.ledger = ledger
        names = beamlines or sorted(config.beamlines)
        self.beamlines = {name: config.beamline(name) for name in names}
        self.poll = {name: poll or b.watch.poll for name, b in self.beamlines.items()}
        self.rescan_seconds = rescan_seconds
        self.on_detected = on_detected
        self.clock = clock
        self.tracker = SettleTracker(clock=clock)
        self.detected = 0
        self.refused = 0
        self._observers: list[BaseObserver] = []
        self._settle_cond = threading.Condition()
        self._settle_stop = False
        self._refused: set[str] = set()
        self._thread: threading.Thread | None = None
        self._throttle = Throttle()
        self._paused_since: float | None = None
        self._pause_delay = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Watch, catch up, settle."""
        self.config.check_watch_roots(list(self.beamlines))
        for name, beamline in self.beamlines.items():
            self._observers.append(self._observe(name, beamline))
        # Observers first: a file finished during the catch-up walk is seen either way.
        for name in self.beamlines:
            self.catch_up(name, immediate=True)
        self._thread = threading.Thread(target=self._settle_loop, name="settle", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop watching and settling (files not yet settled are found again at the next
        start by the catch-up walk)."""
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout)
        with self._settle_cond:
            self._settle_stop = True
            self._settle_cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _observe(self, name: str, beamline: Beamline) -> BaseObserver:
        from watchdog import events
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        poll = self.poll[name]
        observer: BaseObserver
        if poll:
            observer = PollingObserver(timeout=beamline.watch.poll_interval_seconds)
        else:
            observer = Observer()
        wanted: list[type[FileSystemEvent]] = [
            events.FileCreatedEvent,
            events.FileModifiedEvent,
            events.FileMovedEvent,
            events.FileDeletedEvent,
            events.DirCreatedEvent,
            events.DirMovedEvent,
        ]
        if not poll:
            wanted.append(events.FileClosedEvent)
        observer.schedule(
            _Handler(self, name, beamline, require_close=not poll),
            beamline.watch.root,
            recursive=True,
            event_filter=wanted,
        )
        observer.daemon = True
        observer.start()
        log.info(
            "watching %s for %s (%s, settle %.1f s)",
            beamline.watch.root,
            name,
            "polling" if poll else "inotify",
            beamline.watch.settle_seconds,
        )
        return observer

    # -- catch-up ------------------------------------------------------------------------
    def catch_up(
        self, name: str, *, immediate: bool, below: str | None = None, new_directory: bool = False
    ) -> int:
        """Files the ledger does not hold as they are now (never seen, or changed since
        their latest version was recorded): settle them (or, when `immediate` and untouched
        for settle_seconds already, record them now). Returns how many."""
        beamline = self.beamlines[name]
        root = beamline.watch.root
        stats: dict[str, os.stat_result] = {}
        for path in walk_files(below or root, beamline):
            if path in self.tracker or not matches(beamline, os.path.relpath(path, root)):
                continue
            if not _utf8(path):
                # Never reaches the ledger (SQLite text is UTF-8): refused once, named here.
                self._refuse(name, path, f"{path!r}: the file name is not valid UTF-8; rename it")
                continue
            try:
                stats[path] = os.lstat(path)
            except OSError:
                continue
        stale = stale_paths(
            self.ledger, {p: (i.st_size, i.st_mtime_ns, i.st_ino) for p, i in stats.items()}
        )
        now_wall = time.time()
        settled: list[Finished] = []
        wake = False
        for path in sorted(stale):
            info = stats[path]
            if immediate and now_wall - info.st_mtime >= beamline.watch.settle_seconds:
                settled.append(Finished(path, name, info.st_size, info.st_mtime))
            else:
                first_wait = (
                    NEW_DIRECTORY_GRACE_FACTOR * beamline.watch.settle_seconds
                    if new_directory
                    else None
                )
                wake |= self.tracker.existing(path, beamline, name, first_wait=first_wait)
        if wake:
            self._wake_settle()
        if settled:
            self._record(settled)
        if stale:
            log.info(
                "%s: catch-up found %d new or changed file(s) under %s",
                name,
                len(stale),
                below or root,
            )
        return len(stale)

    # -- settle thread -------------------------------------------------------------------
    def _wake_settle(self) -> None:
        with self._settle_cond:
            self._settle_cond.notify()

    def _settle_loop(self) -> None:
        next_rescan = self.clock() + self.rescan_seconds if self.rescan_seconds > 0 else math.inf
        while True:
            with self._settle_cond:
                if self._settle_stop:
                    return
                deadline = self.tracker.next_deadline()
                wait_until = min(deadline if deadline is not None else math.inf, next_rescan)
                timeout = wait_until - self.clock()
                if timeout > 0:
                    self._settle_cond.wait(None if timeout == math.inf else timeout)
                if self._settle_stop:
                    return
            try:
                finished = self.tracker.pop_finished()
                if finished:
                    self._record(finished)
                if self.clock() >= next_rescan:
                    next_rescan = self.clock() + self.rescan_seconds
                    for name in self.beamlines:
                        self.catch_up(name, immediate=True)
            except LEDGER_ERRORS as exc:
                # The rescan re-finds whatever this pass could not look up or record.
                if self._throttle.due("settle"):
                    log.error("ledger unavailable (%s); finished files are kept and retried", exc)
                time.sleep(1.0)
            except Exception:
                # The loop must survive anything: say it (once a minute) and go on.
                if self._throttle.due("settle-bug"):
                    log.exception("settle loop error")
                time.sleep(1.0)

    def _record(self, finished: list[Finished]) -> None:
        """Route, identify (hash) and record finished files as scan versions."""
        routed: list[tuple[Finished, Route]] = []
        for item in finished:
            try:
                routed.append((item, route(self.config, item.path, beamline=item.beamline)))
            except RouteError as exc:
                self._refuse(item.beamline, item.path, str(exc))
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
                    self._wake_settle()
                continue
            except IdentityError as exc:
                self._refuse(item.beamline, item.path, str(exc))
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
            self._wake_settle()
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

    def _refuse(self, beamline: str, path: str, reason: str) -> None:
        """Name a file that will not be shipped: in the log once, and in the ledger, where
        `status` and the alerts show it (a name that is not UTF-8 is kept escaped)."""
        self.refused += 1
        if path in self._refused or len(self._refused) >= 10_000:
            return
        self._refused.add(path)
        log.warning("refused: %s", reason)
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        try:
            self.ledger.record_refusals([(beamline, shown, reason)])
        except LEDGER_ERRORS as exc:
            if self._throttle.due("refusals"):
                log.error("cannot record refusals in the ledger (%s)", exc)


class _Handler(FileSystemEventHandler):
    """watchdog callbacks for one beamline root; cheap, runs on the observer thread."""

    def __init__(
        self, watcher: Watcher, name: str, beamline: Beamline, *, require_close: bool
    ) -> None:
        super().__init__()
        self.watcher = watcher
        self.name = name
        self.beamline = beamline
        self.root = beamline.watch.root.rstrip("/") + "/"
        self.require_close = require_close

    def _wanted(self, path: str) -> bool:
        return path.startswith(self.root) and matches(self.beamline, path[len(self.root) :])

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:
            log.exception("error handling %r", event)

    def _dispatch(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        tracker = self.watcher.tracker
        wake = False
        if event.is_directory:
            if kind in ("created", "moved"):
                target = os.fsdecode(event.dest_path) if kind == "moved" else src
                if target.startswith(self.root):
                    # A created directory may hold files opened before its watch existed;
                    # a moved one holds finished files.
                    self.watcher.catch_up(
                        self.name,
                        immediate=False,
                        below=target,
                        new_directory=kind == "created" and self.require_close,
                    )
            return
        if kind == "deleted":
            tracker.gone(src)
            return
        if kind == "moved":
            tracker.gone(src)
            dest = os.fsdecode(event.dest_path)
            if self._wanted(dest):
                wake = tracker.existing(dest, self.beamline, self.name)
        elif not self._wanted(src):
            return
        elif kind == "created":
            wake = tracker.created(src, self.beamline, self.name, require_close=self.require_close)
        elif kind == "modified":
            wake = tracker.written(src, self.beamline, self.name, require_close=self.require_close)
        elif kind == "closed":
            wake = tracker.closed(src, self.beamline, self.name)
        if wake:
            self.watcher._wake_settle()
