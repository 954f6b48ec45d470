"""`dichroism scan show PATH`: one scan's story (`dichroism_control.operations.story`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context

scan_app = typer.Typer(
    name="scan",
    help="One scan: every version, its runs (web-app links), tape location, prunes.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(scan_app, name="scan")


@scan_app.command("show")
def show(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="The scan's path on this host.")],
) -> None:
    """Every version of PATH: state, runs, steps, tape location, prunes, last error."""
    from dichroism_control.operations.story import story

    state: Context = ctx.obj
    state.emit(story(state.ledger(), path), text=_text)


def _runs(runs: list[dict[str, Any]]) -> str | None:
    if not runs:
        return None
    lines = []
    for run in runs:
        extra = f" ({run['reason']})" if run.get("reason") else ""
        retried = f", retried {_local(run['retried_at'])}" if run.get("retried_at") else ""
        lines.append(f"{run['run_id']} {run['status']}{retried}  {run['link']}{extra}")
    return "\n".join(lines)


def _local(value: Any) -> str | None:
    from dichroism_control.output import local_time

    return local_time(value)


def _version_fields(version: dict[str, Any]) -> list[tuple[str, Any]]:
    from dichroism_control.output import human_bytes

    steps = version["steps"]
    superseded = f"yes, at {_local(version['superseded_at'])}" if version["superseded"] else "no"
    fields: list[tuple[str, Any]] = [
        ("Version", version["version"]),
        ("State", version["state"]),
        ("Superseded", superseded),
        ("Checksum (MD5)", version["checksum_md5"]),
        ("Size", f"{version['size']} ({human_bytes(version['size'])})"),
        ("Modified", _local(version["mtime"])),
        ("Detected", _local(steps["detected_at"])),
        ("Transferred", _local(steps["transferred_at"]) or "-"),
        ("Archived", _local(steps["archived_at"]) or "-"),
        ("Pruned at DTN", _local(steps["pruned_compute_dtn_at"]) or "-"),
        ("Pruned at CFS", _local(steps["pruned_cfs_at"]) or "-"),
    ]
    tape = version["tape"]
    if tape:
        member = f" (member {tape['member']})" if tape["member"] else " (single file)"
        fields.append(("Tape Location", f"{tape['path']}{member}"))
    else:
        fields.append(("Tape Location", "-"))
    fields.append(("new_file Runs", _runs(version["runs"]["new_file"]) or "-"))
    archive = version["runs"]["archive"]
    if archive:
        fields.append(("Archive Group", f"{archive['group']} ({archive['state']})"))
        fields.append(("Archive Runs", _runs(archive["runs"]) or "-"))
    prunes = []
    for prune in version["runs"]["prune"]:
        run = ""
        if prune["run_id"]:
            run = f", run {prune['run_id']} {prune['status']}  {prune['link']}"
        prunes.append(
            f"{prune['location']}: batch {prune['batch']} ({prune['state']}),"
            f" scheduled for {_local(prune['scheduled_for'])}{run}"
        )
    fields.append(("Prunes", "\n".join(prunes) or "-"))
    if version["kept_by_prunes"]:
        fields.append(("Kept by Prunes", f"{version['kept_by_prunes']} time(s)"))
    error = version["last_error"]
    fields.append(("Last Error", error["line"] if error else "-"))
    acked = version["acknowledged"]
    if acked:
        note = f": {acked['note']}" if acked.get("note") else ""
        fields.append(("Acknowledged", f"by {acked['by']} at {_local(acked['at'])}{note}"))
    if version["interventions"]:
        fields.append(
            (
                "By People",
                "\n".join(
                    f"{_local(i['at'])} {i['action']} by {i['by']}"
                    + (f": {i['note']}" if i.get("note") else "")
                    for i in version["interventions"]
                ),
            )
        )
    return fields


def _text(doc: dict[str, Any]) -> str:
    from dichroism_control.output import record

    head = record(
        [
            ("Path", doc["path"]),
            ("Beamline", doc["beamline"]),
            ("Relative Path", doc["rel"]),
            ("Versions", f"{len(doc['versions'])} (latest v{doc['latest_version']})"),
            ("Tape Check", doc["tape_verification"]),
        ]
    )
    blocks = [head] + [record(_version_fields(v)) for v in doc["versions"]]
    return "\n\n".join(blocks)
