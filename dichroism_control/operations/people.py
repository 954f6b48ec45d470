"""Who acted, and when a person means "since".

Retries, acknowledgements and cancellations are recorded with a name: the one given with
`--by`, else the local account (`user@host`). A Globus identity would need a network call
and says less to the colleague reading `scan show` than the account on the beamline host.
"""

from __future__ import annotations

import getpass
import re
import socket
import time
from datetime import UTC, datetime

from dichroism_control.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NAME_MAX = 200


def who(explicit: str | None = None) -> str:
    """The name recorded for an action: `explicit` (trimmed), else `user@host`."""
    if explicit is not None:
        name = " ".join(explicit.split())
        if not name:
            raise ConfigError("--by: must not be empty")
        return name[:_NAME_MAX]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def parse_since(value: str, *, now: float | None = None) -> float:
    """POSIX seconds from `6h` / `30m` / `2d` / `1w` (that long ago) or an ISO-8601 date or
    date/time (naive: local time, as a person on the beamline host means it)."""
    now = time.time() if now is None else now
    match = _DURATION.match(value)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"--since: {value!r} is neither a duration (30m, 6h, 2d, 1w) nor an ISO date or"
            " date/time (2026-03-01, 2026-03-01T08:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return moment.astimezone(UTC).timestamp()
