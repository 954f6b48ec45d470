"""Globus Compute function: verify that files have a safe copy on NERSC CFS.

Runs at NERSC. **The whole module is the registered unit**: deploy registers this file's
full source text with ``cfs_verify`` as entrypoint (globus-compute-sdk
``register_source_code(source, function_name)``); the endpoint execs that text in a fresh
namespace and calls the function, so the private module-level helpers travel with it.
Standard library only and nothing from this project: the path-safety helpers below are a
copy of those in ``hpss.py`` (a test keeps the two identical).
"""

from __future__ import annotations

import os
import posixpath
import stat


def cfs_verify(
    *,
    target_root: str,
    safe_root: str,
    files: list[dict[str, object]],
) -> dict[str, object]:
    """Confirm every file has a copy of the same size under ``safe_root`` (the CFS root).

    For each ``{"path": rel, "size": n}`` the real path of ``{safe_root}/{rel}`` (symlinks
    resolved) must lie inside the real ``safe_root``, be a regular file and have size ``n``.
    ``target_root`` is the root on the collection the prune flow deletes from (it need
    not exist here); ``{target_root}/{rel}`` must stay inside it lexically.

    Paths that are absolute, contain ``..`` or leave either root are refused (raise before
    anything is checked). If any file is unverified, raises ``RuntimeError`` naming the
    files (first 20 and a count) with the reason (missing / size differs / not a regular
    file / outside root). Otherwise returns
    ``{"all_verified": True, "verified": n, "delete": [{"path": target_root/rel}]}``.
    """
    target_root = _abs_root(target_root, "target_root")
    safe_root = _abs_root(safe_root, "safe_root")
    if not files:
        raise RuntimeError("files is empty: nothing to verify")
    if not os.path.isdir(safe_root):
        raise RuntimeError(f"safe_root {safe_root} is not a directory here")

    wanted = _requested(files, safe_root, target_root)

    real_root = os.path.realpath(safe_root).rstrip("/") + "/"
    problems: list[str] = []
    for rel, size in wanted:
        real = os.path.realpath(os.path.join(safe_root, rel))
        if not real.startswith(real_root):
            problems.append(f"{rel}: outside root (resolves to {real})")
            continue
        try:
            st = os.stat(real)
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        except OSError as exc:
            problems.append(f"{rel}: cannot stat ({exc.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel}: not a regular file")
        elif st.st_size != size:
            problems.append(f"{rel}: size differs (safe copy {st.st_size}, expected {size})")
    if problems:
        raise RuntimeError(_summary(problems, len(wanted), f"not verified under {safe_root}"))
    return {
        "all_verified": True,
        "verified": len(wanted),
        "delete": [{"path": target_root.rstrip("/") + "/" + rel} for rel, _ in wanted],
    }


# --- path safety (the same text in cfs.py and hpss.py; a test keeps them identical) -------
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
    return posixpath.normpath(root)


def _requested(files: list[dict[str, object]], *roots: str) -> list[tuple[str, int]]:
    """(rel, size) of each file; raises naming every path that is unsafe or would leave one
    of ``roots`` lexically, and every missing or invalid size (before anything is checked)."""
    wanted: list[tuple[str, int]] = []
    refused: list[str] = []
    for item in files:
        raw = item.get("path") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        rel = _clean_rel(raw)
        if rel is None:
            refused.append(f"{raw!r}: outside root (absolute, '..' or empty path)")
            continue
        for root in roots:
            joined = posixpath.normpath(posixpath.join(root, rel))
            if not joined.startswith(root.rstrip("/") + "/"):
                refused.append(f"{rel}: outside root {root}")
                break
        else:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                refused.append(f"{rel}: no valid size given")
            else:
                wanted.append((rel, size))
    if refused:
        raise RuntimeError(_summary(refused, len(files), "refused (nothing was checked)"))
    return wanted


def _summary(problems: list[str], total: int, what: str) -> str:
    shown = "; ".join(problems[:20])
    more = f"; ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"{len(problems)} of {total} file(s) {what}: {shown}{more}"


# --- end path safety ---
