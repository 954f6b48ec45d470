"""`dichroism lifecycle [--once]`: follow runs, start archive runs, schedule prune timers.

`dichroism watch` runs the same loop beside the watcher; this command is for running it on
its own (a cron job, a manual nudge, tests). Without `--once` it passes every
`lifecycle.poll_seconds` until SIGINT / SIGTERM, finishing the pass in progress first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context


def register(app: typer.Typer) -> None:
    app.command("lifecycle")(lifecycle)


def lifecycle(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="One pass, print what it did, and exit.")
    ] = False,
) -> None:
    """Follow runs, archive quiet groups to tape, schedule prune timers."""
    import logging
    import signal
    import threading

    from dichroism_control.lifecycle import Lifecycle
    from dichroism_control.ownership import require_owner

    state: Context = ctx.obj
    if not once:
        # Runs unattended: an auth requirement is an error for a person, never a prompt.
        state.interactive = False
    config = state.config()
    deployment = state.deployment()
    deployment.flow_id("prune")  # not deployed: one line, before any call
    # Every flow a timer may run must be in the Timers consent before the first Timers call.
    backend = require_owner(
        state.ledger(), state.backend(timer_flows=state.timer_flows()), command="lifecycle"
    )
    from dichroism_control.liveness import record_lifecycle_pass

    ledger = state.ledger()
    loop = Lifecycle(config, ledger, backend, deployment)
    if once:
        summary = loop.run_once()
        if "skipped" not in summary:
            record_lifecycle_pass(ledger, summary)  # `status` shows when the last pass ran
        state.emit(summary, text=_text)
        return

    log = logging.getLogger("dichroism_control.lifecycle")
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        del frame
        log.info("signal %d: stopping after the current pass", signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    totals: dict[str, int] = {}
    passes = 0

    def on_pass(summary: dict[str, Any]) -> None:
        nonlocal passes
        passes += 1
        if "skipped" not in summary:
            record_lifecycle_pass(ledger, summary)
        for key, value in summary.items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
        for error in summary.get("errors", []):
            log.warning("%s", error)
        log.info("lifecycle pass: %s", _text(summary) or "nothing to do")

    try:
        loop.run_forever(stop.wait, on_pass)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    state.emit({"passes": passes, **dict(sorted(totals.items()))}, text=_text)


def _text(summary: dict[str, Any]) -> str:
    if "skipped" in summary:
        return f"skipped: {summary['skipped']}"
    parts = [f"{key}={value}" for key, value in summary.items() if isinstance(value, int)]
    lines = [", ".join(parts) if parts else "nothing to do"]
    lines.extend(f"error: {e}" for e in summary.get("errors", []))
    return "\n".join(lines)
