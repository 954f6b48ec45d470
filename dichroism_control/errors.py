"""Exceptions the CLI turns into one-line messages and exit codes (DESIGN: 0 ok, 1 failed, 2 bad input)."""

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
