"""Following runs: ONE paginated listing per pass, matched to what every step waits for.

Each step says what it waits for (`Awaited`: a run id, or a label within one flow) and
reads what was found from the `Listing`. The listing is newest first and stops as soon as
every awaited run has been seen or the runs are older than the oldest awaited one (minus
`CLOCK_SKEW_SECONDS`), so a pass costs what is in flight, not the whole history.
A listing that ended early on an error is not `complete`: what it saw is acted on, but no
step may conclude from it that a run does not exist.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from dichroism_control.backend import Backend, run_start_time
from dichroism_control.errors import BackendError
from dichroism_control.lifecycle.base import CLOCK_SKEW_SECONDS

log = logging.getLogger(__name__)

MatchBy = Literal["run_id", "label", "tag"]


@dataclass(frozen=True)
class Awaited:
    """One run a step waits for: by its id, or by its label or one of its tags among one
    flow's runs (a run Timers starts carries our tags but no label of ours)."""

    by: MatchBy
    key: str
    flow: str
    since: float  # the earliest wall-clock time the run can have started
    # Runs that carry the label but are known failures (never adopted as a retry).
    exclude: frozenset[str] = frozenset()


@dataclass
class Listing:
    """What one pass learnt from the run listing."""

    complete: bool = False
    seen: int = 0
    found: dict[tuple[MatchBy, str], dict[str, Any]] = field(default_factory=dict)

    def get(self, by: MatchBy, key: str) -> dict[str, Any] | None:
        return self.found.get((by, key))


class RunFollower:
    """Lists the flows' runs once per pass and matches them to the awaited ones."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def list(
        self,
        flows: dict[str, str],
        awaited: Iterable[Awaited],
        summary: Counter[str],
        errors: list[str],
    ) -> Listing:
        wanted = {(a.by, a.key): a for a in awaited}
        listing = Listing()
        if not wanted:
            listing.complete = True
            return listing
        oldest = min(a.since for a in wanted.values()) - CLOCK_SKEW_SECONDS
        flow_of = {flow_id: name for name, flow_id in flows.items()}
        try:
            for run in self.backend.iter_runs(flow_ids=list(flows.values())):
                listing.seen += 1
                run_id = str(run.get("run_id") or "")
                match = wanted.get(("run_id", run_id))
                if match is None:
                    kind = flow_of.get(str(run.get("flow_id") or ""), "")
                    keys: list[tuple[MatchBy, str]] = [("label", str(run.get("label") or ""))]
                    keys += [("tag", str(tag)) for tag in run.get("tags") or []]
                    for key in keys:
                        candidate = wanted.get(key)
                        if (
                            candidate is not None
                            and candidate.flow == kind
                            and run_id not in candidate.exclude
                        ):
                            match = candidate
                            break
                if match is not None and (match.by, match.key) not in listing.found:
                    listing.found[(match.by, match.key)] = run
                    if len(listing.found) == len(wanted):
                        break
                started = run_start_time(run)
                if started is not None and started < oldest:
                    break
            listing.complete = True
        except BackendError as exc:
            # What was seen is still acted on; conclusions of absence wait for a full listing.
            errors.append(f"listing runs: {exc}")
            log.warning("listing runs failed (will retry next pass): %s", exc)
        summary["runs_listed"] += listing.seen
        return listing
