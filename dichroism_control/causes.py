"""Why a run failed, in one line: the innermost cause, and the next step where there is one.

A failed run of our flows nests its cause several layers deep: the run fails in a `Fail`
state (`TransferFailed`, ...) whose text only says "see $.error"; `$.error` holds the
caught `{"Error": "ActionFailedException", "Cause": "<JSON dump of the action's status
document>"}`; inside that dump sit the Compute task's traceback (its last line is the
exception, e.g. `[Errno 20] Not a directory: ...` some 700 characters in), or the Transfer
task's `fatal_error` / `nice_status_details`, or a verifier's list of files. Operators need
that innermost message; `--format json` gets the whole structure (`Cause.detail`), with every
JSON-in-a-string decoded and nothing truncated.

`explain_run` is THE function for this: the lifecycle records its `line()` as a failure
reason (status, timers list, logs, alerts) and `runs show|logs` display it. Nothing here
imports the rest of the project.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LINE_MAX = 400
_DEPTH_MAX = 12
_SPACE = re.compile(r"\s+")
# The last line of a Python traceback: `pkg.module.SomeError: message` (or a bare name).
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*)(?::\s*(.*))?$")
# Exception types that say nothing the message does not already say.
_GENERIC_TYPES = frozenset({"Exception", "RuntimeError"})
# Our flows' Fail-state texts only point at $.error; they are never the innermost cause.
_POINTER = "The error details are in the run's output under $.error."


@dataclass(frozen=True)
class Cause:
    """The innermost cause of a failure (`message`), where it happened and what to do."""

    message: str
    step: str | None = None
    remedy: str | None = None
    detail: Any = None

    def line(self, limit: int = LINE_MAX) -> str:
        """One line: `Step: message — next: remedy`, cut to `limit` characters."""
        text = f"{self.step}: {self.message}" if self.step else self.message
        if self.remedy:
            text = f"{text} — next: {self.remedy}"
        return one_line(text, limit)

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line(),
            "step": self.step,
            "message": self.message,
            "remedy": self.remedy,
            "detail": self.detail,
        }


def one_line(text: str, limit: int = LINE_MAX) -> str:
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- decoding ------------------------------------------------------------------------------
def decode(value: Any, depth: int = 0) -> Any:
    """`value` with every string that holds a JSON object or array decoded, recursively
    (an ActionFailedException's Cause is a JSON dump, sometimes of a JSON dump)."""
    if depth > _DEPTH_MAX:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "[") and text[-1:] in ("}", "]"):
            try:
                return decode(json.loads(text), depth + 1)
            except ValueError:
                return value
        return value
    if isinstance(value, Mapping):
        return {str(k): decode(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, depth + 1) for v in value]
    return value


def _get(node: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = node.get(key)
        if value not in (None, "", [], {}):
            return value
    return None


# -- the innermost message -----------------------------------------------------------------
def from_traceback(text: str) -> str | None:
    """The exception line of a Python traceback (`NotADirectoryError: [Errno 20] ...`)."""
    if "Traceback (most recent call last)" not in text:
        return None
    for raw in reversed(text.strip().splitlines()):
        if not raw or raw[0].isspace():
            continue
        match = _EXCEPTION_LINE.match(raw.strip())
        if match:
            name, message = match.group(1), (match.group(2) or "").strip()
            if name in _GENERIC_TYPES and message:
                return message
            return f"{name}: {message}" if message else name
    return None


def _text_message(text: str) -> str:
    found = from_traceback(text)
    if found:
        return found
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # Transfer's nice_status_details: "Error (transfer)\nEndpoint: ...\n...\nDetails: ..."
    for line in lines:
        if line.startswith("Details:"):
            return line.removeprefix("Details:").strip()
    return " / ".join(lines) if lines else text


def _exception_message(exception: Any) -> str | None:
    if isinstance(exception, str):
        return _text_message(exception)
    if isinstance(exception, Mapping):
        traceback = exception.get("traceback")
        if isinstance(traceback, str) and from_traceback(traceback):
            return from_traceback(traceback)
        kind, error = exception.get("type"), _get(exception, "error", "message")
        if error:
            if kind and kind not in _GENERIC_TYPES:
                return f"{kind}: {error}"
            return str(error)
    return None


def _transfer_message(task: Mapping[str, Any]) -> str | None:
    fatal = task.get("fatal_error")
    if isinstance(fatal, Mapping) and (fatal.get("code") or fatal.get("description")):
        parts = [str(p) for p in (fatal.get("code"), fatal.get("description")) if p]
        return ": ".join(parts)
    details = task.get("nice_status_details")
    if isinstance(details, str) and details.strip():
        return _text_message(details)
    nice = task.get("nice_status")
    if isinstance(nice, str) and nice not in ("OK", "Queued", "QUEUED", "SUCCEEDED"):
        short = task.get("nice_status_short_description")
        return f"{nice}: {short}" if short else nice
    return None


def innermost(value: Any, depth: int = 0) -> str | None:
    """The most specific human message inside a (decoded) error structure, or None."""
    if depth > _DEPTH_MAX or value is None:
        return None
    if isinstance(value, str):
        return _text_message(value) if value.strip() else None
    if isinstance(value, list):
        for item in value:
            found = innermost(item, depth + 1)
            if found:
                return found
        return None
    if not isinstance(value, Mapping):
        return str(value)
    # An error object {Error, Cause}: the cause is deeper than the name.
    cause = _get(value, "Cause", "cause")
    if cause is not None:
        found = innermost(cause, depth + 1)
        if found and found != _POINTER and not found.endswith(_POINTER):
            return found
    # A Transfer task document (the Transfer AP's details, or a task itself).
    if value.get("DATA_TYPE") == "task" or "fatal_error" in value or "nice_status" in value:
        found = _transfer_message(value)
        if found:
            return found
    # A Compute task failure: an exception (traceback text or {type, error, traceback}).
    exception = _get(value, "exception", "Exception")
    if exception is not None:
        found = _exception_message(exception)
        if found:
            return found
    for key in ("results", "result"):
        items = value.get(key)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, Mapping) and _get(item, "exception", "error"):
                    found = innermost(item, depth + 1)
                    if found:
                        return found
    # An action status document: its details hold the specifics.
    details = value.get("details")
    if isinstance(details, Mapping):
        found = innermost(details, depth + 1)
        if found:
            return found
    for key in ("error", "Error"):
        nested = value.get(key)
        if isinstance(nested, Mapping):
            found = innermost(nested, depth + 1)
            if found:
                return found
    code = _get(value, "code")
    text = _get(value, "description", "message", "error", "Error")
    if isinstance(text, str) and text.strip():
        message = _text_message(text)
        # A bare code next to a text that is not just the code repeated: keep both.
        if isinstance(code, str) and code not in message and code not in ("FlowFailed",):
            return f"{code}: {message}"
        return message
    if isinstance(code, str):
        return code
    return None


