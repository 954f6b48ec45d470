"""Rules of Globus Timers for flow timers that the doubles obey (sources beside each rule).

Sources: `timers.ts` is globus-sdk-javascript `src/open-api/types/timers.ts`; "SDK fixtures"
are globus-sdk's recorded responses under `globus_sdk/testing/data/timer/`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# timers.ts FlowStartDocument: a flow timer's `body` holds only these. Anything else a
# client sends (our `label`, `activity_notification_policy`) is not part of the document and
# is dropped, so a run that Timers starts carries none of it.
FLOW_START_KEYS = ("body", "run_monitors", "run_managers", "tags")
# What label Timers gives the runs it starts is not documented (docs.globus.org/api/timers
# and its tutorials say nothing; FlowStartDocument has no label): the doubles give none.
TIMER_RUN_LABEL: str | None = None

# Timer statuses. SDK fixtures: a new flow timer is "new" (timer/_common.py V2_FLOW_TIMER,
# the create_timer flow_timer_success response) and a scheduled one "loaded"
# (timer/_common.py V1_TIMER, the list_jobs response). timers.ts GET /jobs/ filter_status:
# "Valid statuses are 'active', 'inactive', and 'ended'": a once-timer whose one run was
# started (or refused) has ended. `inactive` comes with an inactive_reason whose cause is
# "user" or "globus_auth_requirements" (timers.ts JobInactiveReason; fixture timer/get_job.py).
CREATED = "new"
SCHEDULED = "loaded"
ENDED = "ended"
INACTIVE = "inactive"
INACTIVE_CAUSES = ("user", "globus_auth_requirements")


def flow_start_document(request: Mapping[str, Any]) -> dict[str, Any]:
    """What Timers keeps of a run request: its FlowStartDocument (timers.ts)."""
    return {key: request[key] for key in FLOW_START_KEYS if key in request}


def run_request(document: Mapping[str, Any]) -> dict[str, Any]:
    """The run request Timers makes when the timer fires: the FlowStartDocument and nothing
    of ours (no label; the notification policy is the Flows default)."""
    return {**flow_start_document(document), "label": TIMER_RUN_LABEL}


def callback_url(flow_id: str) -> str:
    """SDK fixture timer/_common.py V2_FLOW_TIMER: a flow timer calls the flow's run URL."""
    return f"https://flows.automate.globus.org/flows/{flow_id}/run"


def next_time(start: float, interval: float, now: float) -> float:
    """A recurring timer's next time after firing at `now`: the first of its schedule
    (start + k * interval) after now. A timer that could not fire for a while (the service
    down, the local backend not running) fires once, not once per missed interval."""
    missed = math.floor((now - start) / interval) + 1
    return start + max(1, missed) * interval


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def result(
    *, ran_at: float, run_id: str | None, run_status: str | None, error: str | None
) -> dict[str, Any]:
    """One timer run (timers.ts JobResult): the run it started (`resource_id`) or the error
    with which its run request was refused."""
    return {
        "ran_at": _iso(ran_at),
        "start_timestamp": _iso(ran_at),
        "resource_id": run_id,
        "run_status": run_status or "FAILED",
        "status": 201 if run_id is not None else 400,
        "data": {"run_id": run_id} if run_id is not None else None,
        "errors": None if error is None else {"detail": error},
    }


def timer_document(
    *,
    job_id: str,
    name: str,
    flow_id: str,
    run_at: float,
    body: Mapping[str, Any],
    status: str,
    submitted_at: float,
    last_ran_at: float | None,
    results: Sequence[Mapping[str, Any]],
    inactive_reason: Mapping[str, Any] | None = None,
    interval_seconds: float | None = None,
    start: float | None = None,
    n_runs: int | None = None,
    n_errors: int | None = None,
) -> dict[str, Any]:
    """A flow timer as the SDK fixture V2_FLOW_TIMER (timer/_common.py) shows one. A
    recurring one (`interval_seconds`) has the schedule of the fixture V2_TRANSFER_TIMER
    (`{"type": "recurring", "interval_seconds", "start"}`; timers.ts RecurringTimerSchedule),
    stays "loaded" after each run, and `run_at` is its next time; its counts are kept
    (`n_runs`, `n_errors`) since only the latest result is held."""
    ran = [r for r in results if r.get("resource_id")]
    runs = len(ran) if n_runs is None else n_runs
    errors = len(results) - len(ran) if n_errors is None else n_errors
    if interval_seconds is not None:
        first = run_at if start is None else start
        schedule: dict[str, Any] = {
            "type": "recurring",
            "interval_seconds": int(interval_seconds),
            "start": _iso(first),
        }
        stop_after: dict[str, Any] = {"date": None, "n_runs": None}
    else:
        schedule = {"type": "once", "datetime": _iso(run_at)}
        stop_after = {"date": None, "n_runs": 1}
    return {
        "job_id": job_id,
        "name": name,
        "timer_type": "flow",
        "flow_id": flow_id,
        "callback_url": callback_url(flow_id),
        "callback_body": flow_start_document(body),
        "schedule": schedule,
        "start": _iso(run_at if start is None else start),
        "interval": None if interval_seconds is None else int(interval_seconds),
        "stop_after": stop_after,
        "status": status,
        "inactive_reason": dict(inactive_reason) if inactive_reason else None,
        "submitted_at": _iso(submitted_at),
        "last_ran_at": _iso(last_ran_at),
        "next_run": _iso(run_at) if status in (CREATED, SCHEDULED) else None,
        "n_runs": runs,
        "n_errors": errors,
        "results": {"data": [dict(r) for r in results], "page_next": None},
    }
