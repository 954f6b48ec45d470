"""Collections on the local backend: a collection id is the endpoint in
`config.globus.endpoints` with that uuid, and a collection path `/x/y` is
`{endpoint.local_path}/x/y` (a relative `local_path` resolves against the config file's
directory). An unknown collection is `ActionUnableToRun`."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.local.engine.actions import ActionUnableToRun

if TYPE_CHECKING:
    from dichroism_control.config import Config, Endpoint


class CollectionError(Exception):
    """A collection path that cannot be mapped (relative, `..`); its text names the path."""


def find_endpoint(config: Config, collection_id: Any) -> Endpoint:
    for endpoint in config.globus.endpoints.values():
        if endpoint.uuid.lower() == str(collection_id).lower():
            return endpoint
    known = ", ".join(f"{e.name} ({e.uuid})" for e in config.globus.endpoints.values())
    raise ActionUnableToRun(
        f"unknown collection {collection_id!r}: no endpoint in config.globus.endpoints has "
        f"that uuid (known: {known})",
        code="NotFound",
    )


def collection_path(config: Config, endpoint: Endpoint, path: Any) -> Path:
    """The local file standing in for `path` on `endpoint` (never outside its local_path)."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise CollectionError(f"{path!r} is not an absolute collection path")
    if ".." in path.split("/"):
        raise CollectionError(f"{path!r}: '..' is not allowed in a collection path")
    base = config.resolve(endpoint.local_path)
    norm = posixpath.normpath(path).lstrip("/")
    return base / norm if norm else base
