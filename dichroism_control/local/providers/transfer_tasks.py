"""The work of the local Transfer and Delete tasks, and the task document both report.

Transfer (per item): sync levels 0-3 skip what is already there; an item's
`external_checksum` (MD5 unless its `checksum_algorithm` says otherwise) must match the
source's bytes, else the task fails EXTERNAL_CHECKSUM_MISMATCH and nothing is left at the
destination; the copy is then read back (verify); `preserve_timestamp` gives the copy the
source's mtime. Delete: everything is checked before anything is deleted; a missing path
fails the task unless `ignore_missing`; a path that goes through a symlinked directory is
refused (never followed: a delete never leaves the collection's real root), and a symlink
named for deletion is removed itself, never its target.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dichroism_control.local.providers.checksums import Canceled, checksum_file
from dichroism_control.local.providers.transfer_queue import (
    FAILED,
    QUEUED,
    SUCCEEDED,
    Task,
    TaskFailed,
)
from dichroism_control.local.providers.verified_copy import (
    ChecksumMismatch,
    ExternalChecksumMismatch,
    copy_file,
)
from dichroism_control.local.service_rules import transfer as rules

COUNTERS = (
    "files",
    "files_transferred",
    "files_skipped",
    "directories",
    "bytes_transferred",
    "bytes_checksummed",
    "files_deleted",
)


def new_counters() -> dict[str, Any]:
    return {name: 0 for name in COUNTERS} | {"started": time.monotonic()}


def task_document(task: Task, extra: dict[str, Any]) -> dict[str, Any]:
    """The task as Transfer's task document shows it (docs.globus.org/api/transfer/task;
    the action providers' `details`, docs.globus.org/api/transfer/action-providers/transfer)."""
    counts = task.result or new_counters()
    status = {SUCCEEDED: "SUCCEEDED", FAILED: "FAILED"}.get(task.state, "ACTIVE")
    nice = rules.QUEUED if task.state == QUEUED else ("OK" if status != "FAILED" else None)
    elapsed = max(time.monotonic() - counts["started"], 1e-9)
    doc: dict[str, Any] = {
        "DATA_TYPE": "task",
        "task_id": task.task_id,
        "type": task.kind,
        "status": status,
        "nice_status": nice,
        "label": task.label,
        "request_time": task.request_time,
        "completion_time": task.completion_time,
        "deadline": task.deadline.isoformat(),
        "fatal_error": task.fatal_error,
        "is_ok": task.fatal_error is None,
        "faults": 0,
        "effective_bytes_per_second": int(counts["bytes_transferred"] / elapsed),
        "subtasks_succeeded": counts["files_transferred"]
        + counts["files_skipped"]
        + counts["files_deleted"],
        **{name: counts[name] for name in COUNTERS},
    }
    doc.update(extra)
    return doc


# ------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class TransferItem:
    src: Path
    dst: Path
    shown: str
    recursive: bool
    algorithm: str
    external: str | None


@dataclass(frozen=True)
class TransferOptions:
    sync_level: int | None
    verify: bool
    preserve_timestamp: bool


def transfer_work(
    items: Sequence[TransferItem], options: TransferOptions
) -> Callable[[Task], dict[str, Any]]:
    def work(task: Task) -> dict[str, Any]:
        for item in items:
            _transfer_item(task, item, options)
        return task.result

    return work


def _transfer_item(task: Task, item: TransferItem, options: TransferOptions) -> None:
    try:
        info = item.src.stat()
    except FileNotFoundError:
        raise TaskFailed(rules.FILE_NOT_FOUND, f"source {item.shown} does not exist") from None
    except PermissionError:
        denied = f"source {item.shown}: permission denied"
        raise TaskFailed(rules.PERMISSION_DENIED, denied) from None
    except OSError as exc:
        raise TaskFailed(rules.ENDPOINT_ERROR, f"source {item.shown}: {exc.strerror}") from None
    counts = task.result
    if stat.S_ISDIR(info.st_mode):
        if not item.recursive:
            raise TaskFailed(
                rules.IS_A_DIRECTORY, f"source {item.shown} is a directory; set recursive: true"
            )
        if item.external is not None:
            # transfer_data.py add_item: external_checksum "Cannot be used with directories".
            raise TaskFailed(
                rules.IS_A_DIRECTORY, f"{item.shown}: an external_checksum names one file"
            )
        counts["directories"] += 1
        for child_src, child_dst in _walk_pairs(item.src, item.dst):
            if child_dst is None:
                counts["directories"] += 1
                continue
            _copy_one(task, item, child_src, child_dst, options)
        return
    if item.recursive:
        raise TaskFailed(rules.NOT_A_DIRECTORY, f"source {item.shown} is not a directory")
    _copy_one(task, item, item.src, item.dst, options)


