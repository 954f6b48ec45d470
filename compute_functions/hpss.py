"""Globus Compute functions for NERSC HPSS: verified archiving and tape-copy verification.

Both functions run at NERSC (a Compute endpoint that has ``hsi`` and ``htar`` on ``PATH``).

**The whole module is the registered unit.** Deploy registers this file's full source text
with the function name as entrypoint (globus-compute-sdk ``register_source_code(source,
function_name)``); the endpoint execs that text in a fresh namespace and calls the named
function, so the private module-level ``_helpers`` below travel with each function. Keep
the module self-contained: standard library only, nothing from this project (``cfs.py``
is registered on its own, so the few path-safety helpers both need are copied there).

Tape layout (docs/ARCHITECTURE.md): single files at ``{hpss_dir}/{rel}``; bundles at
``{hpss_dir}/{proposal}/{archive_name}.tar`` (split: ``{archive_name}_partNN.tar``) whose
members are stored by their path relative to ``cfs_root``; ``proposal`` is the first
path component of ``rel``.

Every ``hsi``/``htar`` call holds one of ``max_sessions`` slots, file locks
(``fcntl.flock``) on ``slot-NN.lock`` files in ``$DICHROISM_HPSS_LOCK_DIR`` (default
``<tempdir>/dichroism-hpss-locks``), so concurrent tasks on one node stay within NERSC's
session limit. Each call gets the time left of the walltime as its timeout and is killed
(with its process group) when that runs out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any


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
    """Archive one group of CFS files to HPSS, verify them on tape, return a manifest.

    Small files are bundled with ``htar`` (cwd = ``cfs_root``, members relative to it,
    ``-Hverify=1``), at most ``options["bundle_max_bytes"]`` of file data per archive
    (more -> ``_partNN`` archives). Files larger than
    ``options["single_file_threshold_bytes"]`` (or than the bundle cap, or without a
    directory component) go alone with ``hsi cput`` to ``{hpss_dir}/{rel}``. Every new
    archive is listed back with ``htar -tvf`` (each member present with its exact size)
    and every single file with ``hsi ls -l`` (equal size) before this returns.

    Idempotent: a file already on tape with the same size, as ``{hpss_dir}/{rel}`` or as a
    member of an existing ``{archive_name}[_partNN].tar`` in its proposal directory, is not
    sent again (counted in ``skipped``, still listed in the manifest). Existing archives
    are never overwritten: new bundles take the next free ``_partNN`` name.

    ``proposal`` is accepted for the contract but the layout uses the first path
    component of each file's ``rel`` (that is where ``hpss_verify`` looks).

    Returns ``{"manifest": [{"path", "cfs_path", "size", "tape_path", "member"}],
    "archives": [{"tape_path", "members", "bytes", "new"}], "sent": n, "skipped": n}``.
    Raises ``RuntimeError`` on any failure (stderr attached), on verification mismatch,
    or with ``walltime exceeded``.
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
    if not files:
        raise RuntimeError("files is empty: nothing to archive")

    # 1. The files on CFS: inside cfs_root, regular, with the expected size.
    real_root = os.path.realpath(cfs_root)
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    problems: list[str] = []
    for item in files:
        raw = item.get("path") if isinstance(item, dict) else None
        rel = _clean_rel(raw)
        if rel is None:
            problems.append(f"{raw!r}: not a safe relative path")
            continue
        if rel in seen:
            continue
        seen.add(rel)
        local = os.path.join(cfs_root, rel)
        real = os.path.realpath(local)
        if not real.startswith(real_root.rstrip("/") + "/"):
            problems.append(f"{rel}: outside cfs_root")
            continue
        try:
            st = os.stat(real)
        except FileNotFoundError:
            problems.append(f"{rel}: missing on CFS")
            continue
        if not os.path.isfile(real):
            problems.append(f"{rel}: not a regular file")
            continue
        if st.st_size != item.get("size"):
            problems.append(
                f"{rel}: size differs (on CFS {st.st_size}, expected {item.get('size')})"
            )
            continue
        group = rel.split("/", 1)[0] if "/" in rel else None
        single = group is None or st.st_size > threshold or st.st_size > bundle_max
        entries.append(
            {
                "rel": rel,
                "cfs_path": cfs_root.rstrip("/") + "/" + rel,
                "size": st.st_size,
                "group": group,
                "single": single,
                "single_path": hpss_dir.rstrip("/") + "/" + rel,
            }
        )
    if problems:
        raise RuntimeError(_summary(problems, len(files), "cannot be archived"))

    # 2. What is already on tape.
    listings: dict[str, dict[str, int] | None] = {}

    def listing(directory: str) -> dict[str, int] | None:
        if directory not in listings:
            listings[directory] = sessions.hsi_list(directory)
        return listings[directory]

    part_re = re.compile(re.escape(archive_name) + r"(?:_part(\d+))?\.tar")
    archives_in: dict[str, dict[str, dict[str, int] | None]] = {}
    for entry in entries:
        listing(posixpath.dirname(entry["single_path"]))
        if entry["group"] is not None:
            gdir = hpss_dir.rstrip("/") + "/" + entry["group"]
            if gdir not in archives_in:
                names = sorted(n for n in (listing(gdir) or {}) if part_re.fullmatch(n))
                archives_in[gdir] = {n: sessions.htar_list(gdir + "/" + n) for n in names}

    todo: list[dict[str, Any]] = []
    for entry in entries:
        entry["tape_path"], entry["member"], entry["sent"] = None, None, False
        on_tape = (listing(posixpath.dirname(entry["single_path"])) or {}).get(
            posixpath.basename(entry["single_path"])
        )
        entry["stale_single"] = on_tape is not None and on_tape != entry["size"]
        if on_tape == entry["size"]:
            entry["tape_path"] = entry["single_path"]
            continue
        if entry["group"] is not None:
            gdir = hpss_dir.rstrip("/") + "/" + entry["group"]
            for name, members in archives_in[gdir].items():
                if members is not None and members.get(entry["rel"]) == entry["size"]:
                    entry["tape_path"], entry["member"] = gdir + "/" + name, entry["rel"]
                    break
        if entry["tape_path"] is None:
            todo.append(entry)

    # 3. Plan: singles, and bundles per proposal directory under the size cap.
    singles = [e for e in todo if e["single"]]
    bundles: list[dict[str, Any]] = []
    by_group: dict[str, list[dict[str, Any]]] = {}
    for e in sorted((e for e in todo if not e["single"]), key=lambda e: e["rel"]):
        by_group.setdefault(e["group"], []).append(e)
    for group, members in by_group.items():
        gdir = hpss_dir.rstrip("/") + "/" + group
        chunks: list[list[dict[str, Any]]] = [[]]
        used = 0
        for e in members:
            if chunks[-1] and used + e["size"] > bundle_max:
                chunks.append([])
                used = 0
            chunks[-1].append(e)
            used += e["size"]
        taken = {n for n in (listing(gdir) or {}) if n.endswith(".tar") or n.endswith(".idx")}
        taken_tars = {n[:-4] if n.endswith(".idx") else n for n in taken}
        names: list[str] = []
        if len(chunks) == 1 and f"{archive_name}.tar" not in taken_tars:
            names = [f"{archive_name}.tar"]
        else:
            numbers = [
                int(m.group(1)) for n in taken_tars if (m := part_re.fullmatch(n)) and m.group(1)
            ]
            nxt = max(numbers, default=0) + 1
            for _ in chunks:
                while f"{archive_name}_part{nxt:02d}.tar" in taken_tars:
                    nxt += 1
                names.append(f"{archive_name}_part{nxt:02d}.tar")
                nxt += 1
        for name, chunk in zip(names, chunks, strict=True):
            bundles.append({"tape_path": gdir + "/" + name, "entries": chunk})

    # 4. Destination directories.
    needed = {posixpath.dirname(e["single_path"]) for e in singles}
    needed |= {posixpath.dirname(b["tape_path"]) for b in bundles}
    missing_dirs = sorted(d for d in needed if listing(d) is None)
    if missing_dirs:
        rc, out, err = sessions.run([_tool("hsi"), "-q", "mkdir", "-p", *missing_dirs])
        if rc != 0:
            raise _failed("hsi mkdir -p " + " ".join(missing_dirs), rc, out, err)

    # 5. Send (bounded by the session slots) and verify each archive by listing it back.
    abort = threading.Event()

    def send_bundle(bundle: dict[str, Any]) -> None:
        if abort.is_set():
            return
        tape_path = bundle["tape_path"]
        fd, list_file = tempfile.mkstemp(prefix="dichroism-htar-", suffix=".list")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.writelines(e["rel"] + "\n" for e in bundle["entries"])
            argv = [_tool("htar"), "-Hverify=1", "-cvf", tape_path, "-L", list_file]
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
        for e in bundle["entries"]:
            got = members.get(e["rel"])
            if got is None:
                bad.append(f"{e['rel']}: missing from archive")
            elif got != e["size"]:
                bad.append(f"{e['rel']}: size differs (archive {got}, CFS {e['size']})")
        if bad:
            raise RuntimeError(
                f"verification failed for {tape_path}: "
                + _summary(bad, len(bundle["entries"]), "not verified")
            )
        for e in bundle["entries"]:
            e["tape_path"], e["member"], e["sent"] = tape_path, e["rel"], True

    def send_single(e: dict[str, Any]) -> None:
        if abort.is_set():
            return
        verb = "put" if e["stale_single"] else "cput"
        argv = [_tool("hsi"), "-q", verb, e["cfs_path"], ":", e["single_path"]]
        rc, out, err = sessions.run(argv)
        if rc != 0:
            raise _failed(f"hsi {verb} {e['cfs_path']} : {e['single_path']}", rc, out, err)

    errors: list[str] = []

    def guarded(func: Any, arg: Any) -> None:
        try:
            func(arg)
        except Exception as exc:
            abort.set()
            errors.append(str(exc))

    tasks = [(send_bundle, b) for b in bundles] + [(send_single, e) for e in singles]
    if tasks:
        with ThreadPoolExecutor(max_workers=min(max_sessions, len(tasks))) as pool:
            for func, arg in tasks:
                pool.submit(guarded, func, arg)
    if errors:
        walltime_hit = any("walltime exceeded" in e for e in errors)
        head = "walltime exceeded; " if walltime_hit else ""
        raise RuntimeError(f"{head}hpss_archive failed: " + " | ".join(errors[:5]))

    bad = []
    for directory in sorted({posixpath.dirname(e["single_path"]) for e in singles}):
        found = sessions.hsi_list(directory) or {}
        for e in singles:
            if posixpath.dirname(e["single_path"]) != directory:
                continue
            got = found.get(posixpath.basename(e["single_path"]))
            if got is None:
                bad.append(f"{e['rel']}: missing at {e['single_path']}")
            elif got != e["size"]:
                bad.append(f"{e['rel']}: size differs (tape {got}, CFS {e['size']})")
            else:
                e["tape_path"], e["member"], e["sent"] = e["single_path"], None, True
    if bad:
        raise RuntimeError("verification failed: " + _summary(bad, len(singles), "not verified"))

    archives: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["member"] is not None:
            a = archives.setdefault(
                e["tape_path"],
                {"tape_path": e["tape_path"], "members": 0, "bytes": 0, "new": e["sent"]},
            )
            a["members"] += 1
            a["bytes"] += e["size"]
    manifest = [
        {
            "path": e["rel"],
            "cfs_path": e["cfs_path"],
            "size": e["size"],
            "tape_path": e["tape_path"],
            "member": e["member"],
        }
        for e in entries
    ]
    sent = sum(1 for e in entries if e["sent"])
    return {
        "manifest": manifest,
        "archives": sorted(archives.values(), key=lambda a: a["tape_path"]),
        "sent": sent,
        "skipped": len(entries) - sent,
    }


