"""Globus Compute function: prove that files have a safe copy on NERSC CFS.

Runs at NERSC. **The whole module is the registered unit**: deploy registers this file's
full source text with ``cfs_verify`` as entrypoint (globus-compute-sdk
``register_source_code(source, function_name)``); the endpoint execs that text in a fresh
namespace and calls the function, so the private module-level helpers travel with it.
Standard library only and nothing from this project: the path-safety block below is a
copy of the one in ``hpss.py`` (a test keeps the two identical).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeGuard


def cfs_verify(
    *,
    target_root: str,
    safe_root: str,
    files: list[dict[str, object]],
) -> dict[str, object]:
    """Decide, file by file, whether the compute-dtn copy may be deleted because CFS holds
    the same bytes.

    ``target_root`` is the compute-dtn root the prune flow deletes from (not visible
    here); ``safe_root`` is the CFS root (visible here). Each file item is
    ``{"path": rel, "size": n, "checksum": md5 hex, "version": v, ...}`` (extra keys are
    ignored). File ``i`` is **safe** only when, at call time, the real path of
    ``{safe_root}/{rel}`` (symlinks resolved) lies inside the real ``safe_root``
    (compared with a trailing ``/``), it is a regular file opened without following
    symlinks, its size is exactly ``n`` (a larger copy is not a copy) and the MD5 of its
    content is ``checksum``. Anything else keeps the file, with a reason: ``missing``,
    ``not_regular``, ``outside_root``, ``size_differs``, ``checksum_differs``,
    ``unreadable``.

    Raises ``RuntimeError`` and checks nothing when the batch itself is wrong: a root not
    absolute or containing ``..``, the two roots equal or one inside the other (lexically
    and, where a root exists here, after resolving symlinks), ``files`` empty, any
    malformed item (named, first 20 and a count), or ``safe_root`` not a directory here.

    Returns ``{"algorithm": "md5", "checked": n, "safe": [i, ...], "kept": [{"i": i,
    "reason": code, "detail": str}]}`` with indices into ``files`` (compact: the result
    lands in the flow's run state).

    This proves what CFS holds; it cannot see the compute-dtn file that will be deleted.
    """
    target_root, safe_root = _roots_apart(target_root, safe_root)
    items = _items(files, (target_root, safe_root))
    if not os.path.isdir(safe_root):
        raise RuntimeError(f"safe_root {safe_root} is not a directory here; nothing was checked")
    real_root = os.path.realpath(safe_root)

    def check(item: dict[str, Any]) -> tuple[str | None, str, tuple[int, ...] | None]:
        return _local_copy(safe_root, real_root, item["rel"], item["size"], item["checksum"])

    safe: list[int] = []
    kept: list[dict[str, object]] = []
    for i, (reason, detail, _) in enumerate(_each(check, items)):
        if reason is None:
            safe.append(i)
        else:
            kept.append({"i": i, "reason": reason, "detail": detail[:120]})
    return {"algorithm": "md5", "checked": len(items), "safe": safe, "kept": kept}


# --- path safety (the same text in cfs.py and hpss.py; a test keeps them identical) -------
# Everything a deletion decision rests on lives in this block: which inputs are refused
# outright, which local files count as "inside" a root, and how a local copy is proven to
# hold the expected bytes (its MD5, read through a descriptor that no symlink can redirect).

_MD5_HEX = re.compile(r"[0-9a-f]{32}")
# Tape keeps version n >= 2 of `rel` at `rel@v<n>`; a file literally named like that could be
# mistaken for another file's version, so tape functions refuse such names.
_VERSIONED_NAME = re.compile(r".*@v[0-9]+")
_CHUNK = 8 * 1024 * 1024
_WORKERS = 4  # files hashed at once: enough to keep a parallel file system busy


class _Refused(Exception):
    """A local file that cannot be proven to be the expected one: reason code + detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _clean_rel(rel: object) -> str | None:
    """Normalised relative path, or None if absolute / '..' / empty / odd."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\n" in rel:
        return None
    if rel.startswith("/") or ".." in rel.split("/"):
        return None
    norm = posixpath.normpath(rel)
    if norm in (".", "") or norm.startswith("/") or norm.split("/")[0] == "..":
        return None
    return norm


def _abs_root(root: object, what: str) -> str:
    if not isinstance(root, str) or not root.startswith("/") or ".." in root.split("/"):
        raise RuntimeError(f"{what} must be an absolute path without '..': {root!r}")
    if "\x00" in root or "\n" in root:
        raise RuntimeError(f"{what} contains a NUL or newline: {root!r}")
    return posixpath.normpath(root)


def _inside(path: str, root: str) -> bool:
    """``path`` lies strictly below ``root``. The trailing '/' matters: a sibling
    ``.../raw_old`` shares the prefix ``.../raw`` but is not inside it."""
    prefix = root.rstrip("/") + "/"
    return path.startswith(prefix) and len(path) > len(prefix)


def _is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (JSON true must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _roots_apart(target_root: object, safe_root: object) -> tuple[str, str]:
    """Both roots normalised. Raises when they are equal or one lies inside the other,
    compared lexically and, where a root exists here, with symlinks resolved: a copy that
    is its own original proves nothing."""
    target = _abs_root(target_root, "target_root")
    safe = _abs_root(safe_root, "safe_root")
    targets = {target, os.path.realpath(target) if os.path.exists(target) else target}
    safes = {safe, os.path.realpath(safe) if os.path.exists(safe) else safe}
    for a in targets:
        for b in safes:
            if a == b or _inside(a, b) or _inside(b, a):
                raise RuntimeError(
                    f"target_root {target} and safe_root {safe} overlap ({a} vs {b});"
                    " nothing was checked"
                )
    return target, safe


def _items(
    files: object,
    roots: tuple[str, ...],
    *,
    archives: int | None = None,
    tape: bool = False,
) -> list[dict[str, Any]]:
    """Each file item as ``{"rel", "size", "checksum", "version", "archive"}`` (extra keys
    ignored). Raises naming every malformed item (first 20 and a count) before anything
    is checked: path absolute / '..' / empty / NUL / newline or leaving a root lexically,
    size not an int >= 0, checksum not 32 lowercase hex, version not an int >= 1, and
    with ``archives`` (their count) an ``archive`` that is neither -1 nor an index."""
    if not isinstance(files, list) or not files:
        raise RuntimeError("files is empty: nothing to check")
    wanted: list[dict[str, Any]] = []
    refused: list[str] = []
    for i, item in enumerate(files):
        if not isinstance(item, dict):
            refused.append(f"#{i}: not an object")
            continue
        raw = item.get("path")
        rel = _clean_rel(raw)
        problems: list[str] = []
        if rel is None:
            problems.append("path outside root (absolute, '..', empty, NUL or newline)")
        else:
            for root in roots:
                if not _inside(posixpath.normpath(posixpath.join(root, rel)), root):
                    problems.append(f"path outside root {root}")
            if tape and _VERSIONED_NAME.fullmatch(rel.rsplit("/", 1)[-1]):
                problems.append("name ends in '@v<n>', reserved for versioned tape copies")
        size = item.get("size")
        if not _is_int(size) or size < 0:
            problems.append(f"size {size!r} is not an integer >= 0")
        checksum = item.get("checksum")
        if not isinstance(checksum, str) or not _MD5_HEX.fullmatch(checksum):
            problems.append("checksum is not 32 lowercase hex digits (MD5)")
        version = item.get("version")
        if not _is_int(version) or version < 1:
            problems.append(f"version {version!r} is not an integer >= 1")
        archive = item.get("archive", -1) if archives is not None else -1
        if archives is not None and (
            not _is_int(archive) or not (archive == -1 or 0 <= archive < archives)
        ):
            problems.append(f"archive {archive!r} is neither -1 nor an index into archives")
        if problems:
            refused.append(f"#{i} {str(raw)[:200]!r}: {', '.join(problems)}")
            continue
        wanted.append(
            {"rel": rel, "size": size, "checksum": checksum, "version": version, "archive": archive}
        )
    if refused:
        raise RuntimeError(_summary(refused, len(files), "refused (nothing was checked)"))
    return wanted


def _summary(problems: list[str], total: int, what: str) -> str:
    shown = "; ".join(problems[:20])
    more = f"; ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"{len(problems)} of {total} file(s) {what}: {shown}{more}"


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or rewritten (a new version arriving)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _open_below(real_root: str, parts: list[str]) -> int:
    """Open ``real_root/parts...`` for reading without following any symlink below
    ``real_root``: each component is opened relative to its parent with O_NOFOLLOW, so a
    component swapped for a symlink after realpath() ran cannot redirect the read."""
    try:
        fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Refused("unreadable", f"root not readable: {exc.strerror}") from None
    try:
        for part in parts[:-1]:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                below = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise _Refused("missing", f"directory {part[:60]!r} missing") from None
            except NotADirectoryError:
                # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR: tell the two apart
                st = os.lstat(part, dir_fd=fd)
                if stat.S_ISLNK(st.st_mode):
                    raise _Refused("outside_root", f"{part[:60]!r} became a symlink") from None
                raise _Refused("missing", f"{part[:60]!r} is not a directory") from None
            except OSError as exc:
                raise _Refused("unreadable", f"{part[:60]!r}: {exc.strerror}") from None
            os.close(fd)
            fd = below
        try:
            st = os.lstat(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            raise _Refused("missing", "no such file") from None
        except OSError as exc:
            raise _Refused("unreadable", f"cannot stat: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            # never open FIFOs or devices: opening one can block or have side effects
            raise _Refused("not_regular", f"is a {_kind(st.st_mode)}, not a regular file")
        try:
            return os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd
            )
        except FileNotFoundError:
            raise _Refused("missing", "no such file") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Refused("not_regular", "became a symlink while checking") from None
            raise _Refused("unreadable", f"cannot open: {exc.strerror}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _md5(fd: int) -> tuple[str, int]:
    """MD5 (hex) and byte count of everything readable from ``fd``, in 8 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = os.readv(fd, [buf])
        if not n:
            return digest.hexdigest(), total
        digest.update(view[:n])
        total += n


def _local_copy(
    root: str, real_root: str, rel: str, size: int, checksum: str
) -> tuple[str | None, str, tuple[int, ...] | None]:
    """Prove that ``{root}/{rel}`` holds exactly the expected bytes.

    Returns ``(None, "", identity)`` when its real path (symlinks resolved) lies inside
    ``real_root``, it is a regular file, its size is exactly ``size`` and the MD5 of its
    content is ``checksum``; otherwise ``(reason, detail, None)`` with reason
    ``outside_root``, ``missing``, ``not_regular``, ``unreadable``, ``size_differs`` or
    ``checksum_differs``. A larger copy is not a copy.
    """
    real = os.path.realpath(posixpath.join(root, rel))
    if not _inside(real, real_root):
        return "outside_root", f"resolves to {real}"[:120], None
    parts = real[len(real_root.rstrip("/")) + 1 :].split("/")
    if any(part in ("", ".", "..") for part in parts):  # cannot come out of realpath()
        return "outside_root", f"resolves to {real}"[:120], None
    try:
        fd = _open_below(real_root, parts)
    except _Refused as exc:
        return exc.reason, exc.detail[:120], None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return "not_regular", f"is a {_kind(before.st_mode)}", None
        if before.st_size != size:
            return "size_differs", f"{before.st_size} bytes, expected {size}", None
        digest, count = _md5(fd)
        if count != size or _identity(os.fstat(fd)) != _identity(before):
            return "checksum_differs", "changed while being read", None
        if digest != checksum:
            return "checksum_differs", f"md5 {digest}, expected {checksum}", None
        return None, "", _identity(before)
    except OSError as exc:
        return "unreadable", f"read failed: {exc.strerror or exc}"[:120], None
    finally:
        os.close(fd)


def _each(func: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[func(x) for x in items]``, a few at a time (hashing waits on the file system)."""
    if len(items) <= 1:
        return [func(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(items))) as pool:
        return list(pool.map(func, items))


# --- end path safety ---
