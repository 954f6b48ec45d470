"""`dichroism deploy [--dry-run]`: register the Compute functions, create/update the flows."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)


def deploy(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Overwrite flows edited on the service since the last deploy."
        ),
    ] = False,
    allow_public_starters: Annotated[
        bool,
        typer.Option(
            "--allow-public-starters",
            help="Accept `public` / `all_authenticated_users` in globus.roles.flow_starters.",
        ),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Deploy only this flow or function (repeatable)."),
    ] = None,
) -> None:
    """Register Compute functions and create/update flows; idempotent, shows a diff."""
    from dichroism_control.cli.context import Context
    from dichroism_control.deploy import deploy as run_deploy
    from dichroism_control.deploy import render_text
    from dichroism_control.errors import DichroismError

    state: Context = ctx.obj
    config = state.config()
    # Before the deploy, so it shows even when the deploy then fails.
    warnings = config.warnings()
    for warning in warnings:
        state.warn(warning)
    report = run_deploy(
        config,
        state.backend(),
        dry_run=dry_run,
        force=force,
        allow_public_starters=allow_public_starters,
        only=only or None,
    )
    document = report.as_dict()
    document["warnings"] = warnings
    state.emit(document, text=render_text)
    failed = report.failed
    if failed:
        names = ", ".join(f"{r.name} ({r.action})" for r in failed)
        raise DichroismError(f"deploy incomplete: {names}")
