"""What a run leaves behind: its log, written as it happens, and the `RunOutcome` shaped
like the Flows run document (`status`, `details: {code, description, output}`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from dichroism_control.local.service_rules.flows import (
    CANCELED_STATUS,
    STATE_TOO_LARGE,
    canceled_details,
    state_size,
    state_too_large,
)

LogEntry = dict[str, Any]
RunStatus = Literal["SUCCEEDED", "FAILED", "ENDED"]


@dataclass
class RunOutcome:
    """The finished run: Flows run-document fields plus the log and transition count."""

    run_id: str
    status: RunStatus
    details: dict[str, Any]
    log: list[LogEntry]
    transitions: int
    start_time: str
    completion_time: str

    @property
    def code(self) -> str:
        return str(self.details["code"])

    @property
    def output(self) -> Any:
        return self.details.get("output")

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def run_fields(self) -> dict[str, Any]:
        """Fields of a Flows run document (`get_run`) this outcome determines."""
        return {
            "run_id": self.run_id,
            "action_id": self.run_id,
            "status": self.status,
            "display_status": self.status,
            "details": self.details,
            "start_time": self.start_time,
            "completion_time": self.completion_time,
        }


class RunRecord:
    """One run's log entries (`get_run_logs` shapes) and the outcome that ends it."""

    def __init__(
        self,
        run_id: str,
        timestamp: Callable[[], str],
        on_log: Callable[[LogEntry], None] | None,
    ) -> None:
        self.run_id = run_id
        self.timestamp = timestamp
        self.on_log = on_log
        self.log: list[LogEntry] = []
        self.transitions = 0
        self.start_time = timestamp()

    def emit(self, code: str, description: str, details: dict[str, Any]) -> None:
        entry: LogEntry = {
            "time": self.timestamp(),
            "code": code,
            "description": description,
            "details": details,
        }
        self.log.append(entry)
        if self.on_log is not None:
            self.on_log(entry)

    def state_event(self, name: str, state_type: str, phase: str, **details: Any) -> None:
        self.emit(
            f"{state_type}{phase}",
            f"State {name} of type {state_type} {phase.lower()}",
            {"state_name": name, "state_type": state_type, **details},
        )

    def finish(self, status: RunStatus, details: dict[str, Any]) -> RunOutcome:
        return RunOutcome(
            run_id=self.run_id,
            status=status,
            details=details,
            log=self.log,
            transitions=self.transitions,
            start_time=self.start_time,
            completion_time=self.timestamp(),
        )

    def failed(
        self,
        code: str,
        description: str,
        *,
        state_name: str | None,
        error: str,
        cause: str,
        output: Any,
    ) -> RunOutcome:
        details = {
            "code": code,
            "description": description,
            "output": output,
            "state_name": state_name,
            "error": error,
            "cause": cause,
        }
        self.emit(
            "FlowFailed",
            "The Flow run reached a failure state",
            {
                "state_name": state_name,
                "code": code,
                "error": error,
                "cause": cause,
                "output": output,
            },
        )
        return self.finish("FAILED", details)

    def over_state_cap(self, state: Any, limit: int | None, name: str | None) -> RunOutcome | None:
        """FAILED when the run state is over the Flows cap (service_rules.flows), measured
        after every state transition; None while it fits (or with no cap)."""
        if limit is None:
            return None
        size = state_size(state)
        if size <= limit:
            return None
        description = state_too_large(size, name)
        # The state itself is what does not fit: it is not repeated as the output.
        return self.failed(
            STATE_TOO_LARGE,
            description,
            state_name=name,
            error=STATE_TOO_LARGE,
            cause=description,
            output=None,
        )

    def succeeded(self, output: Any) -> RunOutcome:
        self.emit("FlowSucceeded", "The Flow Instance completed successfully", {"output": output})
        return self.finish(
            "SUCCEEDED",
            {
                "code": "FlowSucceeded",
                "description": "The Flow run reached a successful completion state",
                "output": output,
            },
        )

    def canceled(self, state_name: str, output: Any) -> RunOutcome:
        self.emit(
            "FlowCanceled",
            "The Flow Instance was canceled",
            {"state_name": state_name, "output": output},
        )
        # Flows ends a canceled run FAILED with code FlowCanceled (service_rules.flows).
        return self.finish(
            CANCELED_STATUS,
            {
                **canceled_details(
                    f"The Flow Instance was canceled by the user (at state {state_name})"
                ),
                "output": output,
                "state_name": state_name,
            },
        )
