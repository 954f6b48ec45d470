"""An in-memory Backend for unit tests of the launcher and lifecycle (no HTTP).

HTTP-level behaviour is tested separately against GlobusBackend with `responses` and the
SDK's recorded fixtures; this fake only models what the callers rely on: runs with ids,
statuses, labels, tags and outputs, listed newest first; timers with ids.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from dichroism_control.backend import FlowSpec, RunRequest
from dichroism_control.errors import PermanentBackendError


class FakeBackend:
    kind = "fake"

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.timers: dict[str, dict[str, Any]] = {}
        self.requests: list[RunRequest] = []
        self.timer_requests: list[tuple[str, datetime, RunRequest]] = []
        self.fail_next: list[Exception] = []  # raised by the next run_flow calls, in order
        self._clock = itertools.count()

    # runs
    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.requests.append(request)
        run_id = str(uuid.uuid4())
        run = {
            "run_id": run_id,
            "flow_id": request.flow_id,
            "status": "ACTIVE",
            "label": request.label,
            "tags": list(request.tags),
            "start_time": f"2026-01-01T00:00:{next(self._clock):06d}+00:00",
            "details": {},
            "body": request.body,
        }
        self.runs[run_id] = run
        return dict(run)

    def finish(
        self, run_id: str, status: str = "SUCCEEDED", output: dict[str, Any] | None = None
    ) -> None:
        self.runs[run_id]["status"] = status
        self.runs[run_id]["details"] = {"output": output or {}}

    def iter_runs(self, *, flow_ids: list[str]) -> Iterator[dict[str, Any]]:
        selected = [r for r in self.runs.values() if r["flow_id"] in flow_ids]
        yield from sorted(selected, key=lambda r: r["start_time"], reverse=True)

    def get_run(self, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise PermanentBackendError(f"404 NOT_FOUND: run {run_id}", http_status=404)
        return dict(self.runs[run_id])

    def iter_run_logs(self, run_id: str) -> Iterator[dict[str, Any]]:
        yield {"code": "FlowStarted", "description": "started", "details": {}}

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        self.runs[run_id]["status"] = "ENDED"
        return dict(self.runs[run_id])

    # timers
    def create_flow_timer(
        self, *, name: str, run_at: datetime, request: RunRequest
    ) -> dict[str, Any]:
        assert run_at.tzinfo is not None
        self.timer_requests.append((name, run_at, request))
        job_id = str(uuid.uuid4())
        timer = {
            "job_id": job_id,
            "name": name,
            "status": "loaded",
            "next_run": run_at.astimezone(UTC).isoformat(),
            "flow_id": request.flow_id,
            "body": request.timer_body(),
        }
        self.timers[job_id] = timer
        return dict(timer)

    def create_recurring_flow_timer(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        assert start.tzinfo is not None
        self.timer_requests.append((name, start, request))
        job_id = str(uuid.uuid4())
        timer = {
            "job_id": job_id,
            "name": name,
            "status": "loaded",
            "next_run": start.astimezone(UTC).isoformat(),
            "flow_id": request.flow_id,
            "body": request.timer_body(),
            "schedule": {"type": "recurring", "interval_seconds": interval_seconds},
        }
        self.timers[job_id] = timer
        return dict(timer)

    def iter_timers(self) -> Iterator[dict[str, Any]]:
        yield from (dict(t) for t in self.timers.values())

    def delete_timer(self, timer_id: str) -> dict[str, Any]:
        if timer_id not in self.timers:
            raise PermanentBackendError(f"404 NOT_FOUND: timer {timer_id}", http_status=404)
        return self.timers.pop(timer_id)

    # deployment
    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        return None

    def create_flow(self, spec: FlowSpec) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), **spec.fields()}

    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]:
        return {"id": flow_id, **spec.fields()}

    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        return []

    def register_function(self, *, name: str, source: str, description: str) -> str:
        return str(uuid.uuid4())
