"""Local stand-ins for the Globus action providers the flows use, keyed by ActionUrl.

* Transfer (`https://transfer.actions.globus.org/{transfer,delete,stat,ls,mkdir}`): a
  collection id is the endpoint in `config.globus.endpoints` with that uuid, and a
  collection path `/x/y` is `{endpoint.local_path}/x/y` (a relative `local_path` resolves
  against the config file's directory). An unknown collection is `ActionUnableToRun`.
* Compute v3 (`https://compute.actions.globus.org/v3`): the function registered under
  `function_id` (its source text, as `deploy` registered it) runs in a fresh Python
  subprocess with the fake `hsi`/`htar` on PATH, `FAKE_HPSS_ROOT` at `local.hpss_path` and
  the SciCat stand-in (`SCICAT_URL=sqlite:///...`) at `local.catalogue_path`.
* Hello World (`https://actions.globus.org/hello_world`), for the Globus tutorial flows.

Every provider answers synchronously (SUCCEEDED or FAILED from `run`): the work is local, so
polling would only add latency. Long work still honours the run's cancel event and the
state's `WaitTime` (the Compute subprocess is killed and the engine raises ActionTimeout).

Stat of a missing path answers SUCCEEDED with `details.code == "NotFound"` (GLOBUS_NOTES:
"stat returns details.type or details.code == 'NotFound'"), so a flow can branch on it with
`IsPresent` (new_file's CheckSize does) instead of needing a Catch; ls and mkdir of a
missing path are FAILED, like the Transfer operations they stand for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dichroism_control.local.engine import (
    FAILED,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
)
from dichroism_control.local.hello_world import HELLO_WORLD_URL, HelloWorldProvider

if TYPE_CHECKING:
    from dichroism_control.config import Config, Endpoint

__all__ = [
    "COMPUTE_URL",
    "TRANSFER_URLS",
    "ComputeProvider",
    "TransferProvider",
    "build_providers",
    "checksum_file",
    "copy_file",
]

TRANSFER_BASE = "https://transfer.actions.globus.org"
TRANSFER_OPERATIONS = ("transfer", "delete", "stat", "ls", "mkdir")
TRANSFER_URLS = {op: f"{TRANSFER_BASE}/{op}" for op in TRANSFER_OPERATIONS}
COMPUTE_URL = "https://compute.actions.globus.org/v3"
FAKE_HPSS_DIR = Path(__file__).resolve().parent / "fake_hpss"

# A copy moves COPY_BLOCK at a time through a buffer small enough to stay in L2 cache
# between the read, the checksum and the write; COPY_CHUNK is the unit of work a thread
# takes (and reads back to verify) and COPY_THREADS how many share a combinable checksum.
COPY_BLOCK = 256 * 2**10
COPY_CHUNK = 16 * 2**20
COPY_THREADS = 2
HASH_BUFFER = 8 * 2**20
# ISA-L's CRC32 gives zlib's exact values about 4x faster (7.4 vs 1.7 GB/s a core here): it
# is what lets a verified copy approach `cp`. zlib remains the fallback where the wheel is
# missing.
try:
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal ships wheels for the platforms we run on
    _crc32 = zlib.crc32

# CRC32 is the local default: fast (above), releases the GIL and its sums combine, so both
# cores can copy and checksum (benchmarks/bench_local_transfer.py). It detects corrupted
# copies, which is what verification is for; a body may still ask for
# MD5/SHA1/SHA256/SHA512 (`checksum_algorithm`), as Globus Transfer allows.
DEFAULT_CHECKSUM = "CRC32"
SYNC_LEVELS = {"exists": 0, "size": 1, "mtime": 2, "checksum": 3}


def _utcnow() -> str:
    return datetime.now(UTC).isoformat()


def _transfer_time(ts: float) -> str:
    """Transfer's `last_modified` format: `YYYY-MM-DD HH:MM:SS+00:00`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")


# ============================================================================ collections


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


# ============================================================================ checksums


class _Crc:
    """zlib.crc32/adler32 behind the hashlib `update`/`hexdigest` interface."""

    def __init__(self, fn: Callable[[Any, int], int], start: int) -> None:
        self._fn = fn
        self.value = start

    def update(self, data: Any) -> None:
        self.value = self._fn(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08x}"


