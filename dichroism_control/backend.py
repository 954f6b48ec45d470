"""THE seam: everything the rest of the code asks of "whoever runs the flows".

This module holds only the `Backend` protocol and the types both sides share. The Globus
implementation is `dichroism_control.globus_backend.GlobusBackend` (globus-sdk clients on one
`GlobusApp`); the local one is `dichroism_control.local.backend.LocalBackend` (the same
definitions, offline); `dichroism_control.backends.build_backend` chooses between them. The
watcher, launcher, lifecycle and deploy code only see `Backend`, so they are the same code on
both.

Documents returned are shaped like the Flows / Timers API documents (run: run_id, status,
label, tags, start_time, details.output; timer: job_id, name, status, next_run, ...), so
`--format json` output is the same whichever backend produced it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

FINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "ENDED"})
LIVE_STATUSES = frozenset({"ACTIVE", "INACTIVE"})


@dataclass(frozen=True)
class FlowSpec:
    """What create_flow / update_flow send: the definition plus its metadata and roles."""

    title: str
    definition: dict[str, Any]
    input_schema: dict[str, Any]
    subtitle: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    flow_viewers: list[str] = field(default_factory=list)
    flow_starters: list[str] = field(default_factory=list)
    flow_administrators: list[str] = field(default_factory=list)
    run_managers: list[str] = field(default_factory=list)
    run_monitors: list[str] = field(default_factory=list)
    subscription_id: str | None = None

    def fields(self) -> dict[str, Any]:
        """The keyword arguments of FlowsClient.create_flow/update_flow."""
        data: dict[str, Any] = {
            "title": self.title,
            "definition": self.definition,
            "input_schema": self.input_schema,
            "subtitle": self.subtitle,
            "description": self.description,
            "keywords": self.keywords,
            "flow_viewers": self.flow_viewers,
            "flow_starters": self.flow_starters,
            "flow_administrators": self.flow_administrators,
            "run_managers": self.run_managers,
            "run_monitors": self.run_monitors,
        }
        if self.subscription_id:
            data["subscription_id"] = self.subscription_id
        return data


@dataclass(frozen=True)
class RunRequest:
    """One run of a flow: the body plus what makes it findable in the web app."""

    flow_id: str
    body: dict[str, Any]
    label: str
    tags: list[str]
    run_monitors: list[str] = field(default_factory=list)
    run_managers: list[str] = field(default_factory=list)
    notify_on: list[str] = field(default_factory=lambda: ["INACTIVE", "FAILED"])

    def timer_body(self) -> dict[str, Any]:
        """What a FlowTimer carries: Timers' FlowStartDocument, which holds only `body`,
        `run_monitors`, `run_managers` and `tags` (globus-sdk-javascript
        src/open-api/types/timers.ts). No label and no notification policy reach a run that
        Timers starts, so such runs are found by their tags."""
        return {
            "body": self.body,
            "tags": self.tags,
            "run_monitors": self.run_monitors,
            "run_managers": self.run_managers,
        }


def iso_timestamp(value: Any) -> float | None:
    """An ISO 8601 time (the services' format) as POSIX seconds; a naive one is UTC, as in
    Flows; anything else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def run_start_time(run: dict[str, Any]) -> float | None:
    """A run document's start_time as a POSIX timestamp."""
    return iso_timestamp(run.get("start_time"))


class Backend(Protocol):
    kind: str

    # runs
    def run_flow(self, request: RunRequest) -> dict[str, Any]: ...
    def iter_runs(self, *, flow_ids: list[str]) -> Iterator[dict[str, Any]]:
        """The flows' runs, newest first, paginated lazily."""
        ...

    def get_run(self, run_id: str) -> dict[str, Any]: ...
    def iter_run_logs(self, run_id: str) -> Iterator[dict[str, Any]]: ...
    def cancel_run(self, run_id: str) -> dict[str, Any]: ...

    # timers
    def create_flow_timer(
        self, *, name: str, run_at: datetime, request: RunRequest
    ) -> dict[str, Any]: ...
    def create_recurring_flow_timer(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        """A timer that starts the flow every `interval_seconds` from `start`, each run
        with the same body (Timers keeps one FlowStartDocument per timer)."""
        ...

    def iter_timers(self) -> Iterator[dict[str, Any]]: ...
    def delete_timer(self, timer_id: str) -> dict[str, Any]: ...

    # deployment
    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        """The flow document, or None when the id answers 404."""
        ...

    def create_flow(self, spec: FlowSpec) -> dict[str, Any]: ...
    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]: ...
    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        """Errors the service finds in a definition ([] when it is valid)."""
        ...

    def register_function(self, *, name: str, source: str, description: str) -> str: ...