def hpss_verify(
    *,
    target_root: str,
    safe_root: str,
    files: list[dict[str, object]],
    max_sessions: int = 2,
    walltime_seconds: int = 3600,
) -> dict[str, object]:
    """Confirm every file has a tape copy of the same size before the prune flow deletes it.

    A file ``rel`` is verified when ``{safe_root}/{rel}`` is listed by ``hsi ls -l`` with
    the expected size, or when it is a member ``rel`` with that size of a ``.tar`` archive
    (``htar -tvf``) in ``{safe_root}/{first path component of rel}/``. ``safe_root`` is
    the HPSS directory ``{hpss_root}/{beamline}/raw``.

    Paths that are absolute, contain ``..`` or leave either root are refused (raise before
    any HPSS session). If any file is unverified, raises ``RuntimeError`` naming the
    files (first 20 and a count) with the reason (missing / size differs). Otherwise
    returns ``{"all_verified": True, "verified": n, "delete": [{"path": target_root/rel}]}``.
    ``max_sessions`` and ``walltime_seconds`` bound the HPSS sessions as for hpss_archive.
    """
    max_sessions = int(max_sessions)
    walltime = int(walltime_seconds)
    if max_sessions < 1 or walltime < 1:
        raise RuntimeError("max_sessions and walltime_seconds must be >= 1")
    sessions = _Sessions(max_sessions, walltime)

    target_root = _abs_root(target_root, "target_root")
    safe_root = _abs_root(safe_root, "safe_root")
    if not files:
        raise RuntimeError("files is empty: nothing to verify")

    wanted = _requested(files, safe_root, target_root)

    listings: dict[str, dict[str, int] | None] = {}
    archives: dict[str, dict[str, dict[str, int] | None]] = {}
    problems: list[str] = []
    verified = 0
    for rel, size in wanted:
        single = safe_root.rstrip("/") + "/" + rel
        parent = posixpath.dirname(single)
        if parent not in listings:
            listings[parent] = sessions.hsi_list(parent)
        got = (listings[parent] or {}).get(posixpath.basename(single))
        seen_sizes = [] if got is None else [got]
        if got == size:
            verified += 1
            continue
        found = False
        if "/" in rel:
            gdir = safe_root.rstrip("/") + "/" + rel.split("/", 1)[0]
            if gdir not in listings:
                listings[gdir] = sessions.hsi_list(gdir)
            if gdir not in archives:
                archives[gdir] = {}
            for name in sorted(n for n in (listings[gdir] or {}) if n.endswith(".tar")):
                if name not in archives[gdir]:
                    archives[gdir][name] = sessions.htar_list(gdir + "/" + name)
                members = archives[gdir][name]
                if members is None or rel not in members:
                    continue
                if members[rel] == size:
                    found = True
                    break
                seen_sizes.append(members[rel])
        if found:
            verified += 1
        elif seen_sizes:
            problems.append(f"{rel}: size differs (tape {seen_sizes[0]}, expected {size})")
        else:
            problems.append(f"{rel}: missing on tape")
    if problems:
        raise RuntimeError(
            _summary(problems, len(wanted), f"not verified on tape under {safe_root}")
        )
    return {
        "all_verified": True,
        "verified": verified,
        "delete": [{"path": target_root.rstrip("/") + "/" + rel} for rel, _ in wanted],
    }


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
        found: dict[str, int] = {}
        for line in (err + "\n" + out).splitlines():
            m = _LS_LINE.match(line.strip())
            if m and m.group(1).startswith("-"):
                found[posixpath.basename(m.group(3))] = int(m.group(2))
        return found

    def htar_list(self, tape_path: str) -> dict[str, int] | None:
        """Members of an htar archive (path -> size); None if it has no index/archive."""
        rc, out, err = self.run([_tool("htar"), "-tvf", tape_path])
        if rc != 0:
            if _missing(out, err):
                return None
            raise _failed(f"htar -tvf {tape_path}", rc, out, err)
        members: dict[str, int] = {}
        for line in (out + "\n" + err).splitlines():
            m = _HTAR_LINE.match(line.strip())
            if m and m.group(1).startswith("-"):
                members[m.group(3)] = int(m.group(2))
        return members


_LS_LINE = re.compile(
    r"^([-dlbcpsD][-rwxsStTlL]{9})\S*\s+\d+\s+\S+\s+\S+\s+(?:\S+\s+)?(\d+)\s+"
    r"[A-Z][a-z]{2}\s+\d{1,2}\s+(?:\d{1,2}:\d{2}|\d{4})\s+(.+?)\s*$"
)
_HTAR_LINE = re.compile(
    r"^HTAR:\s+([-dlbcps][-rwxsStT]{9})\S*\s+\S+\s+(\d+)\s+"
    r"\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}(?::\d{2})?\s+(.+?)\s*$"
)


def _option(options: dict[str, object], name: str) -> int:
    value = options.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
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
