"""`dichroism watch` (the service) and `dichroism submit PATH` (one scan, same code path)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context
    from dichroism_control.launcher import Launcher


def register(app: typer.Typer) -> None:
    app.command("watch")(watch)
    app.command("submit")(submit)


def _launcher(state: Context, *, command: str) -> Launcher:
    from dichroism_control.launcher import Launcher
    from dichroism_control.ownership import require_owner

    config = state.config()
    backend = require_owner(state.ledger(), state.backend(), command=command)
    return Launcher(config, state.ledger(), backend, state.deployment())


def watch(
    ctx: typer.Context,
    *,
    beamline: Annotated[
        str | None,
        typer.Option("--beamline", help="Watch only this beamline (default: every one)."),
    ] = None,
    poll: Annotated[
        bool,
        typer.Option(
            "--poll", help="Polling observers everywhere (NFS/SMB: inotify sees nothing)."
        ),
    ] = False,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="[HOST:]PORT",
            help="Serve Prometheus metrics on PORT (loopback; HOST:PORT to listen elsewhere).",
        ),
    ] = None,
) -> None:
    """The service: watch for finished scans, start one new_file run each; SIGTERM drains."""
    import logging
    import signal
    import threading

    from dichroism_control.errors import DichroismError
    from dichroism_control.launcher import submit_lock
    from dichroism_control.service import WatchService, start_lifecycle

    state: Context = ctx.obj
    # A service: nobody answers a login prompt, and worker threads must never block on one.
    state.interactive = False
    config = state.config()
    if beamline is not None:
        config.beamline(beamline)  # one-line error for an unknown name
    config.check_watch_roots([beamline] if beamline else None)
    address = None
    if metrics is not None:
        from dichroism_control.metrics import parse_address

        address = parse_address(metrics)  # bad input: exit 2 before anything starts
    lock = submit_lock(config)
    if not lock.acquire():
        raise DichroismError(
            f"another dichroism process (pid {lock.holder()}) is submitting from "
            f"{config.state_path}; stop it first"
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        del frame
        logging.getLogger(__name__).info("%s: draining", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = None
    try:
        from dichroism_control.launcher import Launcher
        from dichroism_control.liveness import Heartbeat
        from dichroism_control.ownership import require_owner

        deployment = state.deployment()
        # The lifecycle loop schedules prune and flight-check timers through this backend:
        # their flows must be declared before the first Timers token (GLOBUS_NOTES).
        backend = require_owner(
            state.ledger(), state.backend(timer_flows=state.timer_flows()), command="watch"
        )
        ledger = state.ledger()
        launcher = Launcher(config, ledger, backend, deployment)
        if address is not None:
            from dichroism_control.metrics import MetricsServer

            server = MetricsServer(config, ledger)
            host, port = server.start(*address)  # before the watcher: a busy port changes nothing
            launcher.on_submitted = server.observe_submit
            logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", host, port)
        watcher = WatchService(
            config, launcher, beamlines=[beamline] if beamline else None, poll=poll
        )
        watcher.start()
        lifecycle = start_lifecycle(config, ledger, backend, deployment, stop)
        heartbeat = Heartbeat(
            ledger,
            interval=config.health.heartbeat_seconds,
            components=lambda: {**watcher.components(), "lifecycle": lifecycle.is_alive()},
        )
        heartbeat.start()
        notifier = None
        if config.notify.urls:
            from dichroism_control.notify import Notifier

            notifier = Notifier(config, ledger)
            notifier.start()
        stop.wait()
        stats = watcher.stop()
        lifecycle.join(timeout=60)
        if notifier is not None:
            notifier.stop()
        heartbeat.stop(clean=True)
    finally:
        if server is not None:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()
    state.emit(
        {"stopped": True, **stats.as_dict()},
        text=lambda d: (
            f"stopped: {d['detected']} detected, {d['submitted']} submitted "
            f"({d['adopted']} adopted), {d['failed']} failed, {d['retries']} retries queued, "
            f"{d['refused']} refused"
        ),
    )


def submit(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The finished scan file.", show_default=False)],
    *,
    beamline: Annotated[str, typer.Option("--beamline", help="The scan's beamline.")],
) -> None:
    """Start the new_file run for one finished scan (never twice: the ledger remembers)."""
    import os
    import time

    from dichroism_control.errors import ConfigError, DichroismError
    from dichroism_control.launcher import submit_lock
    from dichroism_control.routing import matches

    state: Context = ctx.obj
    config = state.config()
    config.beamline(beamline)
    launcher = _launcher(state, command="submit")
    local = os.path.abspath(path)
    scan_route = launcher.route(local, beamline=beamline)
    if not matches(config.beamline(beamline), scan_route.rel):
        # The same rule as the watcher's: an ignored or unmatched name is not a scan.
        raise ConfigError(
            f"{scan_route.local_path}: not a scan for {beamline}"
            f" (beamlines.{beamline}.watch.patterns / ignore)"
        )
    if not os.path.isfile(scan_route.local_path):
        raise ConfigError(f"{scan_route.local_path}: not a file")
    ledger = state.ledger()
    new = launcher.detect(scan_route.local_path, beamline=beamline)
    already = new is None
    lock = submit_lock(config)
    if new is None:
        pass
    elif lock.acquire():
        try:
            launcher.recover()
            launcher.drain(scan_ids=[new.id])
        finally:
            lock.release()
    else:
        # A watcher holds the queue: it sends the scan; wait briefly to report the run id.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = ledger.get_scan(scan_route.local_path)
            if current is not None and current.state not in ("detected", "submitting"):
                break
            time.sleep(0.2)
    scan = ledger.get_scan(scan_route.local_path)
    assert scan is not None
    result: dict[str, Any] = {
        "path": scan.path,
        "beamline": scan.beamline,
        "label": scan.label,
        "state": scan.state,
        "run_id": scan.run_id,
        "attempts": scan.attempts,
        "already_recorded": already,
        "last_error": scan.last_error,
    }
    state.emit(result, text=_submit_text)
    if scan.state == "failed":
        raise DichroismError(f"{scan.path}: submission failed: {scan.last_error}")


def _submit_text(result: dict[str, Any]) -> str:
    if result["already_recorded"]:
        head = f"{result['path']}: already recorded ({result['state']}); not submitted again"
    elif result["state"] in ("detected", "submitting"):
        head = f"{result['path']}: queued ({result['state']}); the watcher will send it"
    else:
        head = f"{result['path']}: {result['state']}"
    lines = [head]
    if result["run_id"]:
        lines.append(f"  run: {result['run_id']}  label: {result['label']}")
    if result["last_error"] and result["state"] != "submitted":
        lines.append(f"  last error: {result['last_error']}")
    return "\n".join(lines)