class _Hasher(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


_HASHLIB = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
CHECKSUM_ALGORITHMS = ("CRC32", "ADLER32", *_HASHLIB)


def _hasher(algorithm: str) -> _Hasher:
    name = algorithm.upper()
    if name == "CRC32":
        return _Crc(_crc32, 0)
    if name == "ADLER32":
        return _Crc(zlib.adler32, 1)
    if name in _HASHLIB:
        return hashlib.new(_HASHLIB[name])
    raise ValueError(f"unknown checksum_algorithm {algorithm!r} (known: {CHECKSUM_ALGORITHMS})")


def _crc32_multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected, as zlib's crc32_combine)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ 0xEDB88320 if b & 1 else b >> 1


_CRC32_X2N = [1 << 30]  # x^(2^k) modulo the polynomial, k = 0..31
for _ in range(31):
    _CRC32_X2N.append(_crc32_multmodp(_CRC32_X2N[-1], _CRC32_X2N[-1]))


def _crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine)."""
    p = 1 << 31  # x^0
    k = 3  # len2 bytes = 8 * len2 bits
    while len2:
        if len2 & 1:
            p = _crc32_multmodp(_CRC32_X2N[k & 31], p)
        len2 >>= 1
        k += 1
    return _crc32_multmodp(p, crc1) ^ crc2


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of A+B from adler(A), adler(B) and len(B) (zlib's adler32_combine)."""
    base = 65521
    rem = len2 % base
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % base
    sum1 = (sum1 + (adler2 & 0xFFFF) + base - 1) % base
    sum2 = (sum2 + (adler1 >> 16) + (adler2 >> 16) + base - rem) % base
    return sum1 | (sum2 << 16)


# Checksums whose pieces combine: a copy splits the file into chunks that both cores copy
# and checksum independently. Others (hashlib) must see the bytes in order.
_COMBINABLE: dict[str, tuple[Callable[[Any, int], int], int, Callable[[int, int, int], int]]] = {
    "CRC32": (_crc32, 0, _crc32_combine),
    "ADLER32": (zlib.adler32, 1, _adler32_combine),
}


class Canceled(Exception):
    pass


def _hash_fd(fd: int, algorithm: str, size: int, cancel: threading.Event | None = None) -> str:
    """Checksum of the first `size` bytes of `fd` (pread: the fd's offset is not touched)."""
    hasher = _hasher(algorithm)
    buffer = bytearray(min(HASH_BUFFER, max(size, 1)))
    view = memoryview(buffer)
    offset = 0
    while offset < size:
        if cancel is not None and cancel.is_set():
            raise Canceled()
        want = min(len(buffer), size - offset)
        got = os.preadv(fd, [view[:want]], offset)
        if got <= 0:
            raise OSError(f"file shrank while being read (at byte {offset} of {size})")
        hasher.update(view[:got])
        offset += got
    return hasher.hexdigest()


def checksum_file(path: Path, algorithm: str = DEFAULT_CHECKSUM) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _hash_fd(fd, algorithm, os.fstat(fd).st_size)
    finally:
        os.close(fd)