# -- next steps ----------------------------------------------------------------------------
# (pattern on "step: message", next step). First match wins: most specific first.
_REMEDIES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), remedy)
    for pattern, remedy in (
        (
            r"consent|ConsentRequired|AuthenticationRequired",
            "a person must grant consent: open the run in the Globus web app (Runs) and "
            "follow its prompt; for the service identity, `dichroism login` or re-deploy",
        ),
        (
            r"FunctionNotFound|unknown function_id|function .* not (found|registered)",
            "run `dichroism deploy` (a Compute function id is missing or stale)",
        ),
        (
            r"EndpointNotFound|endpoint .*(offline|not online|not connected|stopped)|"
            r"ENDPOINT_ERROR|GC_NOT_CONNECTED|GCP_NOT_CONNECTED|ENDPOINT_TOO_BUSY",
            "check that the endpoint is online (Globus web app: Collections / Compute "
            "endpoints; `globus-compute-endpoint list` at NERSC)",
        ),
        (
            r"PERMISSION_DENIED|Permission denied|EACCES|Errno 13|not authorized|forbidden",
            "grant the service identity access to that path (Globus web app: collection → "
            "Permissions, or the file system's permissions)",
        ),
        (
            r"QUOTA|No space left|Errno 28|Disk quota",
            "free space or raise the quota where the copy is written, then retry",
        ),
        (
            r"input invalid|input_schema|does not match",
            "the run input does not match the flow's schema: fix config.yml or "
            "`dichroism deploy` the current definitions, then retry",
        ),
        (
            r"not verified|outside root|refused \(nothing was checked\)",
            "nothing was deleted: check the named files' safe copies, then retry the batch",
        ),
        (
            r"\bhsi\b|\bhtar\b|HPSS|walltime",
            "check HPSS from the NERSC Compute endpoint (hsi/htar work there; NERSC status), "
            "then retry",
        ),
        (
            r"Not a directory|No such file|FILE_NOT_FOUND|NotFound|ENOENT|Errno 2\b|Errno 20\b",
            "check that the path exists where the step looked (watch root, source_root, "
            "the collection's root_path, hpss_root), then retry",
        ),
        (
            r"SciCat|SCICAT",
            "check SciCat and its credentials on the SciCat Compute endpoint (SCICAT_URL, "
            "SCICAT_TOKEN), then retry",
        ),
        (
            r"ActionTimeout|WaitTime|timed out|deadline|EXPIRED",
            "the step ran out of time: check the service's load or status, then retry",
        ),
        (r"^SizeMismatch", "the CFS copy differs from the scan: retry to send it again"),
        (
            r"^(IngestFailed|RecordFailed)",
            "the data are safe; check SciCat and its credentials, then retry",
        ),
        (
            r"^DeleteFailed",
            "every safe copy was verified but the delete failed; see the delete task in the "
            "Globus web app, then retry the batch",
        ),
        (
            r"^(TransferFailed|StatFailed)",
            "check both collections in the Globus web app (online, permissions), then retry",
        ),
    )
)


