"""`dichroism runs list|show|logs|cancel`: the flows' runs, from whichever backend runs them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context

runs_app = typer.Typer(
    name="runs",
    help="Runs of the dichroism flows: list, show, logs, cancel.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")


def _flow_ids(state: Context, flow: str) -> dict[str, str]:
    """{flow id: flow name} for --flow (all: every deployed flow)."""
    from dichroism_control.config import FLOW_NAMES
    from dichroism_control.errors import ConfigError

    deployment = state.deployment()
    if flow == "all":
        ids = {deployment.flows[n]: n for n in FLOW_NAMES if n in deployment.flows}
        if not ids:
            deployment.flow_id("new_file")  # the "not deployed" message
        return ids
    if flow not in FLOW_NAMES:
        raise ConfigError(f"--flow: must be one of {', '.join(FLOW_NAMES)}, all; not {flow!r}")
    return {deployment.flow_id(flow): flow}


@runs_app.command("list")
def list_runs(
    ctx: typer.Context,
    *,
    flow: Annotated[
        str, typer.Option("--flow", help="new_file | archive | prune | all.")
    ] = "new_file",
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")] = 20,
) -> None:
    """The latest runs, newest first (pages fetched only as far as --limit needs).

    Lists the runs you own and those shared with you (run or flow manager/monitor): Flows
    lists only the caller's own runs otherwise.
    """
    import itertools

    from dichroism_control.globus_backend import RUN_ROLES, GlobusBackend
    from dichroism_control.ownership import visibility

    state: Context = ctx.obj
    ids = _flow_ids(state, flow)
    backend = state.backend()
    if isinstance(backend, GlobusBackend):
        listing = backend.iter_runs(flow_ids=list(ids), filter_roles=RUN_ROLES)
    else:
        listing = backend.iter_runs(flow_ids=list(ids))
    runs = []
    for run in itertools.islice(listing, limit):
        runs.append({**_summary(run), "flow": ids.get(str(run.get("flow_id")), run.get("flow_id"))})
    doc: dict[str, Any] = {"runs": runs, "count": len(runs), "limit": limit}
    seen = visibility(state.ledger(), backend)
    doc["visibility"] = seen
    if seen["is_owner"] is False:
        roles = state.config().globus.roles
        shared = roles.run_monitors or roles.run_managers
        doc["visibility_note"] = (
            f"listed as {seen['caller']}: runs of the ledger's owner ({seen['owner']}) show only"
            " where you are a run or flow manager/monitor"
            + ("" if shared else "; none are shared (globus.roles.run_monitors is empty)")
        )
    state.emit(doc, text=_list_text)


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run.get("run_id"),
        "flow_id": run.get("flow_id"),
        "status": run.get("status"),
        "label": run.get("label"),
        "tags": run.get("tags", []),
        "start_time": run.get("start_time"),
        "completion_time": run.get("completion_time"),
    }


def _list_text(data: dict[str, Any]) -> str:
    from dichroism_control.output import local_time, table

    note = f"\nnote: {data['visibility_note']}" if data.get("visibility_note") else ""
    if not data["runs"]:
        return "no runs" + note
    rows = [
        [r["run_id"], r["flow"], r["status"], local_time(r["start_time"]), r["label"]]
        for r in data["runs"]
    ]
    return table(rows, ["Run ID", "Flow", "Status", "Started At", "Run Label"]) + note


@runs_app.command("show")
def show(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """One run: a key: value record (`-F json`: the whole run document)."""
    state: Context = ctx.obj
    run = state.backend().get_run(run_id)
    state.emit(run, text=_show_text)


def _show_text(run: dict[str, Any]) -> str:
    from dichroism_control.causes import explain_run
    from dichroism_control.output import local_time, record

    fields: list[tuple[str, Any]] = [
        ("Run ID", run.get("run_id")),
        ("Run Label", run.get("label")),
        ("Run Tags", ", ".join(run.get("tags") or [])),
        ("Status", run.get("status")),
        ("Started At", local_time(run.get("start_time"))),
        ("Completed At", local_time(run.get("completion_time"))),
        ("Flow ID", run.get("flow_id")),
    ]
    details = run.get("details") or {}
    if isinstance(details, dict) and details.get("state_name"):
        fields.append(("State", details["state_name"]))
    if run.get("status") in ("FAILED", "ENDED", "INACTIVE"):
        cause = explain_run(run)
        where = f"{cause.step}: " if cause.step else ""
        fields.append(("Cause", f"{where}{cause.message}"))
        if cause.remedy:
            fields.append(("Next Step", cause.remedy))
    fields.append(("Details", "in the run document: `dichroism runs show ID -F json`"))
    return record(fields)


@runs_app.command("logs")
def logs(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    *,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many entries.")] = 100,
) -> None:
    """The run's log entries, oldest first (paginated); failures with their cause."""
    import itertools

    state: Context = ctx.obj
    entries = list(itertools.islice(state.backend().iter_run_logs(run_id), limit))
    state.emit({"run_id": run_id, "entries": entries}, text=_logs_text)


def _logs_text(data: dict[str, Any]) -> str:
    from dichroism_control.causes import log_entry_cause
    from dichroism_control.output import local_time

    if not data["entries"]:
        return "no log entries"
    lines = []
    for entry in data["entries"]:
        when = local_time(entry.get("time")) or ""
        lines.append(f"{when}  {entry.get('code', '')}: {entry.get('description', '')}".strip())
        cause = log_entry_cause(entry)
        if cause is not None:
            lines.append(f"    cause: {cause.line()}")
    return "\n".join(lines)


@runs_app.command("cancel")
def cancel(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    *,
    by: Annotated[
        str | None, typer.Option("--by", help="Who is cancelling (default: your user@host).")
    ] = None,
) -> None:
    """Cancel a run (Flows ends it FAILED, FlowCanceled) and stop what it served: a scan's
    new_file run leaves the scan failed (cancelled), never sent again until `retry PATH`."""
    from dichroism_control.operations.cancel import cancel as cancel_run
    from dichroism_control.operations.people import who

    state: Context = ctx.obj
    result = cancel_run(state.ledger(), state.backend(), run_id, by=who(by))
    state.emit(result, text=_cancel_text)


def _cancel_text(result: dict[str, Any]) -> str:
    line = f"{result['run_id']}: cancel requested (status {result['status']})"
    return f"{line}\n{result['note']}" if result.get("note") else line
