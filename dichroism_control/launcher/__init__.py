"""The launcher: one `new_file` run per scan, exactly once — input, label, tags, retries,
crash recovery, and the dispatcher that feeds the watcher's detections to it.

The exactly-once protocol (the ledger is the queue and the journal):

1. claim     `detected -> submitting`, `submit_started_at` set and *committed* before any
             HTTP call (one transaction for a batch of scans).
2. send      `run_flow` with a deterministic label `"<BL> <rel>"` and tags
             `["dichroism", <BL>, "new_file"]`; no ledger lock is held meanwhile.
3. record    `submitting -> submitted` with the run id.

A crash between 2 and 3 leaves the row in `submitting`. Such a row (and a row whose last
attempt ended in an error that may have come *after* the service started the run: a 5xx
other than 503, a dropped connection) keeps `submit_started_at`; before it is ever sent
again, the flow's runs are paged newest first and matched on label and tags, stopping at
runs older than `submit_started_at - LOOKUP_MARGIN_SECONDS`. A match is adopted; only when
there is none is the scan sent again. Errors that prove nothing was started (429, 503,
400, 403, local input validation) clear `submit_started_at`.

Only one process claims at a time (`SubmitLock`, an flock beside the ledger), so a row in
`submitting` seen by the lock holder at start-up is always a leftover of a dead process.

Step 3 may be deferred and grouped (`OutcomeWriter`, used by the watcher's workers): the
outcomes of several attempts are committed in one transaction. Until then the row stays in
`submitting`, which is exactly the state a crash at that point is already recovered from.
Step 1 is never deferred.
"""

from __future__ import annotations

from dichroism_control.launcher.dispatch import Dispatcher
from dichroism_control.launcher.labels import FLOW_NAME, run_label, run_tags
from dichroism_control.launcher.lock import SubmitLock, submit_lock
from dichroism_control.launcher.outcomes import Outcome, OutcomeWriter
from dichroism_control.launcher.queue import Claim
from dichroism_control.launcher.submit import Launcher

__all__ = [
    "FLOW_NAME",
    "Claim",
    "Dispatcher",
    "Launcher",
    "Outcome",
    "OutcomeWriter",
    "SubmitLock",
    "run_label",
    "run_tags",
    "submit_lock",
]
