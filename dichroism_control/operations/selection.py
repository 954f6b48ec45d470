"""Which failures a `retry` or `ack` names: scans, archive groups, prune batches.

A command names one subject (a scan PATH, `--group NAME`, `--batch KEY`) or a filter over
every failure (`--failed`, `--proposal P`, `--since T`, narrowed by `--beamline B`). A
filter never picks what a person already acknowledged. What a subject cannot be used for is
returned as a `Skip` with its reason, never silently dropped.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from dichroism_control.errors import ConfigError
from dichroism_control.ledger_schema import UNACKNOWLEDGED

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.ledger import Ledger

Purpose = Literal["retry", "ack"]


@dataclass(frozen=True)
class Selector:
    """What the command line named (see the module docstring)."""

    path: str | None = None
    proposal: str | None = None
    beamline: str | None = None
    failed: bool = False
    since: float | None = None
    batch: str | None = None
    group: str | None = None

    @property
    def explicit(self) -> bool:
        """One subject named by a person (not a filter)."""
        return bool(self.path or self.batch or self.group)

    def check(self, command: str) -> None:
        """Refuse combinations that do not say one thing (exit 2)."""
        single = [name for name, given in self._singles() if given]
        filters = self.failed or self.proposal is not None or self.since is not None
        if len(single) > 1 or (single and (filters or self.beamline)):
            raise ConfigError(
                f"{command}: give one of PATH, --group, --batch, or filters (--failed,"
                " --proposal, --since, --beamline), not both"
            )
        if not single and not filters:
            raise ConfigError(
                f"{command}: say what: PATH, --proposal P, --failed, --since T, --group NAME"
                " or --batch KEY"
            )

    def _singles(self) -> list[tuple[str, bool]]:
        return [
            ("PATH", self.path is not None),
            ("--group", self.group is not None),
            ("--batch", self.batch is not None),
        ]


@dataclass(frozen=True)
class Skip:
    subject: str  # scan:<id>, group:<id>, batch:<key>
    what: str  # for people: "bl402 P1/a.h5 v1", "archive group ...", "prune batch ..."
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "what": self.what, "reason": self.reason}


@dataclass
class Selection:
    scans: list[sqlite3.Row] = field(default_factory=list)
    groups: list[sqlite3.Row] = field(default_factory=list)
    batches: list[sqlite3.Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def scan_name(row: sqlite3.Row) -> str:
    return f"{row['beamline']} {row['rel']} v{row['version']}"


def group_name(row: sqlite3.Row) -> str:
    return f"archive group {row['archive_name']}"


def batch_name(row: sqlite3.Row) -> str:
    return f"prune batch {row['batch']}"


def scan_versions(ledger: Ledger, path: str) -> list[sqlite3.Row]:
    """Every version of the scan at `path` (as given, or made absolute), oldest first;
    refuses (exit 2) a path the ledger never recorded."""
    for candidate in dict.fromkeys((path, os.path.abspath(path))):
        rows = ledger.query("SELECT * FROM scans WHERE path = ? ORDER BY version", (candidate,))
        if rows:
            return rows
    raise ConfigError(f"{path}: not in the ledger (no scan was ever recorded at this path)")


def find_group(ledger: Ledger, name: str) -> sqlite3.Row:
    rows = ledger.query(
        "SELECT * FROM archive_groups WHERE archive_name = ? OR label = ?", (name, name)
    )
    if not rows:
        raise ConfigError(f"--group: no archive group named {name!r} in the ledger")
    return rows[0]


def find_batch(ledger: Ledger, key: str) -> sqlite3.Row:
    rows = ledger.query("SELECT * FROM prune_timers WHERE batch = ? OR timer_id = ?", (key, key))
    if not rows:
        raise ConfigError(f"--batch: no prune batch {key!r} in the ledger (`timers list --all`)")
    return rows[0]


def select(config: Config, ledger: Ledger, selector: Selector, purpose: Purpose) -> Selection:
    """The failed subjects `selector` names (see the module docstring)."""
    if selector.path is not None:
        return _by_path(ledger, selector.path, purpose)
    if selector.group is not None:
        return Selection(groups=[find_group(ledger, selector.group)])
    if selector.batch is not None:
        return Selection(batches=[find_batch(ledger, selector.batch)])
    if selector.beamline is not None:
        config.beamline(selector.beamline)  # one-line error for an unknown name
    return _filtered(config, ledger, selector)


def _by_path(ledger: Ledger, path: str, purpose: Purpose) -> Selection:
    versions = scan_versions(ledger, path)
    latest = versions[-1]
    selection = Selection()
    if purpose == "retry":
        selection.scans.append(latest)
        for row in versions[:-1]:
            if row["state"] == "failed":
                selection.skipped.append(
                    Skip(
                        f"scan:{row['id']}",
                        scan_name(row),
                        f"superseded by v{latest['version']}: a superseded version is never"
                        " retried",
                    )
                )
        return selection
    selection.scans.extend(row for row in versions if row["state"] == "failed")
    if not selection.scans:
        selection.scans.append(latest)  # the caller says why there is nothing to acknowledge
    return selection


def _filtered(config: Config, ledger: Ledger, selector: Selector) -> Selection:
    where, params = _filter_sql(selector)
    selection = Selection()
    unacked = UNACKNOWLEDGED.format(subject="'scan:' || scans.id")
    for row in ledger.query(
        f"SELECT * FROM scans WHERE state = 'failed' AND {unacked}{where}"
        " ORDER BY beamline, rel, version",
        params,
    ):
        if _proposal_matches(config, selector.proposal, row["beamline"], row["rel"]):
            selection.scans.append(row)
    unacked = UNACKNOWLEDGED.format(subject="'group:' || archive_groups.id")
    for row in ledger.query(
        f"SELECT * FROM archive_groups WHERE state = 'failed' AND {unacked}{where}"
        " ORDER BY beamline, archive_name",
        params,
    ):
        if selector.proposal is None or row["proposal"] == selector.proposal:
            selection.groups.append(row)
    if selector.proposal is None:
        # A prune batch gathers a whole day of a beamline: it belongs to no one proposal.
        unacked = UNACKNOWLEDGED.format(subject="'batch:' || prune_timers.batch")
        selection.batches.extend(
            ledger.query(
                f"SELECT * FROM prune_timers WHERE state = 'failed' AND {unacked}{where}"
                " ORDER BY batch",
                params,
            )
        )
    return selection


def _filter_sql(selector: Selector) -> tuple[str, tuple[object, ...]]:
    clauses: list[str] = []
    params: list[object] = []
    if selector.beamline is not None:
        clauses.append("beamline = ?")
        params.append(selector.beamline)
    if selector.since is not None:
        clauses.append("updated_at >= ?")
        params.append(selector.since)
    return "".join(f" AND {c}" for c in clauses), tuple(params)


def _proposal_matches(config: Config, proposal: str | None, beamline: str, rel: str) -> bool:
    if proposal is None:
        return True
    from dichroism_control.lifecycle.base import proposal_directory

    settings = config.beamlines.get(beamline)
    return settings is not None and proposal_directory(settings, rel)[1] == proposal
