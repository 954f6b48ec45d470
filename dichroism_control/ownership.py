"""Whose runs these are: a ledger is acted on only by the identity that owns its runs.

Flows lists only the runs the caller owns unless asked for other roles (`GET /runs`
without `filter_roles`), and Timers lists only the caller's own timers. Every step that
decides whether to start something again (the launcher's crash recovery, the lifecycle's
adoption of archive runs and prune timers) decides from such a listing, so a person running
`lifecycle --once` with their own login against the service identity's ledger would see
nothing and start again what already exists. The ledger therefore records the identity
that started its first run (`Ledger.owner`), and commands that act on listings refuse any
other caller (`require_owner`); read-only listings only say what they cannot see.

Only the Globus backend has identities; the local backend sees every run it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dichroism_control.errors import ConfigError

if TYPE_CHECKING:
    from dichroism_control.backend import Backend, FlowSpec, RunRequest
    from dichroism_control.ledger import Identity, Ledger


def caller_of(backend: Backend) -> tuple[bool, Identity | None]:
    """(has identities, who the calls are made as). No HTTP call."""
    from dichroism_control.globus_backend import GlobusBackend

    if isinstance(backend, GlobusBackend):
        return True, backend.caller_identity()
    return False, None


def require_owner(ledger: Ledger, backend: Backend, *, command: str) -> Backend:
    """The backend to act with, or a one-line refusal when the caller does not own the
    ledger's runs. Before the ledger has an owner, the backend returned records the caller
    as the owner when it first starts a run or a timer."""
    identities, caller = caller_of(backend)
    if not identities:
        return backend
    owner = ledger.owner()
    if owner is None:
        return OwnerRecordingBackend(backend, ledger)
    if caller is None:
        raise ConfigError(
            f"{command}: this ledger's runs belong to {owner}, and who you are is not known"
            " (not logged in): run `dichroism login` as that identity"
        )
    if caller.id != owner.id:
        raise ConfigError(
            f"{command}: this ledger's runs and timers belong to {owner}, not to you"
            f" ({caller}); Flows and Timers list only the caller's own, so {command} would"
            " start again what it cannot see: run it as the owner"
        )
    return backend


def visibility(ledger: Ledger, backend: Backend) -> dict[str, Any]:
    """For read-only listings: who is listing, who owns the ledger's runs, and whether the
    listing can see them (None: not known, or no Globus identities involved)."""
    identities, caller = caller_of(backend)
    owner = ledger.owner()
    return {
        "caller": str(caller) if caller else None,
        "owner": str(owner) if owner else None,
        "is_owner": (caller.id == owner.id) if identities and caller and owner else None,
    }


class OwnerRecordingBackend:
    """A backend that records its caller as the ledger's owner on the first run or timer
    it starts (the first identity to start a run from a ledger owns it)."""

    def __init__(self, backend: Backend, ledger: Ledger) -> None:
        self._backend = backend
        self._ledger = ledger
        self._recorded = False
        self.kind = backend.kind

    def _record(self) -> None:
        if self._recorded:
            return
        _, caller = caller_of(self._backend)
        if caller is not None:
            self._ledger.record_owner(caller)
            self._recorded = True

    # runs
    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        run = self._backend.run_flow(request)
        self._record()
        return run

    def iter_runs(self, *, flow_ids: list[str]) -> Iterator[dict[str, Any]]:
        return self._backend.iter_runs(flow_ids=flow_ids)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._backend.get_run(run_id)

    def iter_run_logs(self, run_id: str) -> Iterator[dict[str, Any]]:
        return self._backend.iter_run_logs(run_id)

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        return self._backend.cancel_run(run_id)

    # timers
    def create_flow_timer(
        self, *, name: str, run_at: datetime, request: RunRequest
    ) -> dict[str, Any]:
        timer = self._backend.create_flow_timer(name=name, run_at=run_at, request=request)
        self._record()
        return timer

    def create_recurring_flow_timer(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        timer = self._backend.create_recurring_flow_timer(
            name=name, interval_seconds=interval_seconds, start=start, request=request
        )
        self._record()
        return timer

    def iter_timers(self) -> Iterator[dict[str, Any]]:
        return self._backend.iter_timers()

    def delete_timer(self, timer_id: str) -> dict[str, Any]:
        return self._backend.delete_timer(timer_id)

    # deployment
    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        return self._backend.get_flow(flow_id)

    def create_flow(self, spec: FlowSpec) -> dict[str, Any]:
        return self._backend.create_flow(spec)

    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]:
        return self._backend.update_flow(flow_id, spec)

    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        return self._backend.validate_flow(definition, input_schema)

    def register_function(self, *, name: str, source: str, description: str) -> str:
        return self._backend.register_function(name=name, source=source, description=description)
