"""`dichroism retry` and `dichroism ack`: a person deals with failures.

`retry` re-queues failed scans (the same version: never a new one), re-opens failed archive
groups and releases failed prune batches' files for a new batch; `ack` marks failures as
dealt with (they leave `status`'s failure list and the alerts; the scan stays failed).
Both name one subject (PATH, `--group NAME`, `--batch KEY`) or filter every failure
(`--failed`, `--proposal P`, `--since T`, narrowed by `--beamline B`); the rules are in
`dichroism_control.operations`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context
    from dichroism_control.ledger import Ledger
    from dichroism_control.operations.selection import Purpose, Selection, Selector

PathArg = Annotated[
    str | None, typer.Argument(help="A scan's path on this host (its latest version).")
]
ProposalOpt = Annotated[
    str | None, typer.Option("--proposal", help="Every failure of this proposal.")
]
BeamlineOpt = Annotated[str | None, typer.Option("--beamline", help="Only this beamline.")]
FailedOpt = Annotated[bool, typer.Option("--failed", help="Every failure.")]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Failures since T: 6h, 30m, 2d, or an ISO date/time."),
]
BatchOpt = Annotated[str | None, typer.Option("--batch", help="A failed prune batch (its key).")]
GroupOpt = Annotated[str | None, typer.Option("--group", help="A failed archive group (its name).")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who is acting (default: your user@host).")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")
]


def register(app: typer.Typer) -> None:
    app.command("retry")(retry)
    app.command("ack")(ack)


def _selector(
    path: str | None,
    proposal: str | None,
    beamline: str | None,
    failed: bool,
    since: str | None,
    batch: str | None,
    group: str | None,
    command: str,
) -> Selector:
    from dichroism_control.operations.people import parse_since
    from dichroism_control.operations.selection import Selector

    selector = Selector(
        path=path,
        proposal=proposal,
        beamline=beamline,
        failed=failed,
        since=parse_since(since) if since is not None else None,
        batch=batch,
        group=group,
    )
    selector.check(command)
    return selector


def _selected(
    state: Context, selector: Selector, by: str | None, command: Purpose
) -> tuple[str, Ledger, Selection]:
    """Who acts, the ledger, and the failures the selector names."""
    from dichroism_control.operations.people import who
    from dichroism_control.operations.selection import select

    ledger = state.ledger()
    return who(by), ledger, select(state.config(), ledger, selector, command)


def retry(
    ctx: typer.Context,
    path: PathArg = None,
    *,
    proposal: ProposalOpt = None,
    beamline: BeamlineOpt = None,
    failed: FailedOpt = False,
    since: SinceOpt = None,
    batch: BatchOpt = None,
    group: GroupOpt = None,
    dry_run: DryRunOpt = False,
    by: ByOpt = None,
) -> None:
    """Re-queue failed scans (the same version), archive groups and prune batches."""
    from dichroism_control.errors import DichroismError
    from dichroism_control.operations import retry as retrying

    state: Context = ctx.obj
    selector = _selector(path, proposal, beamline, failed, since, batch, group, "retry")
    actor, ledger, selection = _selected(state, selector, by, "retry")
    planned = retrying.plan(ledger, selection, explicit=selector.explicit)
    done = planned if dry_run else retrying.apply(ledger, planned, by=actor)
    if selector.explicit and done.count == 0:
        # One subject named, and it cannot be retried: that is the answer, in one line.
        raise DichroismError("; ".join(f"{s.what}: {s.reason}" for s in done.skipped))
    state.emit({"dry_run": dry_run, "by": actor, **done.as_dict()}, text=_retry_text)


def _retry_text(doc: dict[str, Any]) -> str:
    verb = "would re-queue" if doc["dry_run"] else "re-queued"
    counts = (
        f"{len(doc['scans'])} scan(s), {len(doc['groups'])} archive group(s),"
        f" {len(doc['batches'])} prune batch(es)"
    )
    if not doc["requeued"] and not doc["skipped"]:
        return "nothing to retry"
    lines = [f"{verb} {counts}"]
    for scan in doc["scans"]:
        lines.append(f"  {scan['beamline']} {scan['rel']} v{scan['version']}: {scan['note']}")
    for group in doc["groups"]:
        lines.append(f"  archive group {group['name']}: {group['note']}")
    for batch in doc["batches"]:
        lines.append(f"  prune batch {batch['batch']}: {batch['note']}")
    if doc["skipped"]:
        lines.append(f"not retried ({len(doc['skipped'])}):")
        lines.extend(f"  {s['what']}: {s['reason']}" for s in doc["skipped"])
    return "\n".join(lines)


def ack(
    ctx: typer.Context,
    path: PathArg = None,
    *,
    proposal: ProposalOpt = None,
    beamline: BeamlineOpt = None,
    failed: FailedOpt = False,
    since: SinceOpt = None,
    batch: BatchOpt = None,
    group: GroupOpt = None,
    note: Annotated[
        str | None, typer.Option("--note", help="What was done about it (kept with the mark).")
    ] = None,
    dry_run: DryRunOpt = False,
    by: ByOpt = None,
) -> None:
    """Acknowledge failures a person has dealt with (they stay failed, off the alerts)."""
    from dichroism_control.errors import DichroismError
    from dichroism_control.operations import ack as acking

    state: Context = ctx.obj
    selector = _selector(path, proposal, beamline, failed, since, batch, group, "ack")
    actor, ledger, selection = _selected(state, selector, by, "ack")
    planned = acking.plan(ledger, selection)
    if selector.explicit and not planned.targets and not planned.already:
        raise DichroismError("; ".join(f"{s.what}: {s.reason}" for s in planned.skipped))
    done = planned if dry_run else acking.apply(ledger, planned, by=actor, note=note)
    state.emit({"dry_run": dry_run, "by": actor, "note": note, **done.as_dict()}, text=_ack_text)


def _ack_text(doc: dict[str, Any]) -> str:
    from dichroism_control.output import local_time

    verb = "would acknowledge" if doc["dry_run"] else "acknowledged"
    lines = [f"{verb} {doc['count']} failure(s) as {doc['by']}"] if doc["count"] else []
    lines.extend(f"  {t['what']}" for t in doc["acknowledged"])
    for item in doc["already_acknowledged"]:
        lines.append(
            f"  {item['what']}: already acknowledged by {item['by']} at {local_time(item['at'])}"
        )
    if doc["skipped"]:
        lines.append(f"not acknowledged ({len(doc['skipped'])}):")
        lines.extend(f"  {s['what']}: {s['reason']}" for s in doc["skipped"])
    return "\n".join(lines) or "nothing to acknowledge"