class _Copy:
    """One verified copy of `size` bytes from `fd_src` to `fd_dst`, in user space.

    Each block is read once into a small reusable buffer, checksummed there and written
    from there (so the source checksum is of exactly the bytes written, the source is read
    once, and the buffer is still in L2 cache for the checksum and the write). With
    `verify`, every chunk of the copy is then read back from `fd_dst` (mapped, see
    `_read_back`) and checksummed independently; the caller compares the two sums.

    CRC32 and Adler-32 combine, so the chunks are shared between threads (one per core,
    at most two) and their sums combined; other algorithms need the bytes in order, so one
    thread copies while another reads the copy back a chunk behind.
    """

    def __init__(
        self,
        fd_src: int,
        fd_dst: int,
        size: int,
        algorithm: str,
        verify: bool,
        cancel: threading.Event | None,
    ) -> None:
        self.fd_src = fd_src
        self.fd_dst = fd_dst
        self.size = size
        self.algorithm = algorithm
        self.verify = verify
        self.cancel = cancel
        self.failed = threading.Event()  # a worker failed: the others stop

    def _check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Canceled()
        if self.failed.is_set():
            raise Canceled()  # the first error is the one reported

    def _copy_range(
        self, offset: int, end: int, view: memoryview, update: Callable[[Any], None]
    ) -> None:
        while offset < end:
            self._check()
            got = os.preadv(self.fd_src, [view[: min(len(view), end - offset)]], offset)
            if got <= 0:
                raise OSError(f"source shrank during the copy (at byte {offset} of {self.size})")
            data = view[:got]
            update(data)
            written = 0
            while written < got:
                written += os.pwrite(self.fd_dst, data[written:], offset + written)
            offset += got

    def _read_back(
        self, offset: int, end: int, view: memoryview, update: Callable[[Any], None]
    ) -> None:
        """Checksum bytes [offset, end) of the copy as they now read back from it.

        Plain reads, not a memory map: a map is ~10 % faster, but an I/O error while reading
        a mapped file is a SIGBUS that would kill the watcher process hosting this provider,
        where a read error is an ordinary failed transfer.
        """
        self._check()
        while offset < end:
            self._check()
            got = os.preadv(self.fd_dst, [view[: min(len(view), end - offset)]], offset)
            if got <= 0:
                raise OSError(f"the copy is short (at byte {offset} of {self.size})")
            update(view[:got])
            offset += got

    def _chunks(self) -> list[tuple[int, int]]:
        return [(o, min(o + COPY_CHUNK, self.size)) for o in range(0, self.size, COPY_CHUNK)]

    def _threads(self, targets: list[Callable[[], None]]) -> None:
        errors: list[BaseException] = []

        def guarded(target: Callable[[], None]) -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)
                self.failed.set()

        threads = [
            threading.Thread(target=guarded, args=(t,), name=f"copy-{i}", daemon=True)
            for i, t in enumerate(targets[1:])
        ]
        for thread in threads:
            thread.start()
        guarded(targets[0])  # the calling thread does its share
        for thread in threads:
            thread.join()
        if errors:
            # a Canceled raised only because another worker failed is not the story
            real = [e for e in errors if not isinstance(e, Canceled)]
            raise (real or errors)[0]

    def run(self) -> tuple[str, str | None]:
        """(source checksum, copy checksum or None without verify)."""
        if self.algorithm.upper() in _COMBINABLE:
            return self._run_combined()
        return self._run_ordered()

    def _run_combined(self) -> tuple[str, str | None]:
        fn, start, combine = _COMBINABLE[self.algorithm.upper()]
        chunks = self._chunks()
        sums: list[tuple[int, int]] = [(start, start)] * len(chunks)
        lock = threading.Lock()
        pending = iter(range(len(chunks)))

        def worker() -> None:
            view = memoryview(bytearray(COPY_BLOCK))
            while True:
                with lock:
                    k = next(pending, None)
                if k is None:
                    return
                offset, end = chunks[k]
                src, dst = _Crc(fn, start), _Crc(fn, start)
                self._copy_range(offset, end, view, src.update)
                if self.verify:
                    self._read_back(offset, end, view, dst.update)
                sums[k] = (src.value, dst.value)

        workers = max(1, min(COPY_THREADS, os.cpu_count() or 1, len(chunks)))
        self._threads([worker] * workers)
        src_sum = dst_sum = start
        for (offset, end), (s, d) in zip(chunks, sums, strict=True):
            src_sum = combine(src_sum, s, end - offset)
            dst_sum = combine(dst_sum, d, end - offset)
        src_hex = f"{src_sum & 0xFFFFFFFF:08x}"
        return src_hex, (f"{dst_sum & 0xFFFFFFFF:08x}" if self.verify else None)

    def _run_ordered(self) -> tuple[str, str | None]:
        source = _hasher(self.algorithm)
        copy = _hasher(self.algorithm)
        done: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()

        def copier() -> None:
            view = memoryview(bytearray(COPY_BLOCK))
            try:
                for offset, end in self._chunks():
                    self._copy_range(offset, end, view, source.update)
                    done.put((offset, end))
            finally:
                done.put(None)

        def verifier() -> None:
            view = memoryview(bytearray(COPY_BLOCK))
            while (item := done.get()) is not None:
                self._read_back(*item, view, copy.update)

        self._threads([copier, verifier] if self.verify else [copier])
        return source.hexdigest(), (copy.hexdigest() if self.verify else None)


