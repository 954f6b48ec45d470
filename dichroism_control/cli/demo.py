"""`dichroism demo`: the whole pipeline, offline, in under a minute (local backend only).

Deploys to the local backend, runs the watcher + lifecycle loop on a few synthetic scans
(`dichroism_control.local.demo`) and prints each scan's progress live: detected ->
submitted -> transferred -> archived -> pruned. Exit 0 once every scan is pruned, 1 on a
failure or timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context
    from dichroism_control.config import Config


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    *,
    scans: Annotated[int, typer.Option("--scans", min=1, max=20, help="Scans to write.")] = 2,
    beamline: Annotated[
        str | None, typer.Option("--beamline", help="Beamline to write them for (default: first).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=5, help="Give up after this many seconds.")
    ] = 90.0,
) -> None:
    """Run a demo scan through transfer -> SciCat -> HPSS -> prune on the local backend."""
    import logging

    from dichroism_control.errors import DichroismError
    from dichroism_control.local.demo import run_demo

    state: Context = ctx.obj
    config = state.config()
    say = _Printer(quiet=state.fmt == "json")
    # The watcher and lifecycle log every step at INFO; the demo prints its own story.
    if logging.getLogger().level < logging.WARNING and not _verbose():
        logging.getLogger().setLevel(logging.WARNING)
    outcome = run_demo(config, scans=scans, beamline=beamline, timeout=timeout, say=say)
    state.emit(outcome, text=lambda d: _summary_text(d, config))
    if not outcome["ok"]:
        raise DichroismError(outcome["reason"])


def _verbose() -> bool:
    import logging

    return logging.getLogger().level <= logging.DEBUG


class _Printer:
    """Timestamped progress lines on stderr (stdout stays for --format json)."""

    def __init__(self, *, quiet: bool) -> None:
        import time

        self.t0 = time.monotonic()
        self.quiet = quiet

    def __call__(self, text: str) -> None:
        import sys
        import time

        stream = sys.stderr if self.quiet else sys.stdout
        stream.write(f"[{time.monotonic() - self.t0:5.1f}s] {text}\n")
        stream.flush()


def _summary_text(outcome: dict[str, Any], config: Config) -> str:
    if not outcome["ok"]:
        return f"demo FAILED: {outcome['reason']}"
    return (
        f"demo OK: {len(outcome['scans'])} scan(s) went detected -> submitted -> transferred "
        f"-> archived -> pruned.\n"
        f"  tape tree: {config.resolve(config.local.hpss_path)}\n"
        f"  SciCat stand-in: {config.resolve(config.local.catalogue_path)}\n"
        f"  look around: dichroism --config <this config> runs list --flow all | status | "
        f"timers list --all"
    )
