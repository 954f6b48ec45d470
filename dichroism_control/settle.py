"""The settle tracker: files being written, and when each may be declared finished.

"Finished" (DESIGN, GLOBUS_NOTES): with inotify, a close-after-write and then no size/mtime
change for `settle_seconds`; with polling, which sees no close, the size/mtime rule alone.
Files that appear without any write seen (moved in from elsewhere, found at start-up or in a
new directory) also follow the size/mtime rule: there is no close to wait for. One heap of
deadlines, no per-file timers, no directory rescans per event.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dichroism_control.config import Beamline


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

    def created(
        self,
        path: str,
        beamline: Beamline,
        name: str,
        *,
        require_close: bool,
        found_late_by: float = 0.0,
    ) -> bool:
        """A new file. `found_late_by`: at most how long it may have existed before it was
        seen (a poller's interval); the time it has already been quiet since its last write,
        up to that, counts toward its settle period, so a polled file is recorded settle
        after its last write, not settle after the next tick."""
        with self._lock:
            if path in self._entries:
                return False
            entry = _Entry(name, beamline.watch.settle_seconds, require_close)
            self._entries[path] = entry
            wait = entry.settle
            if self._stat_into(path, entry) and found_late_by > 0:
                quiet = time.time() - entry.mtime_ns / 1e9
                wait -= min(max(quiet, 0.0), found_late_by)
            return self._schedule(path, entry, self.clock() + wait)

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

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def waiting_for_close(self, path: str) -> bool:
        """Written with a writer seen (inotify) and not closed: no deadline until the close."""
        with self._lock:
            entry = self._entries.get(path)
            return (
                entry is not None
                and entry.written
                and not entry.closed
                and (entry.require_close and entry.due == math.inf)
            )

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
