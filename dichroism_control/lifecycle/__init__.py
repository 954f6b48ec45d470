"""The lifecycle: follow runs, archive to tape, schedule prunes (see `loop`).

Rooms: `follow` (one run listing, matched for every step), `transfers` (new_file runs),
`archive` (archive groups), `prune` (prune batches and their timers), `timers` (operator
views of the batches), `loop` (the pass that calls them), `base` (what they share).
"""

from __future__ import annotations

from dichroism_control.lifecycle.base import (
    LOCATIONS,
    archive_name,
    failure_reason,
    proposal_directory,
)
from dichroism_control.lifecycle.loop import Lifecycle
from dichroism_control.lifecycle.timers import cancel_timer, list_timers

__all__ = [
    "LOCATIONS",
    "Lifecycle",
    "archive_name",
    "cancel_timer",
    "failure_reason",
    "list_timers",
    "proposal_directory",
]
