"""Exceptions the CLI turns into one-line messages and exit codes.

DESIGN: 0 ok, 1 operation failed, 2 bad usage / config / input.
"""

from __future__ import annotations


class DichroismError(Exception):
    """An expected failure: shown as one line, exit code `exit_code`."""

    exit_code = 1


class ConfigError(DichroismError):
    """Bad config, bad usage or bad input: exit 2, and nothing was changed."""

    exit_code = 2


class DefinitionError(DichroismError):
    """A flow definition or input schema is structurally wrong."""

    exit_code = 2


class BackendError(DichroismError):
    """The backend (Globus or local) refused or failed an operation."""

    exit_code = 1


class TransientBackendError(BackendError):
    """Worth retrying later: 429, 5xx, connection errors. `retry_after` honours Retry-After.

    `http_status` is None for connection errors: callers that must know whether the request
    may have taken effect (a run started before a 502 or a dropped connection) look at it.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.http_status = http_status


class PermanentBackendError(BackendError):
    """Retrying the same request will not help (400 bad input, 403 consent, 404)."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class AuthRequiredError(BackendError):
    """Globus wants a person: a login, a new consent, a session. Never retried blindly and
    never prompted for from a non-interactive process; the message names the command."""
