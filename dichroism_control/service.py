"""`dichroism watch` as one object: the watcher (detects, records) wired to the launcher's
dispatcher (submits), plus the lifecycle loop on its own thread.

Start order matters: crash recovery settles every scan whose submission outcome is unknown
before anything is claimed; the dispatcher runs before the watcher so the catch-up's
detections are sent at once. Stop order is the reverse: stop detecting, then drain.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dichroism_control.launcher import Dispatcher
from dichroism_control.launcher.dispatch import DEFAULT_WORKERS
from dichroism_control.watcher import DEFAULT_RESCAN_SECONDS, Watcher

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.config import Config
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.launcher import Launcher
    from dichroism_control.ledger import Ledger


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


class WatchService:
    """Watcher + dispatcher around one Launcher. The caller holds the SubmitLock."""

    def __init__(
        self,
        config: Config,
        launcher: Launcher,
        *,
        beamlines: list[str] | None = None,
        poll: bool = False,
        workers: int = DEFAULT_WORKERS,
        rescan_seconds: float = DEFAULT_RESCAN_SECONDS,
    ) -> None:
        self.launcher = launcher
        self.dispatcher = Dispatcher(launcher, workers=workers)
        self.watcher = Watcher(
            config,
            launcher.ledger,
            beamlines=beamlines,
            poll=poll,
            rescan_seconds=rescan_seconds,
            on_detected=lambda _new: self.dispatcher.wake(),
        )
        self._recovered: dict[str, int] = {}

    @property
    def stats(self) -> WatchStats:
        sent = self.dispatcher.stats
        return WatchStats(
            detected=self.watcher.detected,
            submitted=sent.submitted,
            adopted=sent.adopted,
            failed=sent.failed,
            retries=sent.retries,
            refused=self.watcher.refused,
            recovered=dict(self._recovered),
        )

    def components(self) -> dict[str, bool]:
        """Whether each of the service's threads still runs (the heartbeat reports it)."""
        watcher, dispatcher = self.watcher, self.dispatcher
        return {
            "observers": all(o.is_alive() for o in watcher._observers),
            "settle": watcher._thread is not None and watcher._thread.is_alive(),
            "dispatch": dispatcher._thread is not None and dispatcher._thread.is_alive(),
        }

    def start(self) -> None:
        self._recovered = self.launcher.recover()
        self.dispatcher.start()
        self.watcher.start()

    def stop(self, *, timeout: float = 60.0) -> WatchStats:
        """Stop watching, finish the HTTP calls under way, give back unsent claims."""
        self.watcher.stop(timeout=timeout)
        self.dispatcher.stop(timeout=timeout)
        return self.stats


def start_lifecycle(
    config: Config,
    ledger: Ledger,
    backend: Backend,
    deployment: Deployment,
    stop: threading.Event,
) -> threading.Thread:
    """Run `Lifecycle.run_once()` every `lifecycle.poll_seconds` on its own thread."""
    import logging

    from dichroism_control.lifecycle import Lifecycle
    from dichroism_control.liveness import record_lifecycle_pass

    log = logging.getLogger("dichroism_control.lifecycle")
    loop = Lifecycle(config, ledger, backend, deployment)

    def run() -> None:
        while not stop.is_set():
            try:
                summary = loop.run_once()
                log.info("lifecycle pass: %s", summary)
                if "skipped" not in summary:
                    record_lifecycle_pass(ledger, summary)
            except Exception:
                log.exception(
                    "lifecycle pass failed; next try in %.0f s", config.lifecycle.poll_seconds
                )
            stop.wait(config.lifecycle.poll_seconds)

    thread = threading.Thread(target=run, name="lifecycle", daemon=True)
    thread.start()
    return thread