@dataclass
class CopyResult:
    bytes: int
    checksum: str
    skipped: bool = False


class ChecksumMismatch(Exception):
    pass


def copy_file(
    src: Path,
    dst: Path,
    *,
    algorithm: str = DEFAULT_CHECKSUM,
    verify: bool = True,
    cancel: threading.Event | None = None,
) -> CopyResult:
    """Copy one file with its checksum computed on the way; with `verify`, read the written
    copy back, checksum it and compare before it replaces `dst` (temp file + os.replace, so
    `dst` is never a partial file). See `_Copy` for how the work is split between cores.
    """
    _hasher(algorithm)  # an unknown algorithm fails before anything is written
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd_dst, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        fd_src = os.open(src, os.O_RDONLY)
        try:
            size = os.fstat(fd_src).st_size
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd_src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            checksum, copied = _Copy(fd_src, fd_dst, size, algorithm, verify, cancel).run()
        finally:
            os.close(fd_src)
        if verify and (copied != checksum or os.fstat(fd_dst).st_size != size):
            raise ChecksumMismatch(
                f"checksum mismatch after copying {src} -> {dst}: "
                f"source {algorithm} {checksum}, copy {copied}"
            )
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd_dst, 0o666 & ~umask)  # mkstemp makes 0600; a copy gets normal perms
        os.close(fd_dst)
        fd_dst = -1
        os.replace(tmp, dst)
        return CopyResult(bytes=size, checksum=checksum)
    except BaseException:
        if fd_dst >= 0:
            os.close(fd_dst)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ============================================================================ transfer


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
    started: str = field(default_factory=_utcnow)
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
            "completion_time": _utcnow(),
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


