"""The one output function: every command hands its result here (globus-cli style).

`--format json` prints exactly one JSON document on stdout; text goes to stdout for people.
Logs and errors go to stderr, so `dichroism ... --format json | jq` always parses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

Format = Literal["text", "json"]


_state = {"emitted": False}


def reset() -> None:
    """A new command starts: nothing printed yet."""
    _state["emitted"] = False


def emitted() -> bool:
    """Whether this command printed its document (an error then goes to stderr only, so
    stdout still holds exactly one JSON document)."""
    return _state["emitted"]


def emit(data: Any, *, fmt: Format, text: Callable[[Any], str] | None = None) -> None:
    _state["emitted"] = True
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    rendered = text(data) if text is not None else json.dumps(data, indent=2, default=str)
    if rendered:
        sys.stdout.write(rendered.rstrip("\n") + "\n")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """An aligned table in `globus` CLI style: title-case headers, ` | ` between columns, a
    dashed rule (no colour, no box drawing: it ends up in logs and e-mails)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, " | ".join("-" * w for w in widths))
    return "\n".join(lines)


def record(fields: Sequence[tuple[str, Any]]) -> str:
    """A `key: value` record (`globus ... show` style): keys aligned, one field per line."""
    width = max((len(name) for name, _ in fields), default=0) + 2
    lines = []
    for name, value in fields:
        text = "" if value is None else str(value)
        head, *rest = text.splitlines() or [""]
        lines.append(f"{name + ':':<{width}}{head}".rstrip())
        lines.extend(f"{'':<{width}}{line}".rstrip() for line in rest)
    return "\n".join(lines)


def local_time(value: Any) -> str | None:
    """A timestamp (POSIX seconds or ISO-8601; naive ISO is UTC, as in Globus documents) in
    local time, `YYYY-MM-DD HH:MM:SS`, as `globus` prints dates; None stays None."""
    from datetime import UTC, datetime

    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), UTC)
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as storage systems bill them)."""
    value = float(count)
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    for unit in units[:-1]:
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} {units[-1]}"


def error_document(message: str, exit_code: int, **extra: Any) -> None:
    """`--format json`: the error as the one JSON document on stdout (same exit code)."""
    body = {"message": message, "exit_code": exit_code, **extra}
    sys.stdout.write(json.dumps({"error": body}, indent=2, sort_keys=True, default=str) + "\n")


def error(message: str) -> None:
    sys.stderr.write(f"dichroism: error: {message}\n")
