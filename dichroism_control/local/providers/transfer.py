"""The Transfer action provider (`https://transfer.actions.globus.org/{transfer,delete,
stat,ls,mkdir}`) over local directories standing in for collections (`collections.py`).

Every operation answers synchronously (SUCCEEDED or FAILED from `run`): the work is local,
so polling would only add latency. A long copy still honours the run's cancel event.

Stat of a missing path answers SUCCEEDED with `details.code == "NotFound"` (GLOBUS_NOTES:
"stat returns details.type or details.code == 'NotFound'"), so a flow can branch on it with
`IsPresent` (new_file's CheckSize does) instead of needing a Catch; ls and mkdir of a
missing path are FAILED, like the Transfer operations they stand for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.local.engine.actions import (
    FAILED,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
)
from dichroism_control.local.providers.checksums import (
    CHECKSUM_ALGORITHMS,
    DEFAULT_CHECKSUM,
    Canceled,
    checksum_file,
)
from dichroism_control.local.providers.collections import (
    CollectionError,
    collection_path,
    find_endpoint,
)
from dichroism_control.local.providers.documents import now_iso, require
from dichroism_control.local.providers.verified_copy import ChecksumMismatch, copy_file

if TYPE_CHECKING:
    from dichroism_control.config import Config, Endpoint

TRANSFER_BASE = "https://transfer.actions.globus.org"
TRANSFER_OPERATIONS = ("transfer", "delete", "stat", "ls", "mkdir")
TRANSFER_URLS = {op: f"{TRANSFER_BASE}/{op}" for op in TRANSFER_OPERATIONS}
SYNC_LEVELS = {"exists": 0, "size": 1, "mtime": 2, "checksum": 3}


def _transfer_time(ts: float) -> str:
    """Transfer's `last_modified` format: `YYYY-MM-DD HH:MM:SS+00:00`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")