def remedy_for(text: str) -> str | None:
    for pattern, remedy in _REMEDIES:
        if pattern.search(text):
            return remedy
    return None


# -- entry points --------------------------------------------------------------------------
def _fail_state(details: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(error, cause) of the Fail state (or flow-level error) that ended a run."""
    for node in (details, details.get("details")):
        if isinstance(node, Mapping):
            error = _get(node, "error", "Error")
            cause = _get(node, "cause", "Cause")
            if isinstance(error, str) or isinstance(cause, str):
                return (error if isinstance(error, str) else None), (
                    cause if isinstance(cause, str) else None
                )
    return None, None


def _caught_errors(output: Any) -> list[tuple[str, Any]]:
    """Error objects a Catch stored in the run's state: `$.error` first, then any other
    `{Error, Cause}` at the top level (or the whole state, for a Catch without ResultPath)."""
    if not isinstance(output, Mapping):
        return []
    found: list[tuple[str, Any]] = []
    if "Error" in output and "Cause" in output:
        found.append(("$", output))
    keys = ["error", *sorted(k for k in output if k != "error")]
    for key in keys:
        value = output.get(key)
        if isinstance(value, Mapping) and ("Cause" in value or "cause" in value):
            found.append((f"$.{key}", value))
    return found


def _is_pointer(text: str | None) -> bool:
    return bool(text) and str(text).endswith(_POINTER)


def explain_run(run: Mapping[str, Any]) -> Cause:
    """The cause of a finished (or INACTIVE) run, from its run document."""
    raw_details = run.get("details")
    details: Mapping[str, Any] = raw_details if isinstance(raw_details, Mapping) else {}
    status = str(run.get("status") or "FAILED")
    fail_error, fail_cause = _fail_state(details)
    caught = _caught_errors(details.get("output"))
    message: str | None = None
    caught_name: str | None = None
    detail: dict[str, Any] = {"status": status}
    if fail_error or fail_cause:
        detail["fail_state"] = {
            "name": details.get("state_name"),
            "error": fail_error,
            "cause": fail_cause,
        }
    if caught:
        where, error = caught[0]
        decoded = decode(error)
        detail["caught"] = {"path": where, "error": decoded}
        message = innermost(decoded)
        name = decoded.get("Error") if isinstance(decoded, Mapping) else None
        caught_name = name if isinstance(name, str) else None
        if caught_name == "ActionTimeout" and isinstance(decoded, Mapping):
            inner = decoded.get("Cause")
            state = inner.get("status") if isinstance(inner, Mapping) else None
            found = innermost(inner)
            timeout = f"the action was still {state or 'running'} when the state's WaitTime ran out"
            message = f"{timeout} ({found})" if found else timeout
    if not message and fail_cause and not _is_pointer(fail_cause):
        message = innermost(fail_cause)
    if not message:
        # INACTIVE runs (consent), flow-level failures (States.Runtime), cancellations.
        rest = decode({k: v for k, v in details.items() if k != "output"})
        if rest:
            detail["details"] = rest
        message = innermost(rest)
    if not message and fail_cause:
        message = one_line(fail_cause)
    if not message:
        message = "cancelled" if status == "ENDED" else f"run {status}"
    step = fail_error
    if not step and caught_name not in (None, "ActionFailedException"):
        step = caught_name
    if not step and details.get("code") not in (None, "", "FlowFailed"):
        step = str(details.get("code"))
    if step and message.startswith(f"{step}:"):
        step = None
    return Cause(message, step, remedy_for(f"{step or ''}: {message}"), detail)


def explain_error(error: Any, *, step: str | None = None) -> Cause:
    """The cause inside one error structure: `{Error, Cause}`, an action status document,
    a run log entry's details, or text."""
    decoded = decode(error)
    message = innermost(decoded) or (one_line(str(error)) if error else "unknown error")
    if step is None and isinstance(decoded, Mapping):
        name = _get(decoded, "Error", "error")
        step = name if isinstance(name, str) and name != "ActionFailedException" else None
    if step and message.startswith(f"{step}:"):
        step = None
    return Cause(message, step, remedy_for(f"{step or ''}: {message}"), decoded)


def explain_text(text: str) -> Cause:
    """A reason recorded as text (a refused submission, an older ledger row)."""
    return Cause(one_line(text, 10_000), None, remedy_for(text), text)


def log_entry_cause(entry: Mapping[str, Any]) -> Cause | None:
    """The cause carried by a run log entry (ActionFailed, FlowFailed, ...), or None."""
    code = str(entry.get("code") or "")
    details = entry.get("details")
    if not isinstance(details, Mapping):
        return None
    if code == "FlowFailed":
        return explain_run({"status": "FAILED", "details": details})
    error = details.get("error")
    if isinstance(error, Mapping):
        return explain_error(error)
    if code.endswith(("Failed", "Timeout", "Inactive")):
        return explain_error(details)
    return None
