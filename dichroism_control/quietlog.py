"""Say a recurring trouble once a minute, not once per attempt.

A full disk or a read-only state directory fails every write, many times a second; an
operator needs one line that says what and how often it is retried, not a traceback storm.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

INTERVAL_SECONDS = 60.0


class Throttle:
    """`due(key)` is True at most once per `interval` for each key."""

    def __init__(
        self, interval: float = INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            return True

    def suppressed(self, key: str) -> int:
        """How many times `key` was silenced since it last spoke (and reset the count)."""
        with self._lock:
            return self._suppressed.pop(key, 0)

    def clear(self, key: str) -> bool:
        """Forget `key` (the trouble is over); True when it had spoken."""
        with self._lock:
            self._suppressed.pop(key, None)
            return self._last.pop(key, None) is not None
