"""Content identity: what a prune later compares the target with (size, mtime as Transfer
reports it) and what every safe copy is checked against (the MD5).

Issue 13 (mutation testing of the deletion path): the expected values are written out
(MD5s of known bytes, Transfer's time format), so a changed format or a wrong digest fails.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import dichroism_control.identity as identity_module
from dichroism_control.identity import (
    Identity,
    IdentityError,
    StillChanging,
    identify,
    iso_utc,
    transfer_time,
)


def test_transfer_time_is_utc_whole_seconds_as_transfer_reports_it() -> None:
    """2026-02-28 12:00:00.999 UTC: Transfer truncates, never rounds up."""
    assert transfer_time(1_772_280_000_999_999_999) == "2026-02-28 12:00:00+00:00"
    assert transfer_time(1_772_280_001_000_000_000) == "2026-02-28 12:00:01+00:00"
    assert transfer_time(0) == "1970-01-01 00:00:00+00:00"


def test_iso_utc_is_a_deadline_in_whole_seconds() -> None:
    assert iso_utc(1_772_280_000.75) == "2026-02-28T12:00:00+00:00"


def test_identity_mtime_and_same_file() -> None:
    ident = Identity(size=10, mtime_ns=1_500_000_000, inode=7, checksum="a" * 32)
    assert ident.mtime == 1.5
    assert ident.same_file(10, 1_500_000_000, 7)
    assert not ident.same_file(11, 1_500_000_000, 7)
    assert not ident.same_file(10, 1_500_000_001, 7)
    assert not ident.same_file(10, 1_500_000_000, 8)


def test_identify_hashes_the_whole_file(tmp_path: Path) -> None:
    """More than one read chunk, so a digest of the first chunk only would differ."""
    data = os.urandom(identity_module.CHUNK + 12345)
    path = tmp_path / "scan.h5"
    path.write_bytes(data)
    st = path.stat()
    found = identify(str(path), real_path=str(path))
    assert found == Identity(
        len(data), st.st_mtime_ns, st.st_ino, hashlib.md5(data, usedforsecurity=False).hexdigest()
    )


def test_identify_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    assert identify(str(path)).checksum == "d41d8cd98f00b204e9800998ecf8427e"


def test_identify_refuses_what_it_cannot_prove(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"gone\.h5: gone before it could be read$"):
        identify(str(tmp_path / "gone.h5"))
    target = tmp_path / "real.h5"
    target.write_bytes(b"x")
    (tmp_path / "link.h5").symlink_to(target)
    with pytest.raises(IdentityError, match=r"link\.h5: cannot open \("):  # O_NOFOLLOW
        identify(str(tmp_path / "link.h5"))
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(IdentityError, match=r"dir\.h5: not a regular file$"):
        identify(str(tmp_path / "dir.h5"))
    os.mkfifo(tmp_path / "fifo.h5")  # opened non-blocking: must not hang
    with pytest.raises(IdentityError, match=r"fifo\.h5: not a regular file$"):
        identify(str(tmp_path / "fifo.h5"))


def test_identify_refuses_a_file_opened_elsewhere_than_routed(tmp_path: Path) -> None:
    """A directory on the way swapped for a symlink after routing: the file opened is not
    the one routing resolved (simulated by a real_path that differs)."""
    path = tmp_path / "a.h5"
    path.write_bytes(b"x")
    expected = str(tmp_path / "elsewhere" / "a.h5")
    with pytest.raises(IdentityError) as info:
        identify(str(path), real_path=expected)
    assert str(info.value) == f"{path}: resolves to {path} now, not {expected}"


def test_identify_notices_a_file_that_changed_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing.h5"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat
    calls: list[int] = []

    def fstat_then_append(fd: int) -> os.stat_result:
        calls.append(fd)
        if len(calls) == 2:  # the second look, after the read: the writer was not done
            with open(path, "ab") as fh:
                fh.write(b"more")
        return real_fstat(fd)

    monkeypatch.setattr(identity_module.os, "fstat", fstat_then_append)
    with pytest.raises(StillChanging, match="changed while it was read"):
        identify(str(path))


def test_identify_reports_a_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.h5"
    path.write_bytes(b"x")

    def failing_fdopen(*args: object, **kwargs: object) -> object:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(identity_module.os, "fdopen", failing_fdopen)
    with pytest.raises(IdentityError, match=r"cannot read \(Input/output error\)$"):
        identify(str(path))


def test_times_are_utc_whatever_the_hosts_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A beamline host set to Pacific time still reports Transfer's UTC strings: a local
    time would make every prune see a changed mtime (or, worse, a matching one by chance)."""
    import time

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert transfer_time(1_772_280_000_000_000_000) == "2026-02-28 12:00:00+00:00"
        assert iso_utc(1_772_280_000.0) == "2026-02-28T12:00:00+00:00"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
