"""`dichroism timers list|cancel ID`: the prune timers, as the ledger and Timers see them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.cli.context import Context

timers_app = typer.Typer(
    help="Prune timers: list them, or cancel one (its files are rescheduled, never dropped).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(timers_app, name="timers")


def _backend(state: Context) -> Backend:
    # Ask for the timer flows' Timers consent even to list: a Timers token stored without it
    # would make the next create_timer fail with ConsentRequired (GLOBUS_NOTES).
    return state.backend(timer_flows=state.timer_flows())


@timers_app.command("list")
def list_timers(
    ctx: typer.Context,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also succeeded and cancelled batches.")
    ] = False,
) -> None:
    """Prune timers: id, name, next run, files, state (ledger batches + Timers' own list)."""
    from dichroism_control import lifecycle
    from dichroism_control.ownership import visibility

    state: Context = ctx.obj
    ledger = state.ledger()
    backend = _backend(state)
    result = lifecycle.list_timers(ledger, backend, include_done=show_all)
    seen = visibility(ledger, backend)
    result["visibility"] = seen
    if seen["is_owner"] is False:
        # Timers has no role filter: `GET /jobs/` lists "the current user's timers".
        result["visibility_note"] = (
            f"Timers lists only your own timers: those of the ledger's owner ({seen['owner']})"
            " are not shown; the ledger's batches are"
        )
    # A failed batch's reason is its cause in one line; JSON also gets the full structure.
    for timer in result["timers"]:
        if timer.get("run_id") and timer.get("state") == "failed":
            rows = ledger.query(
                "SELECT cause FROM run_failures WHERE run_id = ?", (timer["run_id"],)
            )
            if rows and rows[0]["cause"]:
                timer["cause"] = json.loads(rows[0]["cause"])
    state.emit(result, text=_list_text)


@timers_app.command("cancel")
def cancel(
    ctx: typer.Context,
    timer_id: Annotated[str, typer.Argument(help="Timer id (or prune batch key).")],
) -> None:
    """Delete a timer. Its batch is marked cancelled and its files are rebatched next pass."""
    from dichroism_control import lifecycle
    from dichroism_control.ownership import require_owner

    state: Context = ctx.obj
    # Another identity's delete answers 404, which would release the batch for rebatching
    # while the owner's timer still exists: only the owner may cancel.
    backend = require_owner(state.ledger(), _backend(state), command="timers cancel")
    result = lifecycle.cancel_timer(state.ledger(), backend, timer_id)
    state.emit(result, text=_cancel_text)


def _list_text(result: dict[str, Any]) -> str:
    from dichroism_control.output import local_time, table

    rows = [
        (
            t["id"] or "-",
            t["name"] or "-",
            local_time(t["next_run"]) or "-",
            t["files"] or "-",
            t["state"],
        )
        for t in result["timers"]
    ]
    headers = ("Timer ID", "Name", "Next Run", "Files", "State")
    lines = [table(rows, headers)] if rows else ["no timers"]
    lines.extend(
        f"{t['name']}: {t['last_error']}"
        for t in result["timers"]
        if t["last_error"] and t["state"] in ("failed", "scheduling")
    )
    if result.get("remote_error"):
        lines.append(f"warning: Timers not reachable, ledger view only ({result['remote_error']})")
    if result.get("visibility_note"):
        lines.append(f"note: {result['visibility_note']}")
    return "\n".join(lines)


def _cancel_text(result: dict[str, Any]) -> str:
    if result["batch"] is None:
        return f"deleted timer {result['id']}"
    deleted = f"deleted timer {result['id']}" if result["deleted"] else "no timer to delete"
    return (
        f"{deleted}; batch {result['batch']} cancelled, {result['released_files']} file(s) "
        "will be rebatched on the next lifecycle pass"
    )
