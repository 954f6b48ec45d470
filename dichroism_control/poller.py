"""A polling observer whose steady-state cost follows change, not the size of the tree.

NFS/SMB mounts give inotify nothing, so those roots are polled. watchdog's PollingObserver
stats every FILE each interval and keeps two snapshot objects per file: over 10^5 scans that
was 62 % of a core and 267 MB idle (issue 14). This one keeps state per DIRECTORY only:

- every interval it stats each directory and lists only those whose identity (inode, mtime,
  link count) changed, or whose last listing was "racy" (below);
- a file in a listed directory is reported (`FileCreatedEvent`) unless the ledger holds it
  as it is now: the `known` callable answers for a whole directory at once (its size, mtime
  and inode against the latest recorded version, chunked SQL), never an in-memory set of
  every file; a new directory is reported (`DirCreatedEvent`) with every file below it that
  the ledger does not hold;
- files being written are not followed here: the watcher's SettleTracker re-stats each
  reported file at its settle deadline until it stops changing;
- the whole tree is re-listed once per `rescan_seconds`, a bounded number of directories per
  tick, so that safety net never spikes.

What it relies on: a directory's mtime changes when an entry is created, renamed in or out,
or unlinked. It does NOT change when an existing file's content changes in place.

The racy rule (git's "racily clean" index entries): with coarse timestamps (1-2 s on SMB and
FAT, a jiffy on Linux filesystems) a file created in the same tick of the filesystem clock as
the directory's last change leaves the mtime as it was. A listing is trusted only when the
directory's mtime is at least `racy_seconds` older than the moment the listing started;
until then the directory is listed again on every tick. The comparison is between the file
server's clock and ours, so the window also absorbs clock skew.

What the spread rescan catches: anything the rule above cannot see or was not shown in time:
a mount whose directory mtimes are coarser than the racy window, a stat answered from a stale
cache, a directory that could not be listed for a while, a file the settle tracker dropped on
a transient error, and a file rewritten in place (its directory's mtime does not move): the
rescan reports it once its size, mtime or inode differ from the version recorded, and the
watcher records a new version.

Symlinks are reported as files (routing refuses those that leave the root) and never
entered; an ignored directory is never entered.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from watchdog.events import DirCreatedEvent, FileCreatedEvent, FileSystemEvent
from watchdog.observers.api import BaseObserver, EventEmitter, EventQueue, ObservedWatch

log = logging.getLogger(__name__)

# Which of these paths the ledger holds as they are now (the watcher passes a chunked lookup).
Known = Callable[[list[str]], Collection[str]]
Stat = Callable[..., os.stat_result]
Scandir = Callable[[str], AbstractContextManager[Iterator[os.DirEntry[str]]]]

# A listing is trusted once the directory's mtime is this much older than the listing: the
# coarsest common timestamp granularity (2 s, FAT/SMB) plus a second of clock skew between
# the file server and this host.
RACY_SECONDS = 3.0
# A directory vanishing with these errors is forgotten; any other error (an NFS hiccup) keeps
# its state for the next tick.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR})


def ignore_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """One compiled regex for the fnmatch patterns: a walk of 10^5 names otherwise spends
    its time in fnmatch, once per name and pattern."""
    translated = [f"(?:{fnmatch.translate(p)})" for p in patterns]
    if not translated:
        return lambda name: False
    regex = re.compile("|".join(translated))
    return lambda name: regex.match(name) is not None


@dataclass(slots=True)
class _Dir:
    ident: tuple[int, int, int]  # (st_ino, st_mtime_ns, st_nlink) the last listing went by
    racy: bool  # mtime too close to that listing to prove later changes would move it
    names: tuple[int, int]  # (count, hash) of the file paths listed: unchanged -> no lookup
    subdirs: tuple[str, ...]


def _ident(info: os.stat_result) -> tuple[int, int, int]:
    # nlink moves when a subdirectory is made or removed, even where mtime is coarse. ctime
    # is left out: it is as coarse as mtime where that matters, and chmod would move it.
    return (info.st_ino, info.st_mtime_ns, info.st_nlink)


class DirectoryPollingEmitter(EventEmitter):
    """Polls one root (see the module docstring). `baseline()` runs in `start()`, so the
    caller's own walk that follows (the watcher's catch-up) misses nothing in between."""

    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        timeout: float = 1.0,
        event_filter: list[type[FileSystemEvent]] | None = None,
        known: Known,
        ignore: Iterable[str] = (),
        accept: Callable[[str], bool] | None = None,
        rescan_seconds: float = math.inf,
        racy_seconds: float = RACY_SECONDS,
        stat: Stat = os.stat,
        scandir: Scandir = os.scandir,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(event_queue, watch, timeout=timeout, event_filter=event_filter)
        if not watch.is_recursive:
            raise ValueError("the directory poller watches whole trees only (recursive=True)")
        self.root = watch.path
        self.interval = timeout
        self._known = known
        self._ignored = ignore_matcher(ignore)
        self._accept = accept
        self.rescan_seconds = rescan_seconds if rescan_seconds > 0 else math.inf
        self._racy_ns = int(racy_seconds * 1e9)
        self._stat = stat
        self._scandir = scandir
        self._clock = clock
        self._wall_ns = wall_ns
        self._dirs: dict[str, _Dir] = {}
        self._warned: set[str] = set()  # each failing directory is warned about once
        self._root_lost = False
        self._rescan_queue: list[str] = []
        self._rescan_per_tick = 1
        self._next_pass = math.inf
        self._next_tick = 0.0
        self._tick_cond = threading.Condition()
        self.ticks = 0
        self.rescanned = 0

    @property
    def directories(self) -> int:
        return len(self._dirs)

    # -- the thread ----------------------------------------------------------------------
    def on_thread_start(self) -> None:
        self.baseline()

    def queue_events(self, timeout: float) -> None:
        if self.stopped_event.wait(max(0.0, self._next_tick - self._clock())):
            return
        # Fixed rate; after a tick longer than the interval, start again from now (no burst).
        self._next_tick = max(self._next_tick + self.interval, self._clock())
        try:
            self.tick()
        except Exception:
            # The thread must survive a locked ledger or a vanished mount: state is only
            # updated after a directory's files were reported, so the next tick retries.
            log.exception("%s: poll failed", self.root)

    def wait_ticks(self, count: int, timeout: float | None = None) -> bool:
        """Wait until `count` ticks have completed since start (tests, benchmarks)."""
        with self._tick_cond:
            return self._tick_cond.wait_for(lambda: self.ticks >= count, timeout)

    # -- polling -------------------------------------------------------------------------
    def baseline(self) -> None:
        """Learn the tree as it is, reporting nothing: the caller's catch-up judges what is
        already there."""
        started = time.monotonic()
        self._add_tree(self.root, report=False)
        self._next_tick = self._clock() + self.interval
        self._next_pass = self._clock() + self.rescan_seconds
        log.info(
            "polling %s: %d directories, baseline in %.1f s",
            self.root,
            len(self._dirs),
            time.monotonic() - started,
        )

    def tick(self) -> None:
        """One poll: stat every directory, list the changed and racy ones, then a slice of
        the spread rescan."""
        try:
            wall = self._wall_ns()  # before any stat: the racy rule needs a lower bound
            changed: list[tuple[str, os.stat_result]] = []
            racy: list[tuple[str, os.stat_result]] = []
            gone: list[str] = []
            for path, state in self._dirs.items():
                info, vanished = self._dir_stat(path)
                if vanished:
                    gone.append(path)
                elif info is not None and _ident(info) != state.ident:
                    changed.append((path, info))
                elif info is not None and state.racy:
                    racy.append((path, info))
            for path in gone:
                self._forget(path)
            # Directories that certainly changed first: their new files are reported before
            # the re-listing of the racy ones (which rarely find anything).
            for path, info in changed + racy:
                if path in self._dirs:  # not under a directory forgotten just now
                    self._refresh(path, info, wall, force=False)
            if self.root not in self._dirs:
                self._add_tree(self.root, report=True)
            self._rescan_step()
        finally:
            with self._tick_cond:
                self.ticks += 1
                self._tick_cond.notify_all()

    def _dir_stat(self, path: str) -> tuple[os.stat_result | None, bool]:
        """(stat, gone): no stat and not gone on a transient error (tried again next tick)."""
        try:
            # The root may be a symlink to the mount; below it, symlinks are never followed.
            info = self._stat(path, follow_symlinks=path == self.root)
        except OSError as exc:
            if exc.errno in _GONE:
                return None, True
            self._warn(path, "cannot stat", exc)
            return None, False
        if not stat.S_ISDIR(info.st_mode):
            return None, True  # replaced by a file or a symlink
        return info, False

    def _list(self, path: str) -> tuple[list[str], list[str]] | None:
        """(file paths, subdirectory names) below `path`, ignore rules applied."""
        files: list[str] = []
        subdirs: list[str] = []
        try:
            with self._scandir(path) as entries:
                for entry in entries:
                    if self._ignored(entry.name):
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        subdirs.append(entry.name)
                    else:
                        files.append(entry.path)
        except OSError as exc:
            self._warn(path, "cannot list", exc)
            return None
        if self._warned:
            self._warned.discard(path)
        return files, subdirs

    def _warn(self, path: str, what: str, exc: OSError) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s: %s (%s); trying again every tick", path, what, exc.strerror)

    def _report(self, files: list[str]) -> None:
        if not files:
            return
        known = self._known(files)
        for path in files:
            # The scan filter after the look-up: nearly every file is known, and the indexed
            # look-up costs less than the pattern match.
            if path not in known and (self._accept is None or self._accept(path)):
                self.queue_event(FileCreatedEvent(path))

    def _refresh(self, path: str, info: os.stat_result, wall: int, *, force: bool) -> None:
        state = self._dirs[path]
        listing = self._list(path)
        if listing is None:
            return  # state unchanged: listed again next tick
        files, subdirs = listing
        names = (len(files), hash(frozenset(files)))
        if force or names != state.names:
            self._report(files)
        present = set(subdirs)
        for name in state.subdirs:
            if name not in present:
                self._forget(os.path.join(path, name))
        for name in subdirs:
            child = os.path.join(path, name)
            if child not in self._dirs:
                self._add_tree(child, report=True)
        # Only now: had anything above raised, the next tick lists this directory again.
        state.ident = _ident(info)
        state.racy = abs(wall - info.st_mtime_ns) < self._racy_ns
        state.names = names
        state.subdirs = tuple(subdirs)

    def _add_tree(self, top: str, *, report: bool) -> None:
        stack = [top]
        while stack and self.should_keep_running():
            path = stack.pop()
            if path in self._dirs:
                continue
            wall = self._wall_ns()
            info, _ = self._dir_stat(path)
            if info is None:
                if path == self.root and not self._root_lost:
                    self._root_lost = True
                    log.warning("%s: watch root unavailable; polling for it", path)
                continue
            listing = self._list(path)
            files, subdirs = listing if listing is not None else ([], [])
            if report:
                self.queue_event(DirCreatedEvent(path))
                self._report(files)
            if path == self.root and self._root_lost:
                self._root_lost = False
                log.warning("%s: watch root back", path)
            self._dirs[path] = _Dir(
                # Unreadable: an identity no stat matches, so every tick tries again.
                _ident(info) if listing is not None else (-1, -1, -1),
                abs(wall - info.st_mtime_ns) < self._racy_ns,
                (len(files), hash(frozenset(files))),
                tuple(subdirs),
            )
            stack.extend(os.path.join(path, name) for name in subdirs)

    def _forget(self, top: str) -> None:
        stack = [top]
        while stack:
            path = stack.pop()
            state = self._dirs.pop(path, None)
            if state is not None:
                stack.extend(os.path.join(path, name) for name in state.subdirs)

    def _rescan_step(self) -> None:
        if not self._rescan_queue:
            now = self._clock()
            if now < self._next_pass:
                return
            # One pass over the directories known now, spread to end within the period.
            self._rescan_queue = list(self._dirs)
            self._next_pass = now + self.rescan_seconds
            ticks = max(1.0, self.rescan_seconds / self.interval)
            self._rescan_per_tick = max(1, math.ceil(len(self._rescan_queue) / ticks))
        for _ in range(self._rescan_per_tick):
            if not self._rescan_queue:
                break
            path = self._rescan_queue.pop()
            if path not in self._dirs:
                continue
            wall = self._wall_ns()
            info, vanished = self._dir_stat(path)
            if vanished:
                self._forget(path)
            elif info is not None:
                self._refresh(path, info, wall, force=True)
                self.rescanned += 1


class DirectoryPollingObserver(BaseObserver):
    """`BaseObserver` with `DirectoryPollingEmitter`s: the same schedule/start/stop/join as
    watchdog's observers, events dispatched on the observer thread as they are there."""

    def __init__(
        self,
        *,
        known: Known,
        ignore: Iterable[str] = (),
        accept: Callable[[str], bool] | None = None,
        interval: float = 1.0,
        rescan_seconds: float = math.inf,
        racy_seconds: float = RACY_SECONDS,
        stat: Stat = os.stat,
        scandir: Scandir = os.scandir,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            DirectoryPollingEmitter,
            timeout=interval,
            known=known,
            ignore=tuple(ignore),
            accept=accept,
            rescan_seconds=rescan_seconds,
            racy_seconds=racy_seconds,
            stat=stat,
            scandir=scandir,
            clock=clock,
            wall_ns=wall_ns,
        )

    def pollers(self) -> list[DirectoryPollingEmitter]:
        return [e for e in self.emitters if isinstance(e, DirectoryPollingEmitter)]

    @property
    def ticks(self) -> int:
        """Ticks completed by every root (the slowest one's count)."""
        return min((poller.ticks for poller in self.pollers()), default=0)

    def wait_ticks(self, count: int, timeout: float | None = None) -> bool:
        """Wait until every root has completed `count` ticks since start."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for poller in self.pollers():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not poller.wait_ticks(count, left):
                return False
        return True
