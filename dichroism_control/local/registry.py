"""What the local backend keeps of deployments: Compute functions and flows (with their
input schemas), in the `local_functions` and `local_flows` tables, and the validation the
service applies when a flow is created or updated and when a run's input arrives."""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING, Any

from dichroism_control.errors import PermanentBackendError
from dichroism_control.local.run_documents import now_iso
from dichroism_control.local.service_rules.flows import InputCheck, input_validator, not_found
from dichroism_control.local.store import LocalStore, dumps, loads

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Mapping

    from dichroism_control.backend import FlowSpec


class FlowRegistry:
    """Flows and Compute functions of one local deployment (one ledger file)."""

    def __init__(
        self,
        store: LocalStore,
        problems: Callable[[Mapping[str, Any]], list[str]],
        user_id: str,
    ) -> None:
        self.store = store
        self._problems = problems  # the engine's checks of a definition
        self.user_id = user_id
        self._lock = threading.Lock()
        self._checks: dict[str, InputCheck] = {}

    # ------------------------------------------------------------------ functions
    def register_function(self, *, name: str, source: str, description: str) -> str:
        # Compute functions are immutable: every registration is a new id.
        function_id = str(uuid.uuid4())
        self.store.execute(
            "INSERT INTO local_functions (id, name, source, description, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (function_id, name, source, description, now_iso()),
        )
        return function_id

    def get_function(self, function_id: str) -> tuple[str, str] | None:
        rows = self.store.query(
            "SELECT name, source FROM local_functions WHERE id = ?", (function_id,)
        )
        return (rows[0]["name"], rows[0]["source"]) if rows else None

    # ------------------------------------------------------------------ flows
    def flow_row(self, flow_id: str) -> sqlite3.Row | None:
        rows = self.store.query("SELECT * FROM local_flows WHERE id = ?", (flow_id,))
        return rows[0] if rows else None

    def flow_document(self, row: sqlite3.Row) -> dict[str, Any]:
        doc: dict[str, Any] = dict(loads(row["spec"]))
        doc.update(
            {
                "id": row["id"],
                "title": row["title"],
                "definition": loads(row["definition"]),
                "input_schema": loads(row["input_schema"]),
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
                "flow_owner": f"urn:globus:auth:identity:{self.user_id}",
                "user_role": "flow_owner",
            }
        )
        doc.setdefault("subscription_id", None)
        return doc

    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        row = self.flow_row(flow_id)
        return None if row is None else self.flow_document(row)

    def create_flow(self, spec: FlowSpec) -> dict[str, Any]:
        self._check_spec(spec)
        flow_id = str(uuid.uuid4())
        now = now_iso()
        self.store.execute(
            "INSERT INTO local_flows (id, title, definition, input_schema, spec, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                flow_id,
                spec.title,
                dumps(spec.definition),
                dumps(spec.input_schema),
                dumps(spec.fields()),
                now,
                now,
            ),
        )
        flow = self.get_flow(flow_id)
        assert flow is not None
        return flow

    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]:
        self._check_spec(spec)
        count = self.store.execute(
            "UPDATE local_flows SET title = ?, definition = ?, input_schema = ?, spec = ?,"
            " updated_at = ? WHERE id = ?",
            (
                spec.title,
                dumps(spec.definition),
                dumps(spec.input_schema),
                dumps(spec.fields()),
                now_iso(),
                flow_id,
            ),
        )
        if count == 0:
            raise not_found("flow", flow_id)
        with self._lock:
            self._checks.pop(flow_id, None)
        flow = self.get_flow(flow_id)
        assert flow is not None
        return flow

    def _check_spec(self, spec: FlowSpec) -> None:
        # The service refuses invalid definitions at create/update (400/422); so do we.
        problems = self.validate_flow(spec.definition, spec.input_schema)
        if problems:
            raise PermanentBackendError(
                "422 UNPROCESSABLE_ENTITY: " + "; ".join(problems[:5]), http_status=422
            )

    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        from dichroism_control.definitions import structural_errors

        problems = list(self._problems(definition))
        for error in structural_errors(definition, input_schema):
            if error not in problems:
                problems.append(error)
        return problems

    # ------------------------------------------------------------------ run input
    def validate_body(self, flow: sqlite3.Row, body: dict[str, Any]) -> None:
        """Refuse (400) run input the flow's input schema rejects, formats included
        (service_rules.flows.input_validator)."""
        with self._lock:
            check = self._checks.get(flow["id"])
        if check is None:
            check = input_validator(loads(flow["input_schema"]))
            with self._lock:
                self._checks[flow["id"]] = check
        check(body)
