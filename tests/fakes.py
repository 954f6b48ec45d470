"""An in-memory Backend for unit tests of the launcher and lifecycle (no HTTP).

It obeys the same service rules as the local backend (`dichroism_control.local.
service_rules`): runs start only on flows it knows (404 otherwise), with a label of at most
128 characters (422) and input their flow's schema accepts, formats included (400); runs
are listed newest first in pages (`has_next_page`, `marker`); unknown ids answer 404;
start times are timezone-aware ISO 8601 from `clock` (so listings that stop at the oldest
awaited run behave as they do against Flows); a canceled run is FAILED (FlowCanceled); a
run can be put INACTIVE (`make_inactive`). Timers keep only a FlowStartDocument, start
their run without a label when they fire (`fire_due_timers`), and have ended afterwards.

Test helpers: `runs`, `timers` (documents by id), `requests` (every accepted RunRequest),
`timer_requests` ((name, run_at, RunRequest) per timer created), `fail_next` (exceptions the
next run_flow calls raise, in order), `finish(...)`, `make_inactive(...)`, `add_flow(...)`.
HTTP-level behaviour is tested separately against GlobusBackend with `responses` and the
SDK's recorded fixtures.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from dichroism_control.backend import FINAL_STATUSES, FlowSpec, RunRequest
from dichroism_control.errors import PermanentBackendError
from dichroism_control.local.service_rules import flows as flow_rules
from dichroism_control.local.service_rules import timers as timer_rules

OWNER = "urn:globus:auth:identity:5f1e0000-0000-4000-8000-0000000000aa"


class FakeBackend:
    kind = "fake"

    def __init__(
        self,
        *,
        flows: Mapping[str, Mapping[str, Any] | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`flows`: flow id -> its input schema (None: a flow without one); `clock`: the
        service's wall clock (epoch seconds), which stamps start times and fires timers."""
        self.runs: dict[str, dict[str, Any]] = {}
        self.timers: dict[str, dict[str, Any]] = {}
        self.requests: list[RunRequest] = []
        self.timer_requests: list[tuple[str, datetime, RunRequest]] = []
        self.fail_next: list[Exception] = []  # raised by the next run_flow calls, in order
        self.clock = clock
        self._flows: dict[str, dict[str, Any]] = {}
        self._checks: dict[str, flow_rules.InputCheck] = {}
        self._order: dict[str, tuple[float, int]] = {}  # run_id -> (start ts, tie-break)
        self._sequence = itertools.count()
        self._logs: dict[str, list[dict[str, Any]]] = {}
        # What Timers keeps of each timer we created (a test may add foreign documents to
        # `timers`: those never fire).
        self._timer_records: dict[str, dict[str, Any]] = {}
        for flow_id, schema in (flows or {}).items():
            self.add_flow(flow_id, schema)

    # flows (what deploy created) -------------------------------------------------------
    def add_flow(
        self, flow_id: str, input_schema: Mapping[str, Any] | None = None, *, title: str = "flow"
    ) -> None:
        self._flows[flow_id] = {
            "id": flow_id,
            "title": title,
            "input_schema": dict(input_schema or {}),
            "definition": {},
        }
        self._checks[flow_id] = flow_rules.input_validator(input_schema)

    # runs ------------------------------------------------------------------------------
    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        if self.fail_next:
            raise self.fail_next.pop(0)
        run = self._start(
            request.flow_id,
            {
                "body": request.body,
                "label": request.label,
                "tags": request.tags,
                "run_managers": request.run_managers,
                "run_monitors": request.run_monitors,
                "activity_notification_policy": {"status": list(request.notify_on)},
            },
        )
        self.requests.append(request)
        return dict(run)

    def _start(self, flow_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        flow = self._flows.get(flow_id)
        if flow is None:
            raise flow_rules.not_found("flow", flow_id)
        flow_rules.check_label(request.get("label"))
        self._checks[flow_id](request.get("body"))
        run_id = str(uuid.uuid4())
        now = self.clock()
        self._order[run_id] = (now, next(self._sequence))
        policy = request.get("activity_notification_policy") or {}
        run = flow_rules.run_document(
            run_id=run_id,
            flow_id=flow_id,
            flow_title=flow["title"],
            status=flow_rules.ACTIVE,
            label=request.get("label"),
            tags=list(request.get("tags") or []),
            start_time=flow_rules.start_time(now),
            completion_time=None,
            details=dict(flow_rules.STARTING),
            run_managers=list(request.get("run_managers") or []),
            run_monitors=list(request.get("run_monitors") or []),
            notify_on=policy.get("status"),
            owner=OWNER,
        )
        run["body"] = request.get("body")  # what the run was given (tests read it)
        self.runs[run_id] = run
        self._logs[run_id] = [
            {
                "time": run["start_time"],
                "code": "FlowStarted",
                "description": "The Flow Instance started execution",
                "details": {"input": request.get("body")},
            }
        ]
        return run

    def finish(
        self, run_id: str, status: str = "SUCCEEDED", output: dict[str, Any] | None = None
    ) -> None:
        """End a live run as Flows would: SUCCEEDED or FAILED with its details and output."""
        run = self._run(run_id)
        if status == flow_rules.SUCCEEDED:
            details = flow_rules.succeeded_details(output or {})
        elif status == flow_rules.FAILED:
            details = flow_rules.failed_details(output or {})
        else:
            details = {"code": f"Flow{status.title()}", "output": output or {}}
        run.update(
            status=status,
            display_status=status,
            details=details,
            completion_time=flow_rules.start_time(self.clock()),
        )

    def make_inactive(
        self, run_id: str, code: str = "ConsentRequired", description: str | None = None
    ) -> None:
        """Put a live run INACTIVE, as Flows does when it waits on e.g. a missing consent."""
        run = self._run(run_id)
        text = description or f"The run is waiting: {code}"
        run.update(status=flow_rules.INACTIVE, display_status=flow_rules.INACTIVE)
        run["details"] = flow_rules.inactive_details(code, text)

    def _run(self, run_id: str) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            raise flow_rules.not_found("run", run_id)
        return run

    def list_runs_page(self, flow_ids: list[str], marker: str | None = None) -> dict[str, Any]:
        """One page of GET /runs, newest first (service_rules.flow_rules.newest_first_page)."""
        entries = [(self._order.get(run_id, (0.0, 0)), run) for run_id, run in self.runs.items()]
        return flow_rules.newest_first_page(entries, flow_ids, marker)

    def iter_runs(self, *, flow_ids: list[str]) -> Iterator[dict[str, Any]]:
        marker: str | None = None
        while True:
            page = self.list_runs_page(flow_ids, marker)
            yield from page["runs"]
            marker = page.get("marker")
            if not page["has_next_page"] or not marker:
                return

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._run(run_id))

    def iter_run_logs(self, run_id: str) -> Iterator[dict[str, Any]]:
        self._run(run_id)
        yield from self._logs.get(run_id, [])

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        run = self._run(run_id)
        if run["status"] not in FINAL_STATUSES:
            run.update(
                status=flow_rules.CANCELED_STATUS,
                display_status=flow_rules.CANCELED_STATUS,
                details={**flow_rules.canceled_details(), "output": None},
                completion_time=flow_rules.start_time(self.clock()),
            )
        return dict(run)

    # timers ----------------------------------------------------------------------------
    def create_flow_timer(
        self, *, name: str, run_at: datetime, request: RunRequest
    ) -> dict[str, Any]:
        if run_at.tzinfo is None:
            raise ValueError("run_at must be timezone-aware")
        if request.flow_id not in self._flows:
            raise flow_rules.not_found("flow", request.flow_id)
        self.timer_requests.append((name, run_at, request))
        job_id = str(uuid.uuid4())
        record = {
            "job_id": job_id,
            "name": name,
            "flow_id": request.flow_id,
            "run_at": run_at.timestamp(),
            "body": timer_rules.flow_start_document(request.timer_body()),
            "submitted_at": self.clock(),
            "last_ran_at": None,
            "results": [],
        }
        self.timers[job_id] = timer_rules.timer_document(**record, status=timer_rules.SCHEDULED)
        self._timer_records[job_id] = record
        return timer_rules.timer_document(**record, status=timer_rules.CREATED)

    def fire_due_timers(self, now: float | None = None) -> list[str]:
        """What Timers does when timers fall due: start each one's run from its
        FlowStartDocument (no label of ours), once per due time; a once-timer has then
        ended, a recurring one waits for its next time."""
        now = self.clock() if now is None else now
        started: list[str] = []
        for job_id, record in list(self._timer_records.items()):
            timer = self.timers.get(job_id)
            if timer is None or timer["status"] != timer_rules.SCHEDULED:
                continue
            if record["run_at"] > now:
                continue
            run_id: str | None = None
            error: str | None = None
            try:
                run_id = self._start(record["flow_id"], timer_rules.run_request(record["body"]))[
                    "run_id"
                ]
            except Exception as exc:  # the run request was refused: the timer records why
                error = str(exc)
            record["last_ran_at"] = now
            record["results"] = [
                timer_rules.result(
                    ran_at=now,
                    run_id=run_id,
                    run_status=flow_rules.ACTIVE if run_id else None,
                    error=error,
                )
            ]
            status = timer_rules.ENDED
            if record.get("interval_seconds") is not None:
                # Recurring: loaded again with its next time; the counts are kept.
                status = timer_rules.SCHEDULED
                record["run_at"] = timer_rules.next_time(
                    record["run_at"], record["interval_seconds"], now
                )
                record["n_runs"] += int(run_id is not None)
                record["n_errors"] += int(run_id is None)
            self.timers[job_id] = timer_rules.timer_document(**record, status=status)
            if run_id is not None:
                started.append(run_id)
        return started

    def create_recurring_flow_timer(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if interval_seconds <= 0:
            raise PermanentBackendError(
                "400 BAD_REQUEST: interval_seconds must be > 0", http_status=400
            )
        if request.flow_id not in self._flows:
            raise flow_rules.not_found("flow", request.flow_id)
        self.timer_requests.append((name, start, request))
        job_id = str(uuid.uuid4())
        record = {
            "job_id": job_id,
            "name": name,
            "flow_id": request.flow_id,
            "run_at": start.timestamp(),
            "body": timer_rules.flow_start_document(request.timer_body()),
            "submitted_at": self.clock(),
            "last_ran_at": None,
            "results": [],
            "interval_seconds": float(interval_seconds),
            "start": start.timestamp(),
            "n_runs": 0,
            "n_errors": 0,
        }
        self.timers[job_id] = timer_rules.timer_document(**record, status=timer_rules.SCHEDULED)
        self._timer_records[job_id] = record
        return timer_rules.timer_document(**record, status=timer_rules.CREATED)

    def iter_timers(self) -> Iterator[dict[str, Any]]:
        yield from (dict(t) for t in self.timers.values())

    def delete_timer(self, timer_id: str) -> dict[str, Any]:
        timer = self.timers.pop(timer_id, None)
        if timer is None:
            raise flow_rules.not_found("timer", timer_id)
        self._timer_records.pop(timer_id, None)
        return timer

    # deployment ------------------------------------------------------------------------
    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        flow = self._flows.get(flow_id)
        return None if flow is None else dict(flow)

    def create_flow(self, spec: FlowSpec) -> dict[str, Any]:
        flow_id = str(uuid.uuid4())
        self.add_flow(flow_id, spec.input_schema, title=spec.title)
        return {"id": flow_id, **spec.fields()}

    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]:
        if flow_id not in self._flows:
            raise flow_rules.not_found("flow", flow_id)
        self.add_flow(flow_id, spec.input_schema, title=spec.title)
        return {"id": flow_id, **spec.fields()}

    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        return []

    def register_function(self, *, name: str, source: str, description: str) -> str:
        return str(uuid.uuid4())
