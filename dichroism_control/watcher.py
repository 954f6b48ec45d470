"""`dichroism watch`: watchdog observers -> settle -> ledger -> worker pool -> run_flow.

Threads, and why each exists:
- one watchdog observer per beamline (inotify; a polling observer for NFS/SMB mounts, where
  inotify sees nothing);
- the settle thread: sleeps until the earliest settle deadline (a heap, no per-file timers,
  no directory rescans per event) and records finished scans in batches;
- the dispatcher: claims due scans from the ledger (the queue lives there, never only in
  memory) and hands them to a small worker pool that does the HTTP without any ledger lock;
  the workers' outcomes are group-committed (`launcher.OutcomeWriter`);
- optionally the lifecycle loop (`dichroism_control.lifecycle`, when installed).

"Finished" (DESIGN, GLOBUS_NOTES): with inotify, a close-after-write and then no size/mtime
change for `settle_seconds`; with polling, which sees no close, the size/mtime rule alone.
Files that appear without any write seen (moved in from elsewhere, found at start-up or in a
new directory) also follow the size/mtime rule: there is no close to wait for.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from dichroism_control.poller import ignore_matcher
from dichroism_control.routing import RouteError, matches

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from dichroism_control.config import Beamline, Config
    from dichroism_control.launcher import Claim, Launcher, Outcome
    from dichroism_control.routing import Route

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
# Safety net for events the kernel dropped (inotify queue overflow): a cheap walk now and
# then, comparing against the ledger in chunks.
DEFAULT_RESCAN_SECONDS = 900.0
# The dispatcher looks at the ledger this often when idle: retries fall due, and other
# processes (`dichroism submit` while the watcher runs) add rows.
IDLE_CHECK_SECONDS = 2.0
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
                    if ignored(entry.name):
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


# -- the service ---------------------------------------------------------------------------
@dataclass
class WatchStats:
    detected: int = 0
    submitted: int = 0
    adopted: int = 0
    failed: int = 0
    retries: int = 0
    refused: int = 0
    recovered: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "detected": self.detected,
            "submitted": self.submitted,
            "adopted": self.adopted,
            "failed": self.failed,
            "retries": self.retries,
            "refused": self.refused,
            "recovered": dict(self.recovered),
        }


class Watcher:
    """Observers + settle + dispatcher around one Launcher. `start()`, then `stop()`."""

    def __init__(
        self,
        config: Config,
        launcher: Launcher,
        *,
        beamlines: list[str] | None = None,
        poll: bool = False,
        workers: int = DEFAULT_WORKERS,
        rescan_seconds: float = DEFAULT_RESCAN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.launcher = launcher
        names = beamlines or sorted(config.beamlines)
        self.beamlines = {name: config.beamline(name) for name in names}
        self.poll = {name: poll or b.watch.poll for name, b in self.beamlines.items()}
        self.workers = workers
        self.max_inflight = workers * 4
        self.rescan_seconds = rescan_seconds
        self.clock = clock
        self.tracker = SettleTracker(clock=clock)
        self.stats = WatchStats()
        self._observers: list[BaseObserver] = []
        self._settle_cond = threading.Condition()
        self._settle_stop = False
        self._dispatch_cond = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._inflight = 0
        self._warm = False
        self._pause_until = 0.0
        self._refused: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit")
        from dichroism_control.launcher import OutcomeWriter

        self._outcomes = OutcomeWriter(launcher.ledger, on_commit=self._committed)
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Recover, watch, catch up, dispatch. The caller holds the SubmitLock."""
        self.stats.recovered = self.launcher.recover()
        for name, beamline in self.beamlines.items():
            os.makedirs(beamline.watch.root, exist_ok=True)
            self._observers.append(self._observe(name, beamline))
        # Observers first: a file finished during the catch-up walk is seen either way.
        for name in self.beamlines:
            self.catch_up(name, immediate=True)
        for target, thread_name in (
            (self._settle_loop, "settle"),
            (self._dispatch_loop, "dispatch"),
        ):
            thread = threading.Thread(target=target, name=thread_name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, *, timeout: float = 60.0) -> WatchStats:
        """Stop watching, finish the HTTP calls under way, give back unsent claims."""
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout)
        with self._settle_cond:
            self._settle_stop = True
            self._settle_cond.notify_all()
        with self._dispatch_cond:
            self._stopping = True
            self._dispatch_cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._pool.shutdown(wait=True)
        try:
            self._outcomes.flush()
        except Exception:
            log.exception(
                "recording %d outcome(s) failed; those scans are looked up at the next start",
                self._outcomes.pending(),
            )
        return self.stats

    def _observe(self, name: str, beamline: Beamline) -> BaseObserver:
        from watchdog import events
        from watchdog.observers import Observer

        from dichroism_control.poller import DirectoryPollingObserver

        poll = self.poll[name]
        observer: BaseObserver
        wanted: list[type[FileSystemEvent]]
        if poll:
            # Not watchdog's PollingObserver: it stats every file every interval (most of a
            # core at 10^5 scans). This one stats directories, asks the ledger what is new,
            # and leaves files being written to the settle tracker (docs/ARCHITECTURE.md).
            root = beamline.watch.root.rstrip("/") + "/"
            observer = DirectoryPollingObserver(
                known=self.launcher.ledger.known_among,
                ignore=beamline.watch.ignore,
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

    # -- catch-up ------------------------------------------------------------------------
    def catch_up(
        self, name: str, *, immediate: bool, below: str | None = None, new_directory: bool = False
    ) -> int:
        """Files present but unknown to the ledger: settle them (or, when `immediate` and
        untouched for settle_seconds already, record them now). Returns how many.

        Streamed in chunks of `_CATCH_UP_CHUNK` paths: each chunk is looked up, stat'ed and
        recorded (the dispatcher starts on it) before the walk goes on."""
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
            # The ledger first (one indexed look-up per 500): nearly every path is known on a
            # restart, and the pattern match costs more than the look-up.
            unknown = [
                p
                for p in self.launcher.unknown_paths([p for p in chunk if p not in self.tracker])
                if matches(beamline, p[len(prefix) :] if p.startswith(prefix) else p)
            ]
            found += len(unknown)
            now_wall = time.time()
            settled: list[Finished] = []
            wake = False
            for path in unknown:
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if immediate and now_wall - info.st_mtime >= beamline.watch.settle_seconds:
                    settled.append(Finished(path, name, info.st_size, info.st_mtime))
                else:
                    wake |= self.tracker.existing(path, beamline, name, first_wait=first_wait)
            if wake:
                self._wake_settle()
            if settled:
                self._record(settled)
        if below is None:
            log.info(
                "%s: catch-up of %s: %d file(s) checked, %d unrecorded (%.1f s)",
                name,
                root,
                checked,
                found,
                time.monotonic() - started,
            )
        elif found:
            log.info("%s: catch-up found %d unrecorded file(s) under %s", name, found, below)
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
                    self._record(finished)
                if self.clock() >= next_rescan:
                    next_rescan = self.clock() + self.rescan_seconds
                    for name in self.beamlines:
                        # A polled root's poller re-lists it over the same period, a few
                        # directories per tick, rather than in one walk here.
                        if not self.poll[name]:
                            self.catch_up(name, immediate=True)
            except Exception:
                # The loop must survive anything (a full disk, a locked ledger): log and go on.
                log.exception("settle loop error")
                time.sleep(1.0)

    def _record(self, finished: list[Finished]) -> None:
        found: list[tuple[Route, int, float]] = []
        for item in finished:
            try:
                found.append(
                    (self.launcher.route(item.path, beamline=item.beamline), item.size, item.mtime)
                )
            except RouteError as exc:
                self.stats.refused += 1
                if item.path not in self._refused and len(self._refused) < 10_000:
                    self._refused.add(item.path)
                    log.warning("refused: %s", exc)
        new = self.launcher.detect_many(found)
        if new:
            self.stats.detected += new
            with self._dispatch_cond:
                self._dirty = True
                self._dispatch_cond.notify()

    # -- dispatcher ----------------------------------------------------------------------
    def wake(self) -> None:
        with self._dispatch_cond:
            self._dirty = True
            self._dispatch_cond.notify()

    def _dispatch_loop(self) -> None:
        next_check = 0.0
        while True:
            with self._dispatch_cond:
                while True:
                    if self._stopping:
                        return
                    now = self.clock()
                    if now < self._pause_until:
                        self._dispatch_cond.wait(self._pause_until - now)
                        continue
                    capacity = self.max_inflight if self._warm else 1
                    free = capacity - self._inflight
                    wanted = self._dirty or now >= next_check
                    # Claim in batches: wait until half the pipeline is free (or it is empty).
                    if wanted and free > 0 and (free >= capacity // 2 or self._inflight == 0):
                        self._dirty = False
                        break
                    # Not wanted: sleep until the next check. Wanted but full: the worker
                    # whose finish makes the condition above true notifies.
                    self._dispatch_cond.wait(None if wanted else next_check - now)
            try:
                claims = self.launcher.claim(limit=free)
            except Exception:
                log.exception("claiming scans from the ledger failed")
                claims = []
                next_check = self.clock() + IDLE_CHECK_SECONDS
            if claims:
                with self._dispatch_cond:
                    self._inflight += len(claims)
                    if len(claims) == free:
                        self._dirty = True  # there may be more
                for claim in claims:
                    self._pool.submit(self._work, claim)
            else:
                due = self.launcher.next_due()
                now = self.clock()
                wall = time.time()
                # next_attempt_at is wall-clock time; the loop runs on the monotonic clock.
                until_due = (due - wall) if due is not None else IDLE_CHECK_SECONDS
                next_check = now + min(max(until_due, 0.05), IDLE_CHECK_SECONDS)

    def _work(self, claim: Claim) -> None:
        outcome: Outcome | None = None
        try:
            with self._dispatch_cond:
                stopping = self._stopping
            if stopping:
                outcome = self.launcher.release(claim)
            else:
                outcome = self.launcher.attempt(claim, record=self._outcomes)
        except Exception:
            log.exception("%s: submission worker error", claim.scan.path)
        finally:
            with self._dispatch_cond:
                self._inflight -= 1
                if outcome is not None:
                    self._count(outcome)
                self._dirty = True
                # Wake the dispatcher only when it can act (see _dispatch_loop): once per
                # half pipeline rather than once per run.
                capacity = self.max_inflight if self._warm else 1
                free = capacity - self._inflight
                if free > 0 and (free >= capacity // 2 or self._inflight == 0):
                    self._dispatch_cond.notify()

    def _committed(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """Retries just became claimable rows: the dispatcher looks again."""
        if any(fields.get("state") == "detected" for _, fields in batch):
            self.wake()

    def _count(self, outcome: Outcome) -> None:
        self._warm = True
        if outcome.state == "submitted":
            self.stats.submitted += 1
            self.stats.adopted += int(outcome.adopted)
        elif outcome.state == "failed":
            self.stats.failed += 1
        elif outcome.state == "detected":
            self.stats.retries += 1
        if outcome.pause_until is not None:
            # pause_until is wall-clock; convert for the monotonic loop.
            pause = self.clock() + max(0.0, outcome.pause_until - time.time())
            self._pause_until = max(self._pause_until, pause)


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


# -- the optional lifecycle hook -----------------------------------------------------------
def load_lifecycle() -> type[Any] | None:
    """`dichroism_control.lifecycle.Lifecycle`, or None while that module does not exist."""
    try:
        module = importlib.import_module("dichroism_control.lifecycle")
    except ModuleNotFoundError as exc:
        if exc.name == "dichroism_control.lifecycle":
            return None
        raise
    lifecycle: type[Any] | None = getattr(module, "Lifecycle", None)
    return lifecycle


def start_lifecycle(
    config: Config, ledger: Any, backend: Any, deployment: Any, stop: threading.Event
) -> threading.Thread | None:
    """Run `Lifecycle.run_once()` every `lifecycle.poll_seconds` on its own thread."""
    cls = load_lifecycle()
    if cls is None:
        log.info("lifecycle loop not installed; watching only")
        return None
    loop = cls(config, ledger, backend, deployment)

    def run() -> None:
        while not stop.is_set():
            try:
                summary = loop.run_once()
                log.info("lifecycle pass: %s", summary)
            except Exception:
                log.exception(
                    "lifecycle pass failed; next try in %.0f s", config.lifecycle.poll_seconds
                )
            stop.wait(config.lifecycle.poll_seconds)

    thread = threading.Thread(target=run, name="lifecycle", daemon=True)
    thread.start()
    return thread
