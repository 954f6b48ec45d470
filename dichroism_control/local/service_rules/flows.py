"""Rules of the Globus Flows service that the doubles obey (sources beside each rule).

Sources: `flows.ts` is globus-sdk-javascript `src/open-api/types/flows.ts` (the Flows
OpenAPI types); "SDK fixtures" are globus-sdk's recorded responses under
`globus_sdk/testing/data/flows/`; docs.globus.org pages are named by their path.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from dichroism_control.errors import PermanentBackendError
from dichroism_control.schema_formats import format_checker

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
ENDED = "ENDED"
# flows.ts FlowRun.status; ACTIVE and INACTIVE are the live ones.
LIVE = frozenset({ACTIVE, INACTIVE})

# ------------------------------------------------------------------------- errors


def not_found(what: str, ident: str) -> PermanentBackendError:
    """flows.ts: GET /runs/{run_id}, POST /flows/{flow_id}/run answer 404 for an unknown id
    (Timers likewise for an unknown job): never a KeyError."""
    return PermanentBackendError(f"404 NOT_FOUND: no {what} {ident!r}", http_status=404)


# ------------------------------------------------------------------------- run requests

# GLOBUS_NOTES: "Run label: at most 128 characters". flows.ts types `Label` as a bare string
# (the generated types drop length constraints), so the number itself rests on the notes,
# matching Transfer's documented label limit (docs.globus.org/api/transfer/task_submit,
# "The maximum length is 128 characters").
LABEL_MAX = 128
# flows.ts POST /flows/{flow_id}/run: 400 is "The Run's input failed validation against the
# Flow's input schema" and 422 "The input tags did not pass validation": run metadata that
# fails validation is a 422, so an over-long label is refused with 422 (closest reading).
LABEL_REFUSED = 422

# flows.ts ActivityNotificationPolicy: `status` defaults to ["INACTIVE"].
DEFAULT_NOTIFY_ON = ("INACTIVE",)


def check_label(label: str | None) -> None:
    if label is not None and len(label) > LABEL_MAX:
        raise PermanentBackendError(
            f"{LABEL_REFUSED} UNPROCESSABLE_ENTITY: label is {len(label)} characters; "
            f"a run label has at most {LABEL_MAX}",
            http_status=LABEL_REFUSED,
        )


InputCheck = Callable[[Any], None]


def input_validator(schema: Mapping[str, Any] | None) -> InputCheck:
    """A check of run input against a flow's input schema, formats included.

    flows.ts InputBody: "If the flow defines an input schema, the input body will be
    validated against the input schema. If there is no input schema, no validation will be
    performed." docs.globus.org/api/flows/input-schema: the service "uses the input schema
    to verify that the user input meets the flow's input requirements", e.g. `"format":
    "email"`. A refusal is a 400 (flows.ts POST /flows/{flow_id}/run) naming the first error.
    """
    if not schema:
        return lambda body: None
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=format_checker(cls))

    def check(body: Any) -> None:
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(top)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise PermanentBackendError(
                f"400 BAD_REQUEST: input does not match the flow's input_schema at "
                f"{where}: {first.message[:500]}{more}",
                http_status=400,
            )

    return check


# ------------------------------------------------------------------------- run documents


def start_time(ts: float) -> str:
    """A timezone-aware ISO 8601 time, as flows.ts FlowRun.start_time is and as the SDK
    fixtures show it ("2023-04-11T20:01:18.040416+00:00")."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


# Run details codes and descriptions as the SDK fixtures record them
# (flows/_common.py: FlowStarting, FlowSucceeded; flows/cancel_run.py: FlowCanceled).
STARTING = {"code": "FlowStarting", "description": "The Flow is starting execution"}


def succeeded_details(output: Any) -> dict[str, Any]:
    return {
        "code": "FlowSucceeded",
        "description": "The Flow run reached a successful completion state",
        "output": output,
    }


def failed_details(output: Any, description: str = "The Flow run failed") -> dict[str, Any]:
    return {"code": "FlowFailed", "description": description, "output": output}


# A canceled run is FAILED with details.code FlowCanceled: SDK fixture flows/cancel_run.py
# (status "FAILED", code "FlowCanceled"), and globus-cli PR #834, where a run canceled
# while active shows "Status: FAILED".
CANCELED_STATUS: Final = "FAILED"


def canceled_details(
    description: str = "The Flow Instance was canceled by the user",
) -> dict[str, Any]:
    return {"code": "FlowCanceled", "description": description}


def inactive_details(code: str, description: str) -> dict[str, Any]:
    """An INACTIVE run's details: flows.ts FlowRun.status includes INACTIVE; a run waits
    there when a consent is missing (globus-sdk `SpecificFlowClient.
    add_app_transfer_data_access_scope` docstring: "preventing ``ConsentRequired`` errors
    when starting or resuming runs"); `code` is what the run waits on, e.g. ConsentRequired."""
    return {"code": code, "description": description}


def run_document(
    *,
    run_id: str,
    flow_id: str,
    flow_title: str,
    status: str,
    label: str | None,
    tags: Sequence[str],
    start_time: str,
    completion_time: str | None,
    details: Any,
    run_managers: Sequence[str],
    run_monitors: Sequence[str],
    notify_on: Sequence[str] | None,
    owner: str,
) -> dict[str, Any]:
    """A run as flows.ts FlowRun and the SDK fixtures (flows/_common.py RUN) show it."""
    return {
        "run_id": run_id,
        "action_id": run_id,
        "flow_id": flow_id,
        "flow_title": flow_title,
        "status": status,
        "display_status": status,
        "label": label,
        "tags": list(tags),
        "start_time": start_time,
        "completion_time": completion_time,
        "details": details,
        "run_managers": list(run_managers),
        "run_monitors": list(run_monitors),
        "manage_by": list(run_managers),
        "monitor_by": list(run_monitors),
        "activity_notification_policy": {
            "status": list(notify_on if notify_on is not None else DEFAULT_NOTIFY_ON)
        },
        "run_owner": owner,
        "created_by": owner,
        "user_role": "run_owner",
    }


# ------------------------------------------------------------------------- run state

# docs.globus.org/api/flows/limits, "Maximum Run State Size: 200KB". Read as 200,000 bytes of
# the state serialised as compact UTF-8 JSON: the page says neither which kilobyte nor which
# encoding, and the smaller reading fails a run the real service might still accept,
# never the other way round.
RUN_STATE_MAX_BYTES = 200_000
# The limits page does not say how a run that outgrows the cap ends. Closest reading: the
# run FAILS (it cannot go on), its details naming the cause; this code is ours.
STATE_TOO_LARGE = "RunStateTooLarge"


def state_size(state: Any) -> int:
    return len(json.dumps(state, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def state_too_large(size: int, where: str | None) -> str:
    at = f" after state {where}" if where else " at the start"
    return (
        f"the run's state is {size} bytes{at}, over the {RUN_STATE_MAX_BYTES}-byte "
        "(200KB) limit on a run's state (docs.globus.org/api/flows/limits)"
    )


# ------------------------------------------------------------------------- run listing

# SDK fixture flows/list_runs.py: pages of `limit` runs (20) with `has_next_page` and an
# opaque `marker`; flows.ts GET /runs: "If there are no more entries, this field will not
# exist" and "The marker encodes all state in a given query" (later arguments are ignored).
RUNS_PAGE_LIMIT = 20


def encode_marker(flow_ids: Sequence[str], after: Sequence[Any]) -> str:
    raw = json.dumps({"flows": list(flow_ids), "after": list(after)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_marker(marker: str) -> tuple[list[str], list[Any]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(marker.encode()))
        return list(data["flows"]), list(data["after"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise PermanentBackendError(
            f"400 BAD_REQUEST: invalid marker {marker!r}", http_status=400
        ) from None


def page_document(
    runs: list[dict[str, Any]], flow_ids: Sequence[str], last_key: Sequence[Any] | None, more: bool
) -> dict[str, Any]:
    """One page of a run listing, newest first (GET /runs?orderby=start_time DESC)."""
    page: dict[str, Any] = {"runs": runs, "limit": RUNS_PAGE_LIMIT, "has_next_page": more}
    if more and last_key is not None:
        page["marker"] = encode_marker(flow_ids, last_key)
    return page


def newest_first_page(
    entries: Sequence[tuple[Sequence[Any], dict[str, Any]]],
    flow_ids: Sequence[str],
    marker: str | None,
) -> dict[str, Any]:
    """A page of in-memory runs: `entries` are (key, run) with keys (start ts, tie-break)
    that order runs newest first when sorted descending."""
    after: list[Any] | None = None
    if marker is not None:
        flow_ids, after = decode_marker(marker)
    wanted = set(flow_ids)
    chosen = sorted(
        (e for e in entries if not wanted or e[1]["flow_id"] in wanted),
        key=lambda e: list(e[0]),
        reverse=True,
    )
    if after is not None:
        chosen = [e for e in chosen if list(e[0]) < after]
    window = chosen[:RUNS_PAGE_LIMIT]
    more = len(chosen) > RUNS_PAGE_LIMIT
    last = list(window[-1][0]) if window else None
    return page_document([dict(run) for _, run in window], flow_ids, last, more)
