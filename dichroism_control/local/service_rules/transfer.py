"""Rules of Globus Transfer (its tasks, as the Transfer action providers run them) that the
local Transfer provider obeys (sources beside each rule).

Sources: docs.globus.org pages named by their path; `timers.ts` is globus-sdk-javascript
`src/open-api/types/timers.ts` (its TransferTaskDocument types a task submission); the SDK
is globus-sdk's `services/transfer/data/transfer_data.py` and `delete_data.py`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# timers.ts TransferTaskDocument: `sync_level?: 0 | 1 | 2 | 3` — an integer on the wire.
# The names are the SDK's sugar (transfer_data.py `_sync_level_dict`, "For compatibility,
# this can be an integer 0, 1, 2, or 3 in addition to the string values"); accepted too.
SYNC_LEVELS = {"exists": 0, "size": 1, "mtime": 2, "checksum": 3}

# transfer_data.py `add_item`: an external_checksum is "Assumed to be an MD5 checksum unless
# checksum_algorithm is also given"; checksum_algorithm is per item (timers.ts
# TransferTaskItem) and is what verify_checksum, sync_level 3 and external_checksum use.
EXTERNAL_CHECKSUM_ALGORITHM = "MD5"

# docs.globus.org/api/transfer/task_submit, label: "The maximum length is 128 characters.
# Newline characters (\r or \n) and trailing or leading whitespace are not allowed."
TASK_LABEL_MAX = 128

# docs.globus.org/api/transfer/task_behavior, Queuing: "The Transfer backend will only work on
# 3 transfer tasks and 3 delete tasks per user at a time. Additional tasks will be queued";
# a queued task's nice_status is "Queued".
ACTIVE_TASKS_PER_USER = 3
QUEUED = "Queued"
# task_behavior, Deadlines: without one, a transfer starts with 24 hours (then extended
# while it progresses) and a delete has 24 hours.
DEFAULT_DEADLINE = timedelta(hours=24)

# Fatal error codes (a task's fatal_error.code is the code of its fatal event,
# docs.globus.org/api/transfer/task "fatal_error"): EXPIRED, "Task failed to complete before
# deadline" (docs.globus.org/api/transfer/task_events); the others from Transfer's event code
# list (Globus developer-discuss, "Event Document error codes", 2020-04-23).
EXPIRED = "EXPIRED"
EXTERNAL_CHECKSUM_MISMATCH = "EXTERNAL_CHECKSUM_MISMATCH"
VERIFY_CHECKSUM = "VERIFY_CHECKSUM"
FILE_NOT_FOUND = "FILE_NOT_FOUND"
PERMISSION_DENIED = "PERMISSION_DENIED"
IS_A_DIRECTORY = "IS_A_DIRECTORY"
NOT_A_DIRECTORY = "NOT_A_DIRECTORY"
CANCELED = "CANCELED"
ENDPOINT_ERROR = "ENDPOINT_ERROR"


class RequestRefused(ValueError):
    """A task submission Transfer refuses (a 400): the action cannot run at all."""


def sync_level(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in SYNC_LEVELS:
        return SYNC_LEVELS[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    raise RequestRefused(f"sync_level must be 0-3 (or one of {sorted(SYNC_LEVELS)}), not {value!r}")


def task_label(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestRefused(f"label must be a string, not {type(value).__name__}")
    if len(value) > TASK_LABEL_MAX:
        raise RequestRefused(f"label is {len(value)} characters; at most {TASK_LABEL_MAX}")
    if "\n" in value or "\r" in value or value != value.strip():
        raise RequestRefused("label may not hold newlines or leading/trailing whitespace")
    return value


def deadline(value: Any, now: datetime) -> datetime:
    """A task's deadline: ISO 8601 (transfer_data.py: "2017-10-12 09:30Z", "2017-10-12
    12:33:54+00:00", "2017-10-12"; read as UTC when it has no offset, as the SDK recommends),
    or 24 hours from now. One already past is refused: a task that must be done before it
    was submitted cannot run (closest reading; the pages do not say it in so many words)."""
    if value is None:
        return now + DEFAULT_DEADLINE
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RequestRefused(f"deadline {value!r} is not an ISO 8601 time") from None
    else:
        raise RequestRefused(f"deadline must be an ISO 8601 string, not {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if parsed <= now:
        raise RequestRefused(f"deadline {value} is in the past")
    return parsed


def transfer_time(ts: float) -> str:
    """docs.globus.org/api/transfer/file_operations, File document `last_modified`:
    "YYYY-MM-DD HH:MM:SS+00:00", UTC, whole seconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")


def stat_not_found(path: str) -> dict[str, Any]:
    """A stat of a missing path SUCCEEDS with details.code "NotFound": the Globus examples
    stat a destination that may not exist with the default ExceptionOnActionFailure and no
    Catch, and test `'code' not in DestinationStat.details or DestinationStat.details.code !=
    'NotFound'` (github.com/globus/globus-flows-examples transfer_examples/move/definition.json
    and two_hop/definition.json, state IdentifyPathTypes)."""
    return {"code": "NotFound", "message": f"Path not found: {path}", "path": path}
