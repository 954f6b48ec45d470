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


def emit(data: Any, *, fmt: Format, text: Callable[[Any], str] | None = None) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    rendered = text(data) if text is not None else json.dumps(data, indent=2, default=str)
    if rendered:
        sys.stdout.write(rendered.rstrip("\n") + "\n")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned table (no colour, no box drawing: it ends up in logs and e-mails)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def error(message: str) -> None:
    sys.stderr.write(f"dichroism: error: {message}\n")