def _require(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise ActionUnableToRun(f"missing required parameter {key!r}", code="BadRequest")
    return body[key]


def _data_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = _require(body, "DATA")
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
        source = find_endpoint(self.config, _require(body, "source_endpoint"))
        destination = find_endpoint(self.config, _require(body, "destination_endpoint"))
        items = _data_items(body)
        level = _sync_level(body.get("sync_level"))
        verify = bool(body.get("verify_checksum", False))
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
                self._transfer_item(task, src, dst, item, level, verify, algorithm, ctx)
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
                self._copy_one(task, child_src, child_dst, level, verify, algorithm, ctx)
            return
        if item.get("recursive"):
            raise TransferError("NOT_A_DIRECTORY", f"source {shown} is not a directory")
        self._copy_one(task, src, dst, level, verify, algorithm, ctx)

    def _copy_one(
        self,
        task: _Task,
        src: Path,
        dst: Path,
        level: int | None,
        verify: bool,
        algorithm: str,
        ctx: ActionContext,
    ) -> None:
        task.files += 1
        try:
            if level is not None and self._in_sync(task, src, dst, level, algorithm):
                task.files_skipped += 1
                return
            result = copy_file(src, dst, algorithm=algorithm, verify=verify, cancel=ctx.cancel)
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
        endpoint = find_endpoint(self.config, _require(body, "endpoint_id"))
        shown = _require(body, "path")
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
        endpoint = find_endpoint(self.config, _require(body, "endpoint_id"))
        shown = _require(body, "path")
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
        endpoint = find_endpoint(self.config, _require(body, "endpoint_id"))
        shown = _require(body, "path")
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


# ============================================================================ compute

# Runs one registered function: the source is exec'd in a fresh namespace (as the Compute
# endpoint does with `register_source_code`), kwargs arrive as JSON on stdin and the result
# leaves as JSON on the saved stdout; anything the function prints goes to stderr.
_RUNNER = r"""
import json, sys, traceback
request = json.load(sys.stdin)
out = sys.stdout
sys.stdout = sys.stderr
try:
    namespace = {"__name__": "__compute_function__"}
    exec(compile(request["source"], "<" + request["name"] + ">", "exec"), namespace)
    result = namespace[request["name"]](*request["args"], **request["kwargs"])
    answer = {"ok": True, "result": result}
    text = json.dumps(answer)
except BaseException as exc:
    tail = "".join(traceback.format_exception(exc)[-3:])
    text = json.dumps({"ok": False, "type": type(exc).__name__, "error": str(exc),
                       "traceback": tail[-4000:]})
out.write(text)
out.flush()
"""

# What of our own environment a function sees: enough to run Python and the fake HPSS
# tools, never tokens or passwords (the real Compute endpoint's environment is its own).
_PASSED_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER")
_PASSED_PREFIXES = ("FAKE_HPSS_",)


class FunctionLookup(Protocol):
    def get_function(self, function_id: str) -> tuple[str, str] | None:
        """(name, source) of a registered function, or None."""
        ...


@dataclass
class _Finished:
    status: ActionStatus


class ComputeProvider(ActionProvider):
    """Compute v3 tasks run as local subprocesses (synchronously, bounded by WaitTime)."""

    url = COMPUTE_URL

    def __init__(self, config: Config, functions: FunctionLookup) -> None:
        self.config = config
        self.functions = functions
        self._env: dict[str, str] | None = None
        self._lock = threading.Lock()

    # -- environment -------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        with self._lock:
            if self._env is None:
                self._env = self._build_env()
            env = dict(self._env)
        # Failure injection (FAKE_HPSS_FAIL, ...) is read per call so tests can flip it.
        for key in [k for k in env if k.startswith(_PASSED_PREFIXES) and k != "FAKE_HPSS_ROOT"]:
            del env[key]
        env.update(
            {
                k: v
                for k, v in os.environ.items()
                if k.startswith(_PASSED_PREFIXES) and k != "FAKE_HPSS_ROOT"
            }
        )
        return env

    def _build_env(self) -> dict[str, str]:
        config = self.config
        hpss = config.resolve(config.local.hpss_path)
        hpss.mkdir(parents=True, exist_ok=True)
        catalogue = config.resolve(config.local.catalogue_path).resolve()
        catalogue.parent.mkdir(parents=True, exist_ok=True)
        locks = config.state_path / "hpss-locks"
        locks.mkdir(parents=True, exist_ok=True)
        shims = _python_shim(config.state_path / "local-bin")
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        path = [str(FAKE_HPSS_DIR), str(shims), os.environ.get("PATH", os.defpath)]
        env.update(
            {
                "PATH": os.pathsep.join(path),
                "FAKE_HPSS_ROOT": str(hpss.resolve()),
                "SCICAT_URL": "sqlite:///" + str(catalogue),
                "DICHROISM_HPSS_LOCK_DIR": str(locks),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        return env

    # -- the action --------------------------------------------------------------------
    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        endpoint_id = _require(body, "endpoint_id")
        endpoints = self.config.globus.compute_endpoints
        allowed = {endpoints.nersc.lower(): "nersc", endpoints.scicat.lower(): "scicat"}
        if str(endpoint_id).lower() not in allowed:
            raise ActionUnableToRun(
                f"unknown Compute endpoint {endpoint_id!r} (config.globus.compute_endpoints: "
                f"nersc {endpoints.nersc}, scicat {endpoints.scicat})",
                code="EndpointNotFound",
            )
        tasks = _require(body, "tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ActionUnableToRun("tasks must be a non-empty list", code="BadRequest")
        prepared: list[tuple[str, str, str, list[Any], dict[str, Any]]] = []
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise ActionUnableToRun(f"tasks[{i}] must be an object", code="BadRequest")
            function_id = str(task.get("function_id"))
            found = self.functions.get_function(function_id)
            if found is None:
                raise ActionUnableToRun(
                    f"unknown function_id {function_id!r} in tasks[{i}]: not registered on the "
                    "local backend (run `dichroism --backend local deploy`)",
                    code="FunctionNotFound",
                )
            args = task.get("args", [])
            kwargs = task.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ActionUnableToRun(
                    f"tasks[{i}]: args must be a list and kwargs an object", code="BadRequest"
                )
            prepared.append((function_id, found[0], found[1], args, kwargs))
        started = _utcnow()
        deadline = time.monotonic() + ctx.wait_time
        results: list[dict[str, Any]] = []
        outputs: list[Any] = []
        for function_id, name, source, args, kwargs in prepared:
            task_id = str(uuid.uuid4())
            outcome = self._call(name, source, args, kwargs, deadline, ctx.cancel)
            if isinstance(outcome, _Finished):
                return outcome.status  # timed out or canceled: ACTIVE, the engine decides
            ok, value = outcome
            if not ok:
                results.append({"task_id": task_id, "status": "failed", "exception": value})
                return ActionStatus(
                    status=FAILED,
                    details={
                        "code": "TaskFailed",
                        "description": f"{name} raised {value['type']}: {value['error']}",
                        "error": value["error"],
                        "exception": value,
                        "results": results,
                    },
                    display_status="TaskFailed",
                    start_time=started,
                )
            outputs.append(value)
            results.append(
                {
                    "task_id": task_id,
                    "function_id": function_id,
                    "status": "success",
                    "output": value,
                }
            )
        return ActionStatus(
            status=SUCCEEDED,
            details={"result": outputs, "results": results},
            start_time=started,
        )

    def status(self, action_id: str) -> ActionStatus:
        # Only reached after a timeout/cancel return (the engine then stops polling).
        return ActionStatus(
            status=FAILED,
            action_id=action_id,
            details={"code": "Gone", "description": "the task was stopped"},
        )

    def _call(
        self,
        name: str,
        source: str,
        args: list[Any],
        kwargs: dict[str, Any],
        deadline: float,
        cancel: threading.Event | None,
    ) -> tuple[bool, Any] | _Finished:
        request = json.dumps({"name": name, "source": source, "args": args, "kwargs": kwargs})
        process = subprocess.Popen(
            [sys.executable, "-c", _RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment(),
            cwd=str(self.config.state_path),
            start_new_session=True,  # so a kill reaches hsi/htar children too
        )
        box: dict[str, Any] = {}

        def communicate() -> None:
            box["out"], box["err"] = process.communicate(request.encode())

        talker = threading.Thread(target=communicate, name=f"compute-{name}", daemon=True)
        talker.start()
        while talker.is_alive():
            talker.join(0.05)
            stop = cancel is not None and cancel.is_set()
            if stop or time.monotonic() >= deadline:
                _kill_group(process)
                talker.join(5)
                # ACTIVE past the deadline makes the engine raise ActionTimeout; with the
                # cancel event set it ends the run as canceled.
                return _Finished(
                    ActionStatus(status="ACTIVE", details={"code": "Stopped", "function": name})
                )
        out = (box.get("out") or b"").decode("utf-8", "replace")
        err = (box.get("err") or b"").decode("utf-8", "replace")
        try:
            answer = json.loads(out)
        except json.JSONDecodeError:
            return False, {
                "type": "WorkerError",
                "error": f"the function process exited with status {process.returncode} "
                f"without a result",
                "stderr": err[-2000:],
            }
        if answer.get("ok"):
            return True, answer.get("result")
        return False, {k: answer.get(k) for k in ("type", "error", "traceback")}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.kill()


def _python_shim(directory: Path) -> Path:
    """A directory with `python3` -> this interpreter, so the fake tools'
    `#!/usr/bin/env python3` finds a Python quickly and the same one."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "python3"
    target = Path(sys.executable)
    try:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return directory
        tmp = directory / f".python3.{os.getpid()}.{threading.get_ident()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, link)
    except OSError:
        pass  # best effort: PATH still has the system python3
    return directory


# ============================================================================ assembly


def build_providers(config: Config, functions: FunctionLookup) -> dict[str, ActionProvider]:
    """Every local provider by ActionUrl (an ActionUrl missing here is an engine error)."""
    providers: dict[str, ActionProvider] = {
        url: TransferProvider(config, op) for op, url in TRANSFER_URLS.items()
    }
    providers[COMPUTE_URL] = ComputeProvider(config, functions)
    providers[HELLO_WORLD_URL] = HelloWorldProvider()
    return providers
