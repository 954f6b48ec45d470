"""The watcher: watchdog observers -> settle -> ledger. It detects and records, nothing more;
submission belongs to the launcher (`launcher.Dispatcher`), which it wakes.

Threads, and why each exists:
- one watchdog observer per beamline (inotify; a polling observer for NFS/SMB mounts, where
  inotify sees nothing);
- the settle thread: sleeps until the earliest settle deadline (a heap, no per-file timers,
  no directory rescans per event) and records finished scans in batches.

When a file is finished is the settle tracker's rule (settle.py); what is recorded, and what
happens when the ledger cannot be written, is the intake's (intake.py).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from dichroism_control.config import CANARY_DIR
from dichroism_control.intake import LEDGER_ERRORS, Intake, utf8
from dichroism_control.poller import ignore_matcher
from dichroism_control.quietlog import Throttle
from dichroism_control.routing import matches
from dichroism_control.settle import Finished, SettleTracker
from dichroism_control.versions import stale_paths

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from dichroism_control.config import Beamline, Config
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)

# Safety net for events the kernel dropped (inotify queue overflow): a cheap walk now and
# then, comparing against the ledger in chunks.
DEFAULT_RESCAN_SECONDS = 900.0
# Files found in a directory created a moment ago were opened before inotify watched it, so
# their writer's close may never be seen: give its next write (which makes us wait for the
# close) this many settle periods to show up before the size/mtime rule alone decides.
NEW_DIRECTORY_GRACE_FACTOR = 5.0


# -- walking (catch-up, new directories, rescans) ------------------------------------------
# Paths per round of catch-up (ledger look-up, stat, record): the walk is streamed, so a tree
# of 10^5 unrecorded scans never exists in memory as lists of paths, routes and rows at once.
_CATCH_UP_CHUNK = 1000


def walk_files(root: str, beamline: Beamline) -> Iterator[str]:
    """Files below `root` that may be scans: ignored directories are not entered, and
    directory symlinks are not followed (routing refuses what escapes the root anyway).
    Streamed: one directory's listing is open at a time, never the whole tree."""
    ignored = ignore_matcher(beamline.watch.ignore)
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    # The flight check's canaries are never scans, whatever the ignore rules.
                    if entry.name == CANARY_DIR or ignored(entry.name):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                            yield entry.path
                    except OSError:
                        continue
        except OSError as exc:
            log.warning("%s: cannot list (%s)", directory, exc.strerror)


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
        self.clock = clock
        self.tracker = SettleTracker(clock=clock)
        self._observers: list[BaseObserver] = []
        self._settle_cond = threading.Condition()
        self._settle_stop = False
        self._thread: threading.Thread | None = None
        self._throttle = Throttle()
        self.intake = Intake(
            config,
            ledger,
            self.beamlines,
            self.tracker,
            wake=self._wake_settle,
            on_detected=on_detected,
            throttle=self._throttle,
        )

    @property
    def detected(self) -> int:
        return self.intake.detected

    @property
    def refused(self) -> int:
        return self.intake.refused

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

        from dichroism_control.poller import DirectoryPollingObserver

        poll = self.poll[name]
        observer: BaseObserver
        wanted: list[type[FileSystemEvent]]
        if poll:
            # Not watchdog's PollingObserver: it stats every file every interval (most of a
            # core at 10^5 scans). This one stats directories, asks the ledger what is new
            # or changed, and leaves files being written to the settle tracker
            # (docs/ARCHITECTURE.md).
            root = beamline.watch.root.rstrip("/") + "/"
            observer = DirectoryPollingObserver(
                known=self._held_as_they_are,
                ignore=[*beamline.watch.ignore, CANARY_DIR],
                accept=lambda path: matches(beamline, path[len(root) :]),
                interval=beamline.watch.poll_interval_seconds,
                rescan_seconds=self.rescan_seconds,
            )
            # It reports every unrecorded file of a new directory itself: DirCreatedEvent
            # would only walk that directory a second time (catch_up).
            wanted = [events.FileCreatedEvent]
        else:
            observer = Observer()
            wanted = [
                events.FileCreatedEvent,
                events.FileModifiedEvent,
                events.FileMovedEvent,
                events.FileDeletedEvent,
                events.DirCreatedEvent,
                events.DirMovedEvent,
                events.FileClosedEvent,
            ]
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

    def _held_as_they_are(self, paths: list[str]) -> set[str]:
        """Of `paths`, those the ledger holds as they are now (latest version, same size,
        mtime and inode): the poller reports the others, new files and changed ones alike.
        A name that is not UTF-8 counts as held (it can never be recorded: the catch-up
        refuses and names it)."""
        stats: dict[str, tuple[int, int, int]] = {}
        held: set[str] = set()
        for path in paths:
            if not utf8(path):
                held.add(path)
                continue
            try:
                info = os.lstat(path)
            except OSError:
                held.add(path)  # gone: nothing to report
                continue
            stats[path] = (info.st_size, info.st_mtime_ns, info.st_ino)
        return held | (set(stats) - stale_paths(self.ledger, stats))

    # -- catch-up ------------------------------------------------------------------------
    def catch_up(
        self, name: str, *, immediate: bool, below: str | None = None, new_directory: bool = False
    ) -> int:
        """Files the ledger does not hold as they are now (never seen, or changed since
        their latest version was recorded): settle them (or, when `immediate` and untouched
        for settle_seconds already, record them now). Returns how many.

        Streamed in chunks of `_CATCH_UP_CHUNK` paths: each chunk is stat'ed, compared with
        the ledger and recorded (the dispatcher starts on it) before the walk goes on."""
        beamline = self.beamlines[name]
        root = beamline.watch.root
        prefix = root.rstrip("/") + "/"
        first_wait = (
            NEW_DIRECTORY_GRACE_FACTOR * beamline.watch.settle_seconds if new_directory else None
        )
        started = time.monotonic()
        checked = found = 0
        walk = walk_files(below or root, beamline)
        while chunk := list(itertools.islice(walk, _CATCH_UP_CHUNK)):
            checked += len(chunk)
            stats: dict[str, os.stat_result] = {}
            for path in chunk:
                if path in self.tracker:
                    continue
                if not utf8(path):
                    # Never reaches the ledger (SQLite text is UTF-8): refused, named once.
                    if matches(beamline, path.removeprefix(prefix)):
                        self.intake.refuse(
                            name, path, f"{path!r}: the file name is not valid UTF-8"
                        )
                    continue
                try:
                    stats[path] = os.lstat(path)
                except OSError:
                    continue
            # The ledger first (one indexed look-up per 500): nearly every path is known and
            # unchanged on a restart, and the pattern match costs more than the look-up.
            stale = stale_paths(
                self.ledger, {p: (i.st_size, i.st_mtime_ns, i.st_ino) for p, i in stats.items()}
            )
            wanted = sorted(
                p
                for p in stale
                if matches(beamline, p[len(prefix) :] if p.startswith(prefix) else p)
            )
            found += len(wanted)
            now_wall = time.time()
            settled: list[Finished] = []
            wake = False
            for path in wanted:
                info = stats[path]
                if immediate and now_wall - info.st_mtime >= beamline.watch.settle_seconds:
                    settled.append(Finished(path, name, info.st_size, info.st_mtime))
                else:
                    wake |= self.tracker.existing(path, beamline, name, first_wait=first_wait)
            if wake:
                self._wake_settle()
            if settled:
                self.intake.record(settled)
        if below is None:
            log.info(
                "%s: catch-up of %s: %d file(s) checked, %d new or changed (%.1f s)",
                name,
                root,
                checked,
                found,
                time.monotonic() - started,
            )
        elif found:
            log.info("%s: catch-up found %d new or changed file(s) under %s", name, found, below)
        return found

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
                    self.intake.record(finished)
                if self.clock() >= next_rescan:
                    next_rescan = self.clock() + self.rescan_seconds
                    for name in self.beamlines:
                        # A polled root's poller re-lists it over the same period, a few
                        # directories per tick, rather than in one walk here.
                        if not self.poll[name]:
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
            wake = tracker.created(
                src,
                self.beamline,
                self.name,
                require_close=self.require_close,
                # Polling finds a file up to one interval after it appeared.
                found_late_by=0.0
                if self.require_close
                else self.beamline.watch.poll_interval_seconds,
            )
        elif kind == "modified":
            wake = tracker.written(src, self.beamline, self.name, require_close=self.require_close)
        elif kind == "closed":
            wake = tracker.closed(src, self.beamline, self.name)
        if wake:
            self.watcher._wake_settle()
