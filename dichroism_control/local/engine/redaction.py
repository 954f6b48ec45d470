"""Keeping private data out of logs and output, as Globus Flows does: keys starting with
`_private` never leave the run state, and parameters an Action or ExpressionEval names in
`__Private_Parameters` are left out of what its log entries show."""

from __future__ import annotations

from typing import Any


def _strip_suffix(key: str) -> str:
    return key[:-2] if key.endswith((".$", ".=")) else key


def redact_private(value: Any) -> Any:
    """Copy of JSON data for logs/output: `_private*` keys are omitted (Globus semantics)."""
    if isinstance(value, dict):
        return {
            k: redact_private(v)
            for k, v in value.items()
            if not (isinstance(k, str) and k.startswith("_private"))
        }
    if isinstance(value, list):
        return [redact_private(v) for v in value]
    return value


def has_private_parameters(template: Any) -> bool:
    if isinstance(template, dict):
        return "__Private_Parameters" in template or any(
            has_private_parameters(v) for v in template.values()
        )
    if isinstance(template, list):
        return any(has_private_parameters(v) for v in template)
    return False


def redact_parameters(template: Any, value: Any) -> Any:
    """Remove parameters named in `__Private_Parameters` (at any nesting level) from `value`."""
    if isinstance(template, dict) and isinstance(value, dict):
        private = template.get("__Private_Parameters") or []
        hidden = {_strip_suffix(str(p)) for p in private} if isinstance(private, list) else set()
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in hidden:
                continue
            sub = next((template[k] for k in (key, f"{key}.$", f"{key}.=") if k in template), None)
            out[key] = redact_parameters(sub, item)
        return out
    if isinstance(template, list) and isinstance(value, list):
        return [redact_parameters(t, v) for t, v in zip(template, value, strict=False)] + value[
            len(template) :
        ]
    return value


def shown_parameters(template: Any, value: Any) -> Any:
    """What a log entry shows of the value evaluated from a Parameters `template`."""
    shown = redact_parameters(template, value) if has_private_parameters(template) else value
    return redact_private(shown)