class TransferError(Exception):
    """A Transfer task failure: `code` like Transfer's fatal_error codes."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass
class _Task:
    kind: str
    label: str | None
    started: str = field(default_factory=now_iso)
    t0: float = field(default_factory=time.monotonic)
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    files: int = 0
    files_transferred: int = 0
    files_skipped: int = 0
    directories: int = 0
    bytes_transferred: int = 0
    bytes_checksummed: int = 0
    deleted: int = 0

    def document(self, status: str, **extra: Any) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        doc: dict[str, Any] = {
            "DATA_TYPE": "task",
            "task_id": self.task_id,
            "type": self.kind,
            "status": status,
            "nice_status": None if status == SUCCEEDED else "FAILED",
            "label": self.label,
            "request_time": self.started,
            "completion_time": now_iso(),
            "files": self.files,
            "files_transferred": self.files_transferred,
            "files_skipped": self.files_skipped,
            "directories": self.directories,
            "bytes_transferred": self.bytes_transferred,
            "bytes_checksummed": self.bytes_checksummed,
            "effective_bytes_per_second": int(self.bytes_transferred / elapsed),
            "subtasks_succeeded": self.files_transferred + self.files_skipped + self.deleted,
            "fatal_error": None,
            "faults": 0,
        }
        doc.update(extra)
        return doc


def _data_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = require(body, "DATA")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ActionUnableToRun("DATA must be a non-empty list of objects", code="BadRequest")
    return items


def _sync_level(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in SYNC_LEVELS:
        return SYNC_LEVELS[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    raise ActionUnableToRun(
        f"sync_level must be one of {sorted(SYNC_LEVELS)} or 0-3, not {value!r}",
        code="BadRequest",
    )


class TransferProvider(ActionProvider):
    """One Transfer operation (`op`) over local directories standing in for collections."""

    def __init__(self, config: Config, op: str) -> None:
        if op not in TRANSFER_OPERATIONS:
            raise ValueError(f"unknown Transfer operation {op!r}")
        self.config = config
        self.op = op
        self.url = TRANSFER_URLS[op]

    def _path(self, endpoint: Endpoint, path: Any) -> Path:
        try:
            return collection_path(self.config, endpoint, path)
        except CollectionError as exc:
            raise ActionUnableToRun(str(exc), code="BadRequest") from None

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        handler = getattr(self, f"_{self.op}")
        result: ActionStatus = handler(body, ctx)
        return result

    # ---------------------------------------------------------------- transfer
    def _transfer(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        source = find_endpoint(self.config, require(body, "source_endpoint"))
        destination = find_endpoint(self.config, require(body, "destination_endpoint"))
        items = _data_items(body)
        level = _sync_level(body.get("sync_level"))
        verify = bool(body.get("verify_checksum", False))
        # Transfer's preserve_timestamp: the copy keeps the source's modification time (the
        # CFS prune compares it with the version recorded at detection).
        preserve = bool(body.get("preserve_timestamp", False))
        algorithm = str(body.get("checksum_algorithm") or DEFAULT_CHECKSUM).upper()
        if algorithm not in CHECKSUM_ALGORITHMS:
            raise ActionUnableToRun(
                f"checksum_algorithm {algorithm!r} is not one of {CHECKSUM_ALGORITHMS}",
                code="BadRequest",
            )
        pairs: list[tuple[Path, Path]] = []
        for item in items:
            src = self._path(source, item.get("source_path"))
            dst = self._path(destination, item.get("destination_path"))
            pairs.append((src, dst))
        task = _Task("TRANSFER", body.get("label") if isinstance(body.get("label"), str) else None)
        extra = {
            "source_endpoint_id": source.uuid,
            "destination_endpoint_id": destination.uuid,
            "sync_level": level,
            "verify_checksum": verify,
            "checksum_algorithm": algorithm,
        }
        try:
            for (src, dst), item in zip(pairs, items, strict=True):
                self._transfer_item(
                    task, src, dst, item, level, verify, algorithm, ctx, preserve=preserve
                )
        except TransferError as exc:
            doc = task.document(
                FAILED, fatal_error={"code": exc.code, "description": exc.description}, **extra
            )
            return ActionStatus(status=FAILED, details=doc, display_status=exc.code)
        return ActionStatus(status=SUCCEEDED, details=task.document(SUCCEEDED, **extra))

    def _transfer_item(
        self,
        task: _Task,
        src: Path,
        dst: Path,
        item: dict[str, Any],
        level: int | None,
        verify: bool,
        algorithm: str,
        ctx: ActionContext,
        *,
        preserve: bool = False,
    ) -> None:
        shown = item.get("source_path")
        try:
            info = src.stat()
        except FileNotFoundError:
            raise TransferError("FILE_NOT_FOUND", f"source {shown} does not exist") from None
        except OSError as exc:
            raise TransferError("ENDPOINT_ERROR", f"source {shown}: {exc.strerror}") from None
        if stat.S_ISDIR(info.st_mode):
            if not item.get("recursive"):
                raise TransferError(
                    "IS_A_DIRECTORY", f"source {shown} is a directory; set recursive: true"
                )
            task.directories += 1
            for child_src, child_dst in _walk_pairs(src, dst):
                if child_dst is None:
                    task.directories += 1
                    continue
                self._copy_one(
                    task, child_src, child_dst, level, verify, algorithm, ctx, preserve=preserve
                )
            return
        if item.get("recursive"):
            raise TransferError("NOT_A_DIRECTORY", f"source {shown} is not a directory")
        self._copy_one(task, src, dst, level, verify, algorithm, ctx, preserve=preserve)

    def _copy_one(
        self,
        task: _Task,
        src: Path,
        dst: Path,
        level: int | None,
        verify: bool,
        algorithm: str,
        ctx: ActionContext,
        *,
        preserve: bool = False,
    ) -> None:
        task.files += 1
        try:
            if level is not None and self._in_sync(task, src, dst, level, algorithm):
                task.files_skipped += 1
                return
            result = copy_file(src, dst, algorithm=algorithm, verify=verify, cancel=ctx.cancel)
            if preserve:
                source = src.stat()
                os.utime(dst, ns=(source.st_atime_ns, source.st_mtime_ns))
        except ChecksumMismatch as exc:
            raise TransferError("VERIFY_CHECKSUM", str(exc)) from None
        except Canceled:
            raise TransferError("CANCELED", "the transfer was canceled") from None
        except FileNotFoundError as exc:
            raise TransferError("FILE_NOT_FOUND", f"{exc.filename}: no such file") from None
        except OSError as exc:
            raise TransferError("ENDPOINT_ERROR", f"{src} -> {dst}: {exc}") from None
        task.files_transferred += 1
        task.bytes_transferred += result.bytes
        task.bytes_checksummed += result.bytes * (2 if verify else 1)

    def _in_sync(self, task: _Task, src: Path, dst: Path, level: int, algorithm: str) -> bool:
        try:
            there = dst.stat()
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(there.st_mode):
            return False
        if level == 0:
            return True
        here = src.stat()
        if there.st_size != here.st_size:
            return False
        if level == 1:
            return True
        if level == 2:
            return there.st_mtime >= here.st_mtime
        # Both checksums at once: each read releases the GIL.
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(checksum_file, dst, algorithm)
            mine = checksum_file(src, algorithm)
            same = mine == other.result()
        task.bytes_checksummed += 2 * here.st_size
        return same

    # ---------------------------------------------------------------- delete
    def _delete(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        del ctx
        endpoint = find_endpoint(self.config, body.get("endpoint", body.get("endpoint_id")))
        recursive = bool(body.get("recursive", False))
        ignore_missing = bool(body.get("ignore_missing", False))
        items = _data_items(body)
        task = _Task("DELETE", body.get("label") if isinstance(body.get("label"), str) else None)
        targets: list[tuple[Path, bool]] = []
        problems: list[str] = []
        # Check everything first: a delete that cannot be done in full deletes nothing.
        for item in items:
            shown = item.get("path")
            path = self._path(endpoint, shown)
            try:
                info = path.lstat()
            except FileNotFoundError:
                if not ignore_missing:
                    problems.append(f"{shown}: no such file")
                continue
            is_dir = stat.S_ISDIR(info.st_mode)
            if is_dir and not recursive:
                problems.append(f"{shown}: is a directory (recursive is false)")
                continue
            targets.append((path, is_dir))
        extra = {"endpoint_id": endpoint.uuid, "recursive": recursive}
        if problems:
            code = "FILE_NOT_FOUND" if all("no such" in p for p in problems) else "BAD_REQUEST"
            description = "nothing was deleted: " + "; ".join(problems[:20])
            doc = task.document(FAILED, fatal_error={"code": code, "description": description})
            return ActionStatus(status=FAILED, details={**doc, **extra}, display_status=code)
        for path, is_dir in targets:
            try:
                if is_dir:
                    shutil.rmtree(path)
                    task.directories += 1
                else:
                    path.unlink()
                    task.files += 1
                task.deleted += 1
            except OSError as exc:
                doc = task.document(
                    FAILED, fatal_error={"code": "ENDPOINT_ERROR", "description": f"{path}: {exc}"}
                )
                return ActionStatus(status=FAILED, details={**doc, **extra})
        doc = task.document(SUCCEEDED, files_deleted=task.files, **extra)
        return ActionStatus(status=SUCCEEDED, details=doc)

    # ---------------------------------------------------------------- stat, ls, mkdir
    def _stat(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        del ctx
        endpoint = find_endpoint(self.config, require(body, "endpoint_id"))
        shown = require(body, "path")
        path = self._path(endpoint, shown)
        try:
            info = path.stat()
        except FileNotFoundError:
            return ActionStatus(
                status=SUCCEEDED,
                details={
                    "code": "NotFound",
                    "message": f"{shown}: no such file or directory",
                    "path": shown,
                    "endpoint_id": endpoint.uuid,
                },
            )
        except OSError as exc:
            raise ActionUnableToRun(f"{shown}: {exc.strerror}", code="EndpointError") from None
        return ActionStatus(status=SUCCEEDED, details=_entry(path.name or "/", info))

    def _ls(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        del ctx
        endpoint = find_endpoint(self.config, require(body, "endpoint_id"))
        shown = require(body, "path")
        path = self._path(endpoint, shown)
        show_hidden = bool(body.get("show_hidden", True))
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            return _failed("NotFound", f"{shown}: no such directory")
        except NotADirectoryError:
            return _failed("NotADirectory", f"{shown}: not a directory")
        except OSError as exc:
            return _failed("EndpointError", f"{shown}: {exc.strerror}")
        entries = []
        for name in names:
            if not show_hidden and name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                entries.append(_entry(name, (path / name).stat()))
        return ActionStatus(
            status=SUCCEEDED,
            details={
                "DATA_TYPE": "file_list",
                "DATA": entries,
                "path": shown,
                "endpoint_id": endpoint.uuid,
                "length": len(entries),
            },
        )

    def _mkdir(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        del ctx
        endpoint = find_endpoint(self.config, require(body, "endpoint_id"))
        shown = require(body, "path")
        path = self._path(endpoint, shown)
        try:
            path.mkdir()
        except FileExistsError:
            return _failed("Exists", f"{shown}: already exists")
        except FileNotFoundError:
            return _failed("NotFound", f"{shown}: the parent directory does not exist")
        except OSError as exc:
            return _failed("EndpointError", f"{shown}: {exc.strerror}")
        return ActionStatus(
            status=SUCCEEDED,
            details={
                "DATA_TYPE": "mkdir_result",
                "code": "DirectoryCreated",
                "message": "The directory was created successfully",
                "path": shown,
                "endpoint_id": endpoint.uuid,
            },
        )


def _failed(code: str, message: str) -> ActionStatus:
    return ActionStatus(
        status=FAILED, details={"code": code, "message": message}, display_status=code
    )


def _entry(name: str, info: os.stat_result) -> dict[str, Any]:
    kind = "dir" if stat.S_ISDIR(info.st_mode) else "file"
    return {
        "DATA_TYPE": "file",
        "name": name,
        "type": kind,
        "size": info.st_size,
        "last_modified": _transfer_time(info.st_mtime),
        "permissions": f"{stat.S_IMODE(info.st_mode):04o}",
    }


def _walk_pairs(src: Path, dst: Path) -> Iterator[tuple[Path, Path | None]]:
    """(file, its destination) for every file below src; (dir, None) for each directory."""
    for directory, dirs, files in os.walk(src):
        dirs.sort()
        base = Path(directory)
        target = dst / base.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in dirs:
            yield base / name, None
        for name in sorted(files):
            yield base / name, target / name
