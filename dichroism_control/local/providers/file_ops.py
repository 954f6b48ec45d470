"""The synchronous Transfer action providers over local directories: stat, ls, mkdir.

Answers follow Transfer's File document (docs.globus.org/api/transfer/file_operations):
`type` ("file", "dir", "invalid_symlink", ...), `size`, `last_modified` as
"YYYY-MM-DD HH:MM:SS+00:00" (UTC, whole seconds), `permissions`, and `link_*` fields for a
symlink (which stat follows). A stat of a missing path SUCCEEDS with details.code "NotFound"
(service_rules.transfer.stat_not_found).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from dichroism_control.local.engine.actions import (
    FAILED,
    SUCCEEDED,
    ActionStatus,
    ActionUnableToRun,
)
from dichroism_control.local.service_rules import transfer as rules

_KINDS = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISCHR, "chr"),
    (stat.S_ISBLK, "blk"),
    (stat.S_ISFIFO, "pipe"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "other")


def file_document(name: str, path: Path) -> dict[str, Any] | None:
    """Transfer's File document for `path` (None when nothing is there, not even a link)."""
    try:
        here = path.lstat()
    except FileNotFoundError:
        return None
    link: dict[str, Any] = {
        "link_target": None,
        "link_size": None,
        "link_last_modified": None,
        "link_user": None,
        "link_group": None,
    }
    info: os.stat_result | None = here
    kind: str
    if stat.S_ISLNK(here.st_mode):
        link["link_target"] = os.readlink(path)
        link["link_size"] = here.st_size
        link["link_last_modified"] = rules.transfer_time(here.st_mtime)
        try:
            info = path.stat()
            kind = _kind(info.st_mode)
        except OSError:
            info, kind = None, "invalid_symlink"
    else:
        kind = _kind(here.st_mode)
    shown = info or here
    return {
        "DATA_TYPE": "file",
        "name": name,
        "type": kind,
        "size": shown.st_size,
        "last_modified": rules.transfer_time(shown.st_mtime),
        "permissions": f"{stat.S_IMODE(shown.st_mode):04o}",
        "user": None,
        "group": None,
        **link,
    }


def failed(code: str, message: str) -> ActionStatus:
    return ActionStatus(
        status=FAILED, details={"code": code, "message": message}, display_status=code
    )


def stat_path(path: Path, shown: str) -> ActionStatus:
    try:
        doc = file_document(path.name or "/", path)
    except OSError as exc:
        raise ActionUnableToRun(f"{shown}: {exc.strerror}", code="EndpointError") from None
    if doc is None:
        return ActionStatus(status=SUCCEEDED, details=rules.stat_not_found(shown))
    return ActionStatus(status=SUCCEEDED, details=doc)


def list_directory(path: Path, shown: str, endpoint_id: str, show_hidden: bool) -> ActionStatus:
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return failed("NotFound", f"{shown}: no such directory")
    except NotADirectoryError:
        return failed("NotADirectory", f"{shown}: not a directory")
    except OSError as exc:
        return failed("EndpointError", f"{shown}: {exc.strerror}")
    entries = []
    for name in names:
        if not show_hidden and name.startswith("."):
            continue
        with contextlib.suppress(OSError):
            doc = file_document(name, path / name)
            if doc is not None:
                entries.append(doc)
    return ActionStatus(
        status=SUCCEEDED,
        details={
            "DATA_TYPE": "file_list",
            "DATA": entries,
            "path": shown,
            "endpoint_id": endpoint_id,
            "length": len(entries),
        },
    )


def make_directory(path: Path, shown: str, endpoint_id: str) -> ActionStatus:
    try:
        path.mkdir()
    except FileExistsError:
        return failed("Exists", f"{shown}: already exists")
    except FileNotFoundError:
        return failed("NotFound", f"{shown}: the parent directory does not exist")
    except OSError as exc:
        return failed("EndpointError", f"{shown}: {exc.strerror}")
    return ActionStatus(
        status=SUCCEEDED,
        details={
            "DATA_TYPE": "mkdir_result",
            "code": "DirectoryCreated",
            "message": "The directory was created successfully",
            "path": shown,
            "endpoint_id": endpoint_id,
        },
    )
