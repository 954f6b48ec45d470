"""`dichroism check`: run the flight check now; a verdict per step, with the remedy.

Exit 0 when every step of every beamline passed, 1 otherwise. The result is written to the
ledger (`last_flight_check`), which `status`, health, the alerts and the metrics read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.cli.context import Context
    from dichroism_control.flight.verdict import Who


def register(app: typer.Typer) -> None:
    app.command("check")(check)


def check(
    ctx: typer.Context,
    *,
    beamline: Annotated[
        str | None, typer.Option("--beamline", help="Only this beamline (default: every one).")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=1,
            help="Seconds to wait for the runs (default: flight_check.timeout_seconds).",
        ),
    ] = None,
) -> None:
    """Run the flight_check flow now: canary copy, stat, delete; endpoint checks."""
    from dichroism_control.flight.runner import check as run_check

    state: Context = ctx.obj
    config = state.config()
    if beamline is not None:
        config.beamline(beamline)  # one-line error for an unknown name
    deployment = state.deployment()
    backend = state.backend()
    report = run_check(
        config,
        state.ledger(),
        backend,
        deployment,
        who=_who(backend),
        beamlines=[beamline] if beamline else None,
        timeout=timeout,
    )
    state.emit(report.as_dict(), text=_text)
    if not report.ok:
        raise typer.Exit(1)


def _who(backend: Backend) -> Who:
    """Whom a remedy names, known without an HTTP call."""
    from dichroism_control.flight.verdict import Who

    caller = getattr(backend, "caller_identity", None)
    identity = caller() if callable(caller) else None
    if backend.kind == "local":
        return Who(identity="this account (local backend)", login="(no login: local backend)")
    from dichroism_control.auth import credentials_from_env, login_command
    from dichroism_control.errors import ConfigError

    try:
        login = login_command(credentials_from_env())
    except ConfigError:
        login = "dichroism login"
    if identity is None:
        shown = "the identity that runs the flows (`dichroism whoami`)"
    elif identity.kind == "client":
        shown = f"the service client {identity.id}"
    else:
        shown = f"user {identity.id}"
    return Who(identity=shown, login=login)


_MARK = {"ok": "ok", "failed": "FAILED", "skipped": "skipped", "not_run": "-", "unknown": "?"}


def _text(doc: dict[str, Any]) -> str:
    from dichroism_control.output import record

    blocks = []
    for item in doc["beamlines"]:
        fields: list[tuple[str, Any]] = [
            ("Beamline", item["beamline"]),
            ("Verdict", item["verdict"].upper() if item["verdict"] != "ok" else "ok"),
        ]
        if item["run_id"]:
            fields.append(("Run", f"{item['run_id']} {item['status']}  {item['link']}"))
        for step in item["steps"]:
            line = f"{_MARK[step['verdict']]}: {step['detail']}"
            if step.get("remedy"):
                line += f"\nnext: {step['remedy']}"
            fields.append((step["title"][:1].upper() + step["title"][1:], line))
        blocks.append(record(fields))
    verdict = "flight check: ok" if doc["verdict"] == "ok" else "flight check: FAILED"
    return "\n\n".join([*blocks, verdict])
