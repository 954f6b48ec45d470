"""What the running service writes into the ledger so others can tell it is alive.

`Heartbeat` writes `meta.heartbeat` every `health.heartbeat_seconds` (with whether each of
the service's threads is still running) and `meta.watch_stopped` on a clean stop. At start
it compares the two: a heartbeat with no clean stop after it means the previous service
crashed (kill -9, OOM, power), which it records as `meta.last_unclean_restart` for `status`
and the alert digest. `record_lifecycle_pass` stamps every lifecycle pass. The key layout
is documented in `health`, which reads it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)


def record_lifecycle_pass(
    ledger: Ledger, summary: dict[str, Any], *, now: float | None = None
) -> None:
    errors = [str(e) for e in summary.get("errors", [])][:10]
    ledger.set_meta(
        "last_lifecycle_pass", {"at": time.time() if now is None else now, "errors": errors}
    )


class Heartbeat:
    """`start()` (detects a crashed predecessor), a beat every `interval`, `stop()`."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        interval: float,
        components: Callable[[], dict[str, bool]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.interval = interval
        self.components = components
        self.clock = clock
        self.started_at = 0.0
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> dict[str, Any] | None:
        """Begin beating; returns the unclean-restart record when the previous run crashed."""
        self.started_at = self.clock()
        crashed = self._previous_crash()
        if crashed is not None:
            self.ledger.set_meta("last_unclean_restart", crashed)
            log.warning(
                "the previous watch (pid %s) stopped without a clean shutdown "
                "(last heartbeat %.0f s before this start)",
                crashed["previous_pid"],
                self.started_at - crashed["previous_heartbeat_at"],
            )
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return crashed

    def _previous_crash(self) -> dict[str, Any] | None:
        beat = self.ledger.get_meta("heartbeat")
        if not isinstance(beat, dict) or not isinstance(beat.get("at"), int | float):
            return None
        stopped = self.ledger.get_meta("watch_stopped")
        stop_at = stopped.get("at") if isinstance(stopped, dict) else None
        if isinstance(stop_at, int | float) and stop_at >= beat["at"]:
            return None
        return {
            "at": self.started_at,
            "previous_heartbeat_at": float(beat["at"]),
            "previous_pid": beat.get("pid"),
            "previous_host": beat.get("host"),
        }

    def beat(self) -> None:
        components = self.components() if self.components is not None else {}
        self.ledger.set_meta(
            "heartbeat",
            {
                "at": self.clock(),
                "pid": self.pid,
                "host": self.host,
                "started_at": self.started_at,
                "interval": self.interval,
                "components": components,
            },
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:
                # A locked or full ledger must not kill the heartbeat: the next beat retries,
                # and a stale heartbeat is exactly what `status` should then report.
                log.exception("writing the heartbeat failed")

    def stop(self, *, clean: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        if clean:
            self.ledger.set_meta("watch_stopped", {"at": self.clock(), "pid": self.pid})