def _copy_one(
    task: Task, item: TransferItem, src: Path, dst: Path, options: TransferOptions
) -> None:
    counts = task.result
    counts["files"] += 1
    try:
        if options.sync_level is not None and _in_sync(task, item, src, dst, options.sync_level):
            counts["files_skipped"] += 1
            return
        result = copy_file(
            src,
            dst,
            algorithm=item.algorithm,
            # An external checksum is checked against the destination too (transfer_data.py:
            # "verify both source file and destination file integrity").
            verify=options.verify or item.external is not None,
            cancel=task.stop,
            expected=item.external,
            preserve_timestamp=options.preserve_timestamp,
        )
    except ExternalChecksumMismatch as exc:
        raise TaskFailed(rules.EXTERNAL_CHECKSUM_MISMATCH, str(exc)) from None
    except ChecksumMismatch as exc:
        raise TaskFailed(rules.VERIFY_CHECKSUM, str(exc)) from None
    except Canceled:
        task.check()
        raise TaskFailed(rules.CANCELED, "the task was canceled") from None
    except FileNotFoundError as exc:
        raise TaskFailed(rules.FILE_NOT_FOUND, f"{exc.filename}: no such file") from None
    except PermissionError as exc:
        raise TaskFailed(rules.PERMISSION_DENIED, f"{exc.filename}: permission denied") from None
    except OSError as exc:
        raise TaskFailed(rules.ENDPOINT_ERROR, f"{src} -> {dst}: {exc}") from None
    counts["files_transferred"] += 1
    counts["bytes_transferred"] += result.bytes
    verified = options.verify or item.external is not None
    counts["bytes_checksummed"] += result.bytes * (2 if verified else 1)


def _in_sync(task: Task, item: TransferItem, src: Path, dst: Path, level: int) -> bool:
    """Whether `dst` already matches `src` at sync `level` (transfer_data.py "Sync Levels")."""
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
        other = pool.submit(checksum_file, dst, item.algorithm)
        mine = checksum_file(src, item.algorithm)
        same = mine == other.result()
    task.result["bytes_checksummed"] += 2 * here.st_size
    if same and item.external is not None and mine.lower() != item.external.strip().lower():
        # Skipping must not pass off bytes that are not the ones the caller named.
        raise TaskFailed(
            rules.EXTERNAL_CHECKSUM_MISMATCH,
            f"{src}: {item.algorithm} of the source is {mine}, not the expected {item.external}",
        )
    return same


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


# ------------------------------------------------------------------------- delete


@dataclass(frozen=True)
class DeleteItem:
    path: Path
    shown: str


def symlink_on_the_way(root: Path, path: Path) -> Path | None:
    """The first directory between the collection's root and `path` that is a symlink."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path  # not below the root at all: refused like a symlink
    current = root
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            return current
    return None


def delete_work(
    root: Path, items: Sequence[DeleteItem], *, recursive: bool, ignore_missing: bool
) -> Callable[[Task], dict[str, Any]]:
    def work(task: Task) -> dict[str, Any]:
        targets: list[tuple[Path, str]] = []
        problems: list[tuple[str, str]] = []
        # Everything is checked first: a delete that cannot be done in full deletes nothing.
        for item in items:
            link = symlink_on_the_way(root, item.path)
            if link is not None:
                problems.append(
                    (
                        rules.PERMISSION_DENIED,
                        f"{item.shown}: goes through the symlink {link}; not followed",
                    )
                )
                continue
            try:
                info = item.path.lstat()
            except FileNotFoundError:
                if not ignore_missing:
                    problems.append((rules.FILE_NOT_FOUND, f"{item.shown}: no such file"))
                continue
            if stat.S_ISLNK(info.st_mode):
                targets.append((item.path, "link"))
            elif stat.S_ISDIR(info.st_mode):
                if not recursive:
                    problems.append(
                        (rules.IS_A_DIRECTORY, f"{item.shown}: is a directory (recursive is false)")
                    )
                    continue
                targets.append((item.path, "dir"))
            else:
                targets.append((item.path, "file"))
        if problems:
            text = "; ".join(p for _, p in problems[:20])
            raise TaskFailed(problems[0][0], f"nothing was deleted: {text}")
        counts = task.result
        for path, kind in targets:
            task.check()
            try:
                if kind == "dir":
                    # rmtree removes symlinks inside the tree as links, never their targets.
                    shutil.rmtree(path)
                    counts["directories"] += 1
                else:
                    path.unlink()
                    counts["files"] += 1
                counts["files_deleted"] += 1
            except OSError as exc:
                raise TaskFailed(rules.ENDPOINT_ERROR, f"{path}: {exc}") from None
        return counts

    return work
