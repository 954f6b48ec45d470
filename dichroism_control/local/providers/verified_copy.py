"""The verified copy behind the local Transfer provider: one file copied with its checksum
computed on the way and, with `verify`, the written copy read back and compared before it
replaces the destination."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dichroism_control.local.providers.checksums import (
    COMBINABLE,
    DEFAULT_CHECKSUM,
    Canceled,
    Crc,
    new_hasher,
)

# A copy moves COPY_BLOCK at a time through a buffer small enough to stay in L2 cache
# between the read, the checksum and the write; COPY_CHUNK is the unit of work a thread
# takes (and reads back to verify) and COPY_THREADS how many share a combinable checksum.
COPY_BLOCK = 256 * 2**10
COPY_CHUNK = 16 * 2**20
COPY_THREADS = 2


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
        if self.algorithm.upper() in COMBINABLE:
            return self._run_combined()
        return self._run_ordered()

    def _run_combined(self) -> tuple[str, str | None]:
        fn, start, combine = COMBINABLE[self.algorithm.upper()]
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
                src, dst = Crc(fn, start), Crc(fn, start)
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
        source = new_hasher(self.algorithm)
        copy = new_hasher(self.algorithm)
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


class ExternalChecksumMismatch(ChecksumMismatch):
    """The source's bytes do not have the checksum the caller was given for them."""


# A temp name is `.{name}.{8 random}.part`; a name this long (bytes) would take it past
# NAME_MAX (255 on Linux filesystems), so such a name is replaced by its digest.
_TEMP_NAME_MAX = 200


def _temp_prefix(name: str) -> str:
    if len(os.fsencode(name)) <= _TEMP_NAME_MAX:
        return f".{name}."
    return f".{hashlib.sha1(os.fsencode(name)).hexdigest()}."


def copy_file(
    src: Path,
    dst: Path,
    *,
    algorithm: str = DEFAULT_CHECKSUM,
    verify: bool = True,
    cancel: threading.Event | None = None,
    expected: str | None = None,
    preserve_timestamp: bool = False,
) -> CopyResult:
    """Copy one file with its checksum computed on the way; with `verify`, read the written
    copy back, checksum it and compare before it replaces `dst` (temp file + os.replace, so
    `dst` is never a partial file). See `_Copy` for how the work is split between cores.

    `expected`: the source's checksum as known elsewhere (Transfer's external_checksum):
    bytes that differ raise `ExternalChecksumMismatch` and nothing replaces `dst`.
    `preserve_timestamp`: the copy gets the source's modification time.
    """
    new_hasher(algorithm)  # an unknown algorithm fails before anything is written
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd_dst, tmp = tempfile.mkstemp(dir=dst.parent, prefix=_temp_prefix(dst.name), suffix=".part")
    try:
        fd_src = os.open(src, os.O_RDONLY)
        try:
            info = os.fstat(fd_src)
            size = info.st_size
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd_src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            checksum, copied = _Copy(fd_src, fd_dst, size, algorithm, verify, cancel).run()
        finally:
            os.close(fd_src)
        if expected is not None and checksum.lower() != expected.strip().lower():
            raise ExternalChecksumMismatch(
                f"{src}: {algorithm} of the source is {checksum}, not the expected {expected}"
            )
        if verify and (copied != checksum or os.fstat(fd_dst).st_size != size):
            raise ChecksumMismatch(
                f"checksum mismatch after copying {src} -> {dst}: "
                f"source {algorithm} {checksum}, copy {copied}"
            )
        if preserve_timestamp:
            os.utime(fd_dst, ns=(info.st_atime_ns, info.st_mtime_ns))
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
