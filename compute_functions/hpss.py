"""Globus Compute functions for NERSC HPSS: verified archiving and tape-copy verification.

Both functions run at NERSC (a Compute endpoint that has ``hsi`` and ``htar`` on ``PATH``).

**The whole module is the registered unit.** Deploy registers this file's full source text
with the function name as entrypoint (globus-compute-sdk ``register_source_code(source,
function_name)``); the endpoint execs that text in a fresh namespace and calls the named
function, so the private module-level ``_helpers`` below travel with each function. Keep
the module self-contained: standard library only, nothing from this project (``cfs.py``
is registered on its own, so the path-safety block both need is copied there).

Tape layout (docs/ARCHITECTURE.md), under ``hpss_dir`` = ``{hpss_root}/{beamline}/raw``:

* single files at ``{hpss_dir}/{rel}`` for version 1 and ``{hpss_dir}/{rel}@v{n}`` for
  version n >= 2 (tape keeps every version: tape is history);
* bundles at ``{hpss_dir}/{proposal}/{archive_name}.tar`` (split or added later:
  ``{archive_name}_partNN.tar``), members stored by their path relative to ``cfs_root``;
  ``proposal`` is the first path component of ``rel``. Beside each bundle this module
  writes ``{archive}.md5`` (``md5sum`` format: ``<md5>  <member>``), the checksums of the
  members as hashed on CFS just before ``htar`` read them.

**Tape verification compares sizes only**: ``hsi ls -l`` and ``htar -tvf`` report sizes,
not content. Content is proven on CFS (MD5 against the checksum recorded at detection)
before archiving and again, for the prune, on the CFS file about to be deleted.

Every ``hsi``/``htar`` call holds one of ``max_sessions`` slots, file locks
(``fcntl.flock``) on ``slot-NN.lock`` files in ``$DICHROISM_HPSS_LOCK_DIR`` (default
``<tempdir>/dichroism-hpss-locks``), so concurrent tasks on one node stay within NERSC's
session limit. Each call gets the time left of the walltime as its timeout and is killed
(with its process group) when that runs out.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import os
import posixpath
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeGuard


def hpss_archive(
    *,
    beamline: str,
    cfs_root: str,
    files: list[dict[str, object]],
    hpss_dir: str,
    archive_name: str,
    options: dict[str, object],
    proposal: str | None = None,
) -> dict[str, object]:
    """Archive one group of CFS files to HPSS and verify them on tape.

    Each file item is ``{"path": rel, "size": n, "checksum": md5 hex, "version": v, ...}``
    (extra keys ignored). First every CFS file is proven to be that version: real path
    inside the real ``cfs_root``, not a symlink itself, a regular file opened without
    following symlinks, size ``n`` and MD5 ``checksum``. A file that fails (typically
    replaced by a newer version meanwhile) is not archived and is reported in
    ``changed``; the rest of the group goes ahead.

    Small files are bundled with ``htar`` (cwd = ``cfs_root``, members by ``rel``,
    ``-Hverify=1``), at most ``options["bundle_max_bytes"]`` of file data per archive.
    Files larger than ``options["single_file_threshold_bytes"]`` (or than the bundle cap,
    or without a directory component) go alone with ``hsi cput`` to their versioned path
    (module docstring). Existing archives are never overwritten (new ones take the next
    free ``_partNN`` name) and neither are single files: a different-size file already at
    a single's path is renamed to ``<path>.stale-<UTC time>`` first. Every new archive
    is listed back with ``htar -tvf`` and every single with ``hsi ls -l``, each with
    exactly the CFS size, before this returns. A file whose CFS copy changed while it
    was being archived is reported in ``changed`` (``modified_during_archive``), left out
    of the archive's ``.md5`` and, for a single, its tape copy is renamed aside.

    Idempotent: a single already at its versioned path with the same size, or a member
    with the same size in an existing ``{archive_name}[_partNN].tar`` of its proposal
    directory whose ``.md5`` lists the same checksum, is not sent again (``skipped``).

    ``beamline`` and ``proposal`` are accepted for the contract; the layout uses the first
    path component of each ``rel`` (that is where ``hpss_verify`` looks).

    Returns (compact, indices into ``files``) ``{"sent": n, "skipped": n, "archives":
    [tape paths of the htar archives holding any of these files], "where": [k | -1 | None
    per file: k = index into archives, -1 = single at its versioned path, None = not
    archived], "changed": [{"i": i, "reason": code}]}`` with reason ``missing``,
    ``outside_root``, ``not_regular``, ``unreadable``, ``size_differs``,
    ``checksum_differs`` or ``modified_during_archive``. Raises ``RuntimeError`` on
    malformed input, any HPSS failure (stderr attached), a verification mismatch, or
    with ``walltime exceeded``.
    """
    bundle_max = _option(options, "bundle_max_bytes")
    threshold = _option(options, "single_file_threshold_bytes")
    max_sessions = _option(options, "max_sessions")
    walltime = _option(options, "walltime_seconds")
    sessions = _Sessions(max_sessions, walltime)

    del beamline, proposal  # part of the contract; the layout does not need them
    if not isinstance(archive_name, str) or not re.fullmatch(
        r"[A-Za-z0-9._-]{1,200}", archive_name
    ):
        raise RuntimeError(f"archive_name must match [A-Za-z0-9._-]{{1,200}}: {archive_name!r}")
    cfs_root = _abs_root(cfs_root, "cfs_root")
    hpss_dir = _abs_root(hpss_dir, "hpss_dir")
    items = _items(files, (cfs_root, hpss_dir), tape=True)
    if not os.path.isdir(cfs_root):
        raise RuntimeError(f"cfs_root {cfs_root} is not a directory here")
    real_root = os.path.realpath(cfs_root)

    # 1. Each CFS file must be the version we were asked to archive.
    def check(item: dict[str, Any]) -> tuple[str | None, str, tuple[int, ...] | None]:
        try:
            if stat.S_ISLNK(os.lstat(posixpath.join(cfs_root, item["rel"])).st_mode):
                # htar stores a symlink member as a link, not the data it points to
                return "not_regular", "is a symlink", None
        except FileNotFoundError:
            return "missing", "no such file", None
        except OSError as exc:
            return "unreadable", f"cannot stat: {exc.strerror}", None
        return _local_copy(cfs_root, real_root, item["rel"], item["size"], item["checksum"])

    where: list[int | str | None] = [None] * len(items)
    changed: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for i, (item, (reason, _, ident)) in enumerate(zip(items, _each(check, items), strict=True)):
        if reason is not None:
            changed.append({"i": i, "reason": reason})
            continue
        rel, size = item["rel"], item["size"]
        group = rel.split("/", 1)[0] if "/" in rel else None
        entries.append(
            {
                "i": i,
                "rel": rel,
                "size": size,
                "checksum": item["checksum"],
                "ident": ident,
                "cfs_path": cfs_root.rstrip("/") + "/" + rel,
                "group": group,
                "single": group is None or size > threshold or size > bundle_max,
                "single_path": _single_path(hpss_dir, rel, item["version"]),
                "sent": False,
            }
        )

    # 2. What is already on tape.
    listings: dict[str, dict[str, int] | None] = {}

    def listing(directory: str) -> dict[str, int] | None:
        if directory not in listings:
            listings[directory] = sessions.hsi_list(directory)
        return listings[directory]

    part_re = re.compile(re.escape(archive_name) + r"(?:_part(\d+))?\.tar")
    # existing archives of this group name: tape path -> (members, checksums from .md5)
    existing: dict[str, dict[str, tuple[dict[str, int] | None, dict[str, str]]]] = {}
    for e in entries:
        listing(posixpath.dirname(e["single_path"]))
        if e["group"] is not None:
            gdir = hpss_dir.rstrip("/") + "/" + e["group"]
            if gdir not in existing:
                names = sorted(n for n in (listing(gdir) or {}) if part_re.fullmatch(n))
                existing[gdir] = {
                    gdir + "/" + n: (
                        sessions.htar_list(gdir + "/" + n),
                        sessions.read_sums(gdir + "/" + n + ".md5"),
                    )
                    for n in names
                }

    todo: list[dict[str, Any]] = []
    for e in entries:
        parent, name = posixpath.split(e["single_path"])
        on_tape = (listing(parent) or {}).get(name)
        e["stale_single"] = on_tape is not None and on_tape != e["size"]
        if on_tape == e["size"]:
            where[e["i"]] = -1
            continue
        if e["group"] is not None:
            gdir = hpss_dir.rstrip("/") + "/" + e["group"]
            for tape_path, (members, sums) in existing[gdir].items():
                # a same-size member may hold another version: only its .md5 proves which
                member_size = (members or {}).get(e["rel"])
                if member_size == e["size"] and sums.get(e["rel"]) == e["checksum"]:
                    where[e["i"]] = tape_path
                    break
        if where[e["i"]] is None:
            todo.append(e)

    # 3. Plan: singles (one send per tape path), bundles per proposal directory under the cap.
    singles: dict[str, list[dict[str, Any]]] = {}
    for e in todo:
        if e["single"]:
            singles.setdefault(e["single_path"], []).append(e)
    bundles: list[dict[str, Any]] = []
    by_group: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for e in sorted((e for e in todo if not e["single"]), key=lambda e: e["rel"]):
        # one member per rel: items of the same rel passed the same CFS content check
        by_group.setdefault(e["group"], {}).setdefault(e["rel"], []).append(e)
    for group, members_by_rel in by_group.items():
        gdir = hpss_dir.rstrip("/") + "/" + group
        chunks: list[list[list[dict[str, Any]]]] = [[]]
        used = 0
        for same_rel in members_by_rel.values():
            size = same_rel[0]["size"]
            if chunks[-1] and used + size > bundle_max:
                chunks.append([])
                used = 0
            chunks[-1].append(same_rel)
            used += size
        taken = {n for n in (listing(gdir) or {}) if n.endswith((".tar", ".idx", ".md5"))}
        taken_tars = {n[:-4] if n.endswith((".idx", ".md5")) else n for n in taken}
        new_names: list[str] = []
        if len(chunks) == 1 and f"{archive_name}.tar" not in taken_tars:
            new_names = [f"{archive_name}.tar"]
        else:
            numbers = [
                int(m.group(1)) for n in taken_tars if (m := part_re.fullmatch(n)) and m.group(1)
            ]
            nxt = max(numbers, default=0) + 1
            for _ in chunks:
                while f"{archive_name}_part{nxt:02d}.tar" in taken_tars:
                    nxt += 1
                new_names.append(f"{archive_name}_part{nxt:02d}.tar")
                nxt += 1
        for name, chunk in zip(new_names, chunks, strict=True):
            bundles.append({"tape_path": gdir + "/" + name, "members": chunk})

    # 4. Destination directories.
    needed = {posixpath.dirname(p) for p in singles}
    needed |= {posixpath.dirname(b["tape_path"]) for b in bundles}
    missing_dirs = sorted(d for d in needed if listing(d) is None)
    if missing_dirs:
        rc, out, err = sessions.run([_tool("hsi"), "-q", "mkdir", "-p", *missing_dirs])
        if rc != 0:
            raise _failed(f"hsi mkdir -p {' '.join(missing_dirs)}", rc, out, err)

    # 5. Send, at most max_sessions at a time; the first failure stops the rest.
    abort = threading.Event()

    def send_bundle(bundle: dict[str, Any]) -> None:
        if abort.is_set():
            return
        tape_path = bundle["tape_path"]
        rels = [same_rel[0]["rel"] for same_rel in bundle["members"]]
        fd, list_file = tempfile.mkstemp(prefix="dichroism-htar-", suffix=".list")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("".join(r + "\n" for r in rels))
            argv = [_tool("htar"), "-cvf", tape_path, "-Hverify=1", "-L", list_file]
            rc, out, err = sessions.run(argv, cwd=cfs_root)
        finally:
            os.unlink(list_file)
        if rc != 0:
            raise _failed(f"htar -cvf {tape_path}", rc, out, err)
        if "HTAR SUCCESSFUL" not in out + err:
            raise RuntimeError(f"htar -cvf {tape_path} did not report success: {_tail(out + err)}")
        members = sessions.htar_list(tape_path)
        if members is None:
            raise RuntimeError(f"verification failed: archive {tape_path} cannot be listed")
        bad = []
        for same_rel in bundle["members"]:
            rel, size = same_rel[0]["rel"], same_rel[0]["size"]
            got = members.get(rel)
            if got is None:
                bad.append(f"{rel}: missing from archive")
            elif got != size:
                bad.append(f"{rel}: size differs (archive {got}, CFS {size})")
        if bad:
            raise RuntimeError(
                f"verification failed for {tape_path}: "
                + _summary(bad, len(bundle["members"]), "not verified")
            )
        for same_rel in bundle["members"]:
            for e in same_rel:
                e["sent"], e["tape_path"] = True, tape_path

    def send_single(tape_path: str) -> None:
        if abort.is_set():
            return
        e = singles[tape_path][0]
        if e["stale_single"]:
            sessions.set_aside(tape_path)  # never overwrite what tape already holds
        argv = [_tool("hsi"), "-q", "cput", e["cfs_path"], ":", tape_path]
        rc, out, err = sessions.run(argv)
        if rc != 0:
            raise _failed(f"hsi cput {e['cfs_path']} : {tape_path}", rc, out, err)

    errors: list[str] = []

    def guarded(func: Callable[[Any], None], arg: Any) -> None:
        try:
            func(arg)
        except Exception as exc:
            abort.set()
            errors.append(str(exc))

    tasks: list[tuple[Callable[[Any], None], Any]] = [(send_bundle, b) for b in bundles]
    tasks += [(send_single, p) for p in singles]
    if tasks:
        with ThreadPoolExecutor(max_workers=min(max_sessions, len(tasks))) as pool:
            for func, arg in tasks:
                pool.submit(guarded, func, arg)
    if errors:
        walltime_hit = any("walltime exceeded" in e for e in errors)
        head = "walltime exceeded; " if walltime_hit else ""
        raise RuntimeError(f"{head}hpss_archive failed: " + " | ".join(errors[:5]))

    bad = []
    for directory in sorted({posixpath.dirname(p) for p in singles}):
        found = sessions.hsi_list(directory) or {}
        for tape_path, same_path in singles.items():
            if posixpath.dirname(tape_path) != directory:
                continue
            got = found.get(posixpath.basename(tape_path))
            size = same_path[0]["size"]
            if got is None:
                bad.append(f"{same_path[0]['rel']}: missing at {tape_path}")
            elif got != size:
                bad.append(f"{same_path[0]['rel']}: size differs (tape {got}, CFS {size})")
            else:
                for e in same_path:
                    e["sent"], e["tape_path"] = True, tape_path
    if bad:
        raise RuntimeError("verification failed: " + _summary(bad, len(singles), "not verified"))

    # 6. A file rewritten while it was being sent may be on tape with other bytes than the
    #    ones hashed: it is not archived (and a single's copy is moved out of its path).
    for e in (e for e in entries if e["sent"]):
        try:
            now: tuple[int, ...] | None = _identity(os.stat(e["cfs_path"]))
        except OSError:
            now = None
        e["modified"] = now != e["ident"]
    for tape_path, same_path in singles.items():
        if any(e["modified"] for e in same_path):
            sessions.set_aside(tape_path)
    for bundle in bundles:
        lines = [
            f"{same_rel[0]['checksum']}  {same_rel[0]['rel']}\n"
            for same_rel in bundle["members"]
            if not any(e["modified"] for e in same_rel)
        ]
        sessions.write_sums(bundle["tape_path"] + ".md5", "".join(lines))

    archives = sorted(
        {str(w) for w in where if isinstance(w, str)}
        | {e["tape_path"] for e in entries if e["sent"] and not e["single"]}
    )
    index = {path: k for k, path in enumerate(archives)}
    sent = 0
    for e in entries:
        if e["sent"] and e["modified"]:
            changed.append({"i": e["i"], "reason": "modified_during_archive"})
        elif e["sent"]:
            sent += 1
            where[e["i"]] = -1 if e["tape_path"] == e["single_path"] else e["tape_path"]
    compact = [index[w] if isinstance(w, str) else w for w in where]
    return {
        "sent": sent,
        "skipped": sum(1 for e in entries if not e["sent"] and where[e["i"]] is not None),
        "archives": archives,
        "where": compact,
        "changed": sorted(changed, key=lambda c: int(c["i"])),
    }


def hpss_verify(
    *,
    target_root: str,
    safe_root: str,
    files: list[dict[str, object]],
    archives: list[str],
    max_sessions: int = 2,
    walltime_seconds: int = 3600,
) -> dict[str, object]:
    """Decide, file by file, whether the CFS copy may be deleted because tape holds it.

    ``target_root`` is the CFS root (visible here), ``safe_root`` the HPSS directory
    ``{hpss_root}/{beamline}/raw``. Each file item is ``{"path": rel, "size": n,
    "checksum": md5 hex, "version": v, "archive": k, ...}`` (extra keys ignored) where
    ``k`` indexes ``archives`` (absolute HPSS paths of htar archives, all inside
    ``safe_root``) or is -1 for a single file.

    File ``i`` is **safe** only when both hold at call time:

    (a) its tape copy is listed with exactly ``n`` bytes: for a single, ``{safe_root}/
        {rel}`` (version 1) or ``{safe_root}/{rel}@v{v}`` (version >= 2) in ``hsi ls -l``
        of its directory; for a member, ``rel`` in ``htar -tvf archives[k]``. **Tape
        verification compares sizes only**: HPSS listings carry no checksum. The content
        was proven on CFS (MD5) before archiving, and the version's own path or archive
        keeps one version's copy from vouching for another.
    (b) the CFS file about to be deleted is that version: real path of
        ``{target_root}/{rel}`` inside the real ``target_root``, a regular file opened
        without following symlinks, exactly ``n`` bytes, MD5 ``checksum``. A CFS file
        since replaced by a newer version is never deleted on the strength of the old
        version's tape copy.

    Otherwise the file is kept, with a reason: ``not_on_tape``, ``tape_size_differs``,
    ``target_missing``, ``target_changed`` (size or MD5 differ), ``outside_root``,
    ``not_regular`` or ``unreadable``.

    Raises ``RuntimeError`` and checks nothing when the batch itself is wrong (roots not
    absolute, containing ``..``, equal or overlapping; ``files`` empty; a malformed item,
    named; an archive path outside ``safe_root``), and fails the whole batch when HPSS
    cannot be listed (any ``hsi``/``htar`` error other than "no such file", or the
    walltime). ``max_sessions`` and ``walltime_seconds`` bound the HPSS sessions as for
    ``hpss_archive``.

    Returns ``{"algorithm": "md5", "checked": n, "safe": [i, ...], "kept": [{"i": i,
    "reason": code, "detail": str}]}`` with indices into ``files``.
    """
    if not (_is_int(max_sessions) and max_sessions >= 1):
        raise RuntimeError(f"max_sessions must be an integer >= 1 (got {max_sessions!r})")
    if not (_is_int(walltime_seconds) and walltime_seconds >= 1):
        raise RuntimeError(f"walltime_seconds must be an integer >= 1 (got {walltime_seconds!r})")
    target_root, safe_root = _roots_apart(target_root, safe_root)
    tape_archives = _archive_paths(archives, safe_root)
    items = _items(files, (target_root, safe_root), archives=len(tape_archives), tape=True)
    if not os.path.isdir(target_root):
        raise RuntimeError(f"target_root {target_root} is not a directory here")
    sessions = _Sessions(max_sessions, walltime_seconds)

    # (a) tape: one listing per directory of singles and per archive, all before any verdict
    dir_listing: dict[str, dict[str, int] | None] = {}
    archive_listing: dict[int, dict[str, int] | None] = {}
    for item in items:
        if item["archive"] == -1:
            parent = posixpath.dirname(_single_path(safe_root, item["rel"], item["version"]))
            if parent not in dir_listing:
                dir_listing[parent] = sessions.hsi_list(parent)
        elif item["archive"] not in archive_listing:
            archive_listing[item["archive"]] = sessions.htar_list(tape_archives[item["archive"]])

    verdicts: list[tuple[str, str] | None] = []
    for item in items:
        if item["archive"] == -1:
            where = _single_path(safe_root, item["rel"], item["version"])
            parent, name = posixpath.split(where)
            got = (dir_listing[parent] or {}).get(name)
        else:
            where = f"{tape_archives[item['archive']]}:{item['rel']}"
            members = archive_listing[item["archive"]]
            got = None if members is None else members.get(item["rel"])
        if got is None:
            verdicts.append(("not_on_tape", f"nothing at {where}"[:120]))
        elif got == _UNUSABLE:
            verdicts.append(("not_on_tape", "soft-deleted or listed twice in the archive"))
        elif got != item["size"]:
            verdicts.append(("tape_size_differs", f"tape {got} bytes, expected {item['size']}"))
        else:
            verdicts.append(None)

    # (b) the CFS file to be deleted, hashed only where the tape copy is there
    real_root = os.path.realpath(target_root)
    target_reason = {"missing": "target_missing", "size_differs": "target_changed"}
    target_reason["checksum_differs"] = "target_changed"

    def check(i: int) -> tuple[str | None, str, tuple[int, ...] | None]:
        item = items[i]
        return _local_copy(target_root, real_root, item["rel"], item["size"], item["checksum"])

    pending = [i for i, v in enumerate(verdicts) if v is None]
    for i, (reason, detail, _) in zip(pending, _each(check, pending), strict=True):
        if reason is not None:
            verdicts[i] = (target_reason.get(reason, reason), detail)

    safe = [i for i, v in enumerate(verdicts) if v is None]
    kept: list[dict[str, object]] = [
        {"i": i, "reason": v[0], "detail": v[1][:120]} for i, v in enumerate(verdicts) if v
    ]
    return {"algorithm": "md5", "checked": len(items), "safe": safe, "kept": kept}


def _single_path(hpss_dir: str, rel: str, version: int) -> str:
    """Tape path of a single file: version 1 at ``rel``, version n >= 2 at ``rel@vn``."""
    path = hpss_dir.rstrip("/") + "/" + rel
    return path if version == 1 else f"{path}@v{version}"


def _archive_paths(archives: object, safe_root: str) -> list[str]:
    """The archive paths, normalised; raises naming any that is not inside ``safe_root``."""
    if not isinstance(archives, list):
        raise RuntimeError(f"archives must be a list of HPSS paths (got {type(archives).__name__})")
    paths: list[str] = []
    refused: list[str] = []
    for k, raw in enumerate(archives):
        ok = isinstance(raw, str) and raw.startswith("/") and ".." not in raw.split("/")
        path = posixpath.normpath(raw) if ok and isinstance(raw, str) else ""
        if not ok or "\x00" in path or "\n" in path or not _inside(path, safe_root):
            refused.append(f"#{k} {str(raw)[:200]!r}")
        paths.append(path)
    if refused:
        raise RuntimeError(
            f"{len(refused)} archive path(s) not inside safe_root {safe_root} (nothing was"
            f" checked): {', '.join(refused[:20])}"
            + (f" ... and {len(refused) - 20} more" if len(refused) > 20 else "")
        )
    return paths


# --- HPSS sessions ---------------------------------------------------------------------
class _Sessions:
    """The ``hsi``/``htar`` sessions of one call: at most ``max_sessions`` at a time on
    this node (slot locks) and none past the call's walltime."""

    def __init__(self, max_sessions: int, walltime: int) -> None:
        self.max_sessions = max_sessions
        self.walltime = walltime
        self.deadline = time.monotonic() + walltime

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        lock_dir = os.environ.get("DICHROISM_HPSS_LOCK_DIR") or os.path.join(
            tempfile.gettempdir(), "dichroism-hpss-locks"
        )
        os.makedirs(lock_dir, exist_ok=True)
        held: int | None = None
        while held is None:
            for i in range(self.max_sessions):
                fd = os.open(os.path.join(lock_dir, f"slot-{i:02d}.lock"), os.O_RDWR | os.O_CREAT)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                held = fd
                break
            if held is None:
                if time.monotonic() >= self.deadline:
                    raise RuntimeError(
                        f"walltime exceeded ({self.walltime} s) while waiting for one of "
                        f"{self.max_sessions} HPSS session slots in {lock_dir}"
                    )
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
            os.close(held)

    def run(self, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        """Run one hsi/htar session under a slot; kill it when the walltime runs out."""
        text = " ".join(shlex.quote(a) for a in argv)
        with self._slot():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"walltime exceeded ({self.walltime} s) before running: {text}")
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                start_new_session=True,
            )
            try:
                out, err = proc.communicate(timeout=remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                raise RuntimeError(
                    f"walltime exceeded ({self.walltime} s): killed {text}; stderr: {_tail(err)}"
                ) from None
        return proc.returncode, out, err

    def hsi_list(self, directory: str) -> dict[str, int] | None:
        """Regular files directly in an HPSS directory (name -> size); None if absent."""
        rc, out, err = self.run([_tool("hsi"), "-q", "ls", "-l", directory])
        if rc != 0:
            if _missing(out, err):
                return None
            raise _failed(f"hsi ls -l {directory}", rc, out, err)
        # hsi writes listings to stderr; read both streams in case a site build differs
        return _parse_hsi_ls(err + "\n" + out)

    def htar_list(self, tape_path: str) -> dict[str, int] | None:
        """Members of an htar archive (path -> size); None if it has no index/archive."""
        rc, out, err = self.run([_tool("htar"), "-tvf", tape_path])
        if rc != 0:
            if _missing(out, err):
                return None
            raise _failed(f"htar -tvf {tape_path}", rc, out, err)
        return _parse_htar_tvf(out + "\n" + err)

    def set_aside(self, tape_path: str) -> None:
        """Rename a tape file out of the way (``<path>.stale-<UTC time>``), never delete it."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = f"{tape_path}.stale-{stamp}"
        rc, out, err = self.run([_tool("hsi"), "-q", "mv", tape_path, target])
        if rc != 0:
            raise _failed(f"hsi mv {tape_path} {target}", rc, out, err)

    def read_sums(self, tape_path: str) -> dict[str, str]:
        """``member -> md5`` from an archive's ``.md5`` file; empty if there is none."""
        with tempfile.TemporaryDirectory(prefix="dichroism-sums-") as tmp:
            local = os.path.join(tmp, "sums.md5")
            rc, out, err = self.run([_tool("hsi"), "-q", "get", local, ":", tape_path])
            if rc != 0:
                if _missing(out, err):
                    return {}
                raise _failed(f"hsi get {tape_path}", rc, out, err)
            with open(local, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        sums: dict[str, str] = {}
        for line in text.splitlines():
            m = re.fullmatch(r"([0-9a-f]{32})  (.+)", line)
            if m:
                sums[m.group(2)] = m.group(1)
        return sums

    def write_sums(self, tape_path: str, text: str) -> None:
        with tempfile.TemporaryDirectory(prefix="dichroism-sums-") as tmp:
            local = os.path.join(tmp, "sums.md5")
            with open(local, "w", encoding="utf-8") as fh:
                fh.write(text)
            rc, out, err = self.run([_tool("hsi"), "-q", "put", local, ":", tape_path])
        if rc != 0:
            raise _failed(f"hsi put {tape_path}", rc, out, err)


# Listing formats (recorded samples and their sources: tests/compute/fixtures/README.md).
# `hsi ls -l`: POSIX long format, an optional extra column before the size on some sites,
# "Mon DD HH:MM" for recent files and "Mon DD  YYYY" for older ones.
_LS_LINE = re.compile(
    r"^([-dlbcpsD])[-rwxsStTlL]{9}\S*\s+\d+\s+\S+\s+\S+\s+(?:\S+\s+)?(\d+)\s+"
    r"[A-Z][a-z]{2}\s+\d{1,2}\s+(?:\d{1,2}:\d{2}|\d{4})\s+(.+?)\s*$"
)
# `htar -tvf`: "HTAR: <mode> [D] <owner>/<group> <size> YYYY-MM-DD HH:MM  <member>"; the D
# marks a soft-deleted member, which htar will not extract.
_HTAR_LINE = re.compile(
    r"^HTAR:\s+([-dlbcpsh])[-rwxsStT]{9}\S*\s+(?:(D)\s+)?\S+/\S+\s+(\d+)\s+"
    r"\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}(?::\d{2})?\s+(.+?)\s*$"
)
_UNUSABLE = -1  # a listed name whose copy cannot be relied on (never equals a size)


def _parse_hsi_ls(text: str) -> dict[str, int]:
    """Regular files of an ``hsi ls -l`` listing: basename -> size. Directories,
    symlinks and everything that is not a long-format line are ignored."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        m = _LS_LINE.match(line.strip())
        if m and m.group(1) == "-":
            name = posixpath.basename(m.group(3))
            size = int(m.group(2))
            found[name] = size if found.get(name, size) == size else _UNUSABLE
    return found


def _parse_htar_tvf(text: str) -> dict[str, int]:
    """Regular-file members of an ``htar -tvf`` listing: member path -> size. A member
    soft-deleted or listed twice with different sizes maps to ``_UNUSABLE``."""
    members: dict[str, int] = {}
    for line in text.splitlines():
        m = _HTAR_LINE.match(line.strip())
        if not m or m.group(1) != "-":
            continue
        name, size = m.group(4), int(m.group(3))
        if m.group(2) or members.get(name, size) != size:
            size = _UNUSABLE
        members[name] = size
    return members


def _option(options: dict[str, object], name: str) -> int:
    value = options.get(name) if isinstance(options, dict) else None
    if not _is_int(value) or value < 1:
        raise RuntimeError(f"options.{name} must be an integer >= 1 (got {value!r})")
    return value


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"'{name}' was not found on PATH (HPSS client tools missing)")
    return found


def _failed(text: str, rc: int, out: str, err: str) -> RuntimeError:
    return RuntimeError(f"{text} failed with exit code {rc}; stderr: {_tail(err or out)}")


def _missing(out: str, err: str) -> bool:
    both = out + err
    return "HPSS_ENOENT" in both or "No such file" in both


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
