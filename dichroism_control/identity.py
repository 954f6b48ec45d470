"""Content identity of a finished scan: what exactly was seen, taken once at detection.

A scan is a version: (path, content). When the watcher declares a file finished it opens it
once (`O_NOFOLLOW`: a symlink swapped in at the last moment is refused, never followed),
checks that it is a regular file, streams it through MD5 and checks that size, mtime and
inode did not move while it was read. The checksum then travels with the scan: the Transfer
item's `external_checksum` (so Globus verifies the CFS copy against the bytes seen here),
the SciCat datablock, the archive manifest and every prune check.

MD5 because it is Globus Transfer's default `checksum_algorithm` (docs.globus.org/api/
transfer/task_submit, transfer_item) and one of the hashes HPSS `hsi` keeps in its metadata:
one algorithm from the instrument to tape, computed by OpenSSL at disk speed. It is an
integrity check against accidents (truncation, a rewrite, a swapped file), not against an
adversary who can write to the beamline's disk.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

ALGORITHM = "MD5"  # the name Transfer's checksum_algorithm takes
CHUNK = 8 * 2**20  # large reads: hashlib releases the GIL for buffers over 2 KiB


class IdentityError(Exception):
    """The file cannot be identified now (gone, not a regular file, unreadable)."""


class StillChanging(IdentityError):
    """Size, mtime or inode moved while the file was read: it is not finished after all."""


@dataclass(frozen=True)
class Identity:
    size: int
    mtime_ns: int
    inode: int
    checksum: str  # lowercase hex

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    def same_file(self, size: int, mtime_ns: int, inode: int) -> bool:
        """The cheap test: the same stat means the same content was already hashed."""
        return (self.size, self.mtime_ns, self.inode) == (size, mtime_ns, inode)


def transfer_time(mtime_ns: int) -> str:
    """A modification time as Globus Transfer reports `last_modified` (UTC, whole seconds,
    `YYYY-MM-DD HH:MM:SS+00:00`; docs.globus.org/api/transfer/file_operations, File document).

    Transfer truncates to the second, and so does this: the prune flow compares the two
    strings to tell whether the file at the target is still the version recorded."""
    whole = datetime.fromtimestamp(mtime_ns // 1_000_000_000, UTC)
    return whole.strftime("%Y-%m-%d %H:%M:%S+00:00")


def iso_utc(ts: float) -> str:
    """A POSIX time as the ISO 8601 UTC datetime Globus APIs take (Transfer `deadline`)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def identify(path: str, *, real_path: str | None = None) -> Identity:
    """Open, check and hash one file; raise `IdentityError` (or `StillChanging`).

    `real_path`: where routing resolved the path to; the file actually opened must be that
    one (a directory on the way swapped for a symlink after routing is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise IdentityError(f"{path}: gone before it could be read") from None
    except OSError as exc:
        # ELOOP: the last component is a symlink (O_NOFOLLOW).
        raise IdentityError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        if real_path is not None:
            _check_opened(fd, path, real_path)
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise IdentityError(f"{path}: not a regular file")
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns, before.st_ino) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ino,
    ):
        raise StillChanging(f"{path}: changed while it was read")
    return Identity(after.st_size, after.st_mtime_ns, after.st_ino, digest.hexdigest())


def _check_opened(fd: int, path: str, real_path: str) -> None:
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return  # no /proc (not Linux): routing's realpath check is all there is
    if opened != real_path:
        raise IdentityError(f"{path}: resolves to {opened} now, not {real_path}")
