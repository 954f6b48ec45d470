"""Canary files: where they live, what they hold, and cleaning up after them.

All canaries of a beamline live in `{watch.root}/.dichroism-canary/` (`CANARY_DIR`, never
a scan: `routing.matches` refuses it whatever the ignore rules say), which is
`{source collection root}/{source_root}/.dichroism-canary/` in the compute-dtn collection:

- `<bl>.dat`: the recurring timer's canary, with FIXED content (`FIXED_BYTES`), kept
  present by the lifecycle loop: the timer's body carries its size and MD5 forever;
- `<bl>-<UTC time>-<random>.dat`: `dichroism check`'s, random content, deleted by its run
  at the source, and here afterwards should the run not have done it.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dichroism_control.config import CANARY_DIR

if TYPE_CHECKING:
    from dichroism_control.config import Config

FIXED_BYTES = b"dichroism flight check canary: kept here by the lifecycle; do not remove\n" * 56
FIXED_MD5 = hashlib.md5(FIXED_BYTES, usedforsecurity=False).hexdigest()
FRESH_BYTES = 4096
# `dichroism check` canaries older than this are leftovers of a finished (or dead) check.
LEFTOVER_SECONDS = 3600.0


@dataclass(frozen=True)
class Canary:
    beamline: str
    local_path: Path
    collection_path: str  # the same file in the source (compute-dtn) collection
    size: int
    md5: str


def directory(config: Config, beamline: str) -> Path:
    return Path(config.beamline(beamline).watch.root) / CANARY_DIR


def collection_path(config: Config, beamline: str, name: str) -> str:
    from dichroism_control.routing import source_root_path

    return f"{source_root_path(config, beamline).rstrip('/')}/{CANARY_DIR}/{name}"


def cfs_directory(config: Config, beamline: str) -> str:
    from dichroism_control.routing import cfs_root_path

    return f"{cfs_root_path(config, beamline).rstrip('/')}/{CANARY_DIR}"


def _write(path: Path, data: bytes) -> None:
    """Atomically: a transfer never copies a half-written canary."""
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fixed(config: Config, beamline: str) -> Canary:
    """The recurring timer's canary (not touched on disk: see `keep_fixed`)."""
    name = f"{beamline}.dat"
    return Canary(
        beamline,
        directory(config, beamline) / name,
        collection_path(config, beamline, name),
        len(FIXED_BYTES),
        FIXED_MD5,
    )


def keep_fixed(config: Config, beamline: str) -> tuple[Canary, bool]:
    """Make sure the fixed canary is there with its content; (canary, rewritten?).

    Reading 4 kB per beamline per lifecycle pass is the whole cost; a watch root that is
    not mounted raises OSError (the caller reports it and does not create the root).
    """
    canary = fixed(config, beamline)
    root = Path(config.beamline(beamline).watch.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the watch root is not there (not mounted?)")
    try:
        if canary.local_path.read_bytes() == FIXED_BYTES:
            return canary, False
    except FileNotFoundError:
        pass
    _write(canary.local_path, FIXED_BYTES)
    return canary, True


def fresh(config: Config, beamline: str, *, now: float | None = None) -> Canary:
    """A new canary for `dichroism check`: random bytes, so no stale copy can pass."""
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{beamline}-{stamp}-{secrets.token_hex(4)}.dat"
    data = f"dichroism flight check {beamline} {stamp}\n".encode() + os.urandom(FRESH_BYTES)
    path = directory(config, beamline) / name
    root = Path(config.beamline(beamline).watch.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the watch root is not there (not mounted?)")
    _write(path, data)
    return Canary(
        beamline,
        path,
        collection_path(config, beamline, name),
        len(data),
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
    )


def remove_leftovers(
    config: Config, beamline: str, mine: list[Canary], *, now: float | None = None
) -> list[str]:
    """Delete this check's canaries still here, and other checks' older than
    `LEFTOVER_SECONDS` (a check running now in another process keeps its own). Only names
    of `fresh`'s form are touched; the fixed canary stays. Returns what was removed."""
    now = time.time() if now is None else now
    pattern = re.compile(rf"^{re.escape(beamline)}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{8}}\.dat$")
    own = {c.local_path for c in mine}
    removed: list[str] = []
    folder = directory(config, beamline)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not pattern.match(entry.name):
            continue
        path = Path(entry.path)
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > LEFTOVER_SECONDS
            if path in own or old:
                path.unlink()
                removed.append(str(path))
        except FileNotFoundError:
            continue
    return removed
