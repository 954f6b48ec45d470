"""hpss_archive against the fake hsi/htar: content check, bundling, versions, idempotency."""

from __future__ import annotations

import fcntl
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

import compute_functions.hpss as hpss_module
from compute_functions.hpss import hpss_archive

from .conftest import HPSS_DIR, Cfs, Tape, archive_options, item, md5

NAME = "P1_2026-11-25_ab12cd"
BUNDLE = f"{HPSS_DIR}/P1/{NAME}.tar"


def run(cfs: Cfs, files: list[dict[str, Any]], name: str = NAME, **opts: int) -> Any:
    return hpss_archive(
        beamline="bl402",
        proposal="P1",
        cfs_root=str(cfs.root),
        files=files,
        hpss_dir=HPSS_DIR,
        archive_name=name,
        options=archive_options(**opts),
    )


def tape_of(result: dict[str, Any], i: int) -> str | int | None:
    """The archive path of file i, or -1 (single) / None (not archived)."""
    w = result["where"][i]
    return result["archives"][w] if isinstance(w, int) and w >= 0 else w


def test_bundles_small_files_and_sends_a_large_one_alone(cfs: Cfs, tape: Tape) -> None:
    files = [
        {**cfs.write("P1/a.h5", 100), "mtime": 1764000000},
        cfs.write("P1/sub/b.txt", 200),
        cfs.write("P1/big.h5", 6000),
    ]
    result = run(cfs, files)
    assert result == {
        "sent": 3,
        "skipped": 0,
        "archives": [BUNDLE],
        "where": [0, 0, -1],
        "changed": [],
    }
    # members are relative to cfs_root; the .md5 beside the archive names their checksums
    with tarfile.open(tape.local(BUNDLE)) as tar:
        names = tar.getnames()
    assert "P1/a.h5" in names and "P1/sub/b.txt" in names
    assert tape.local(BUNDLE + ".idx").exists()
    assert tape.local(BUNDLE + ".md5").read_text() == (
        f"{files[0]['checksum']}  P1/a.h5\n{files[1]['checksum']}  P1/sub/b.txt\n"
    )
    assert tape.local(f"{HPSS_DIR}/P1/big.h5").read_bytes() == (cfs.root / "P1/big.h5").read_bytes()


def test_result_stays_compact_for_a_large_group(cfs: Cfs, tape: Tape) -> None:
    """The run state is capped at 200 KB and Compute stores each result twice: no per-file
    paths in the result, only indices."""
    files = [cfs.write(f"P1/scan_{i:04d}_with_a_long_descriptive_name.h5", 3) for i in range(400)]
    result = run(cfs, files, bundle_max_bytes=100_000)
    assert result["where"] == [0] * 400 and result["sent"] == 400
    assert len(json.dumps(result)) < 2_000


def test_one_changed_file_does_not_block_its_group(cfs: Cfs, tape: Tape) -> None:
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/b.h5", 100), cfs.write("P1/big.h5", 6000)]
    cfs.write("P1/b.h5", data=b"v2" * 50)  # replaced by a newer version meanwhile, same size
    cfs.write("P1/big.h5", data=b"v2" * 3001)  # replaced, other size
    result = run(cfs, files)
    assert result["where"] == [0, None, None]
    assert result["changed"] == [
        {"i": 1, "reason": "checksum_differs"},
        {"i": 2, "reason": "size_differs"},
    ]
    assert result["sent"] == 1 and result["skipped"] == 0
    with tarfile.open(tape.local(BUNDLE)) as tar:
        assert "P1/b.h5" not in tar.getnames()
    assert not tape.local(f"{HPSS_DIR}/P1/big.h5").exists()


def test_files_that_cannot_be_proven_are_reported_not_archived(
    cfs: Cfs, tape: Tape, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"x" * 10)
    good = cfs.write("P1/a.h5", 10)
    (cfs.root / "P1" / "link.h5").symlink_to(cfs.root / "P1" / "a.h5")
    (cfs.root / "P1" / "out").symlink_to(tmp_path, target_is_directory=True)
    (cfs.root / "P1" / "dir.h5").mkdir()
    files = [
        item("P1/missing.h5", b"x"),
        {**good, "path": "P1/link.h5"},  # htar would store the link, not the bytes
        item("P1/out/outside.h5", b"x" * 10),
        item("P1/dir.h5", b"x"),
        good,
    ]
    result = run(cfs, files)
    assert result["where"] == [None, None, None, None, 0]
    assert result["changed"] == [
        {"i": 0, "reason": "missing"},
        {"i": 1, "reason": "not_regular"},
        {"i": 2, "reason": "outside_root"},
        {"i": 3, "reason": "not_regular"},
    ]


def test_all_changed_sends_nothing(cfs: Cfs, tape: Tape) -> None:
    result = run(cfs, [item("P1/a.h5", b"gone")])
    assert result == {
        "sent": 0,
        "skipped": 0,
        "archives": [],
        "where": [None],
        "changed": [{"i": 0, "reason": "missing"}],
    }
    assert list(tape.root.iterdir()) == []


def test_versions_of_a_single_each_get_their_own_tape_path(cfs: Cfs, tape: Tape) -> None:
    v1 = cfs.write("P1/big.h5", data=b"1" * 6000)
    assert run(cfs, [v1])["where"] == [-1]
    v2 = cfs.write("P1/big.h5", data=b"2" * 6000, version=2)
    v3 = cfs.write("P1/big.h5", data=b"3" * 6000, version=3)
    result = run(cfs, [v1, v2, v3])  # v1, v2 are no longer on CFS: only v3 can be sent
    assert result["where"] == [None, None, -1]
    assert tape.local(f"{HPSS_DIR}/P1/big.h5").read_bytes() == b"1" * 6000
    assert tape.local(f"{HPSS_DIR}/P1/big.h5@v3").read_bytes() == b"3" * 6000
    assert not tape.local(f"{HPSS_DIR}/P1/big.h5@v2").exists()


def test_a_stale_single_is_set_aside_never_overwritten(cfs: Cfs, tape: Tape) -> None:
    stale = tape.local(f"{HPSS_DIR}/P1/big.h5")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    result = run(cfs, [cfs.write("P1/big.h5", 6000)])
    assert result["where"] == [-1] and result["sent"] == 1
    assert stale.stat().st_size == 6000
    (aside,) = [p for p in stale.parent.iterdir() if p.name.startswith("big.h5.stale-")]
    assert aside.read_bytes() == b"partial"


def test_retry_is_idempotent(cfs: Cfs, tape: Tape) -> None:
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/big.h5", 6000)]
    first = run(cfs, files)
    before = sorted(p.name for p in tape.local(f"{HPSS_DIR}/P1").iterdir())
    second = run(cfs, files)
    assert second == {**first, "sent": 0, "skipped": 2}
    assert sorted(p.name for p in tape.local(f"{HPSS_DIR}/P1").iterdir()) == before


def test_same_size_member_of_another_version_is_not_taken_for_this_one(
    cfs: Cfs, tape: Tape
) -> None:
    """A group that reuses an archive name must not be matched by size alone: the member
    holds version 1, this is version 2; only the archive's .md5 tells them apart."""
    v1 = cfs.write("P1/a.h5", data=b"1" * 100)
    assert run(cfs, [v1])["where"] == [0]
    v2 = cfs.write("P1/a.h5", data=b"2" * 100, version=2)
    result = run(cfs, [v2])
    assert tape_of(result, 0) == f"{HPSS_DIR}/P1/{NAME}_part01.tar"
    assert result["sent"] == 1 and result["skipped"] == 0


def test_archive_without_checksums_is_not_trusted_for_a_skip(cfs: Cfs, tape: Tape) -> None:
    files = [cfs.write("P1/a.h5", 100)]
    run(cfs, files)
    tape.local(BUNDLE + ".md5").unlink()  # e.g. an archive written before checksums
    result = run(cfs, files)
    assert tape_of(result, 0) == f"{HPSS_DIR}/P1/{NAME}_part01.tar"
    assert result["sent"] == 1


def test_new_file_on_retry_goes_to_a_new_part_and_never_overwrites(cfs: Cfs, tape: Tape) -> None:
    a = cfs.write("P1/a.h5", 100)
    first = run(cfs, [a])
    extra = cfs.write("P1/c.h5", 50)
    second = run(cfs, [a, extra])
    assert tape_of(second, 0) == tape_of(first, 0) == BUNDLE
    assert tape_of(second, 1) == f"{HPSS_DIR}/P1/{NAME}_part01.tar"
    assert second["sent"] == 1 and second["skipped"] == 1


def test_bundle_cap_splits_into_parts(cfs: Cfs, tape: Tape) -> None:
    files = [cfs.write(f"P1/s{i}.dat", 400) for i in range(5)]
    result = run(cfs, files, bundle_max_bytes=1000, single_file_threshold_bytes=900)
    assert result["archives"] == [f"{HPSS_DIR}/P1/{NAME}_part{n:02d}.tar" for n in (1, 2, 3)]
    assert result["where"] == [0, 0, 1, 1, 2]
    again = run(cfs, files, bundle_max_bytes=1000, single_file_threshold_bytes=900)
    assert again["sent"] == 0 and again["where"] == result["where"]


def test_over_threshold_file_uses_hsi_cput(cfs: Cfs, tape: Tape) -> None:
    result = run(cfs, [cfs.write("P1/huge.h5", 3000)], single_file_threshold_bytes=2000)
    assert result["where"] == [-1] and result["archives"] == []
    assert tape.local(f"{HPSS_DIR}/P1/huge.h5").stat().st_size == 3000


def test_file_rewritten_while_archived_is_not_recorded(
    cfs: Cfs, tape: Tape, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashed as version 1, rewritten before the send finished: tape may hold other bytes
    than the ones hashed, so the file is not archived and a single's copy moves aside."""
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/b.h5", 100), cfs.write("P1/big.h5", 6000)]
    real_run = hpss_module._Sessions.run

    def run_then_rewrite(self: Any, argv: list[str], cwd: str | None = None) -> Any:
        answer = real_run(self, argv, cwd)
        if "-cvf" in argv or "cput" in argv:
            for rel in ("P1/b.h5", "P1/big.h5"):
                path = cfs.root / rel
                path.write_bytes(path.read_bytes())  # a new write: new mtime/ctime
                os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        return answer

    monkeypatch.setattr(hpss_module._Sessions, "run", run_then_rewrite)
    result = run(cfs, files)
    assert result["where"] == [0, None, None]
    assert result["changed"] == [
        {"i": 1, "reason": "modified_during_archive"},
        {"i": 2, "reason": "modified_during_archive"},
    ]
    assert tape.local(BUNDLE + ".md5").read_text() == f"{files[0]['checksum']}  P1/a.h5\n"
    assert not tape.local(f"{HPSS_DIR}/P1/big.h5").exists()  # moved aside, not deleted
    assert [p.name[:14] for p in tape.local(f"{HPSS_DIR}/P1").glob("big.h5.*")] == [
        "big.h5.stale-2"
    ]


def test_failing_htar_raises_with_stderr(
    cfs: Cfs, tape: Tape, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [cfs.write("P1/a.h5", 100)]
    monkeypatch.setenv("FAKE_HPSS_FAIL", "htar:c")
    with pytest.raises(RuntimeError, match=r"exit code 1.*FAKE_HPSS_FAIL"):
        run(cfs, files)
    monkeypatch.delenv("FAKE_HPSS_FAIL")
    assert run(cfs, files)["sent"] == 1


def test_failing_hsi_cput_raises(cfs: Cfs, tape: Tape, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HPSS_FAIL", "hsi:cput")
    with pytest.raises(RuntimeError, match=r"hsi cput .*exit code 1.*simulated failure"):
        run(cfs, [cfs.write("P1/big.h5", 6000)])


def test_truncated_archive_is_caught_and_retry_repairs(
    cfs: Cfs, tape: Tape, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [cfs.write("P1/a.h5", 1500), cfs.write("P1/b.h5", 1500)]
    monkeypatch.setenv("FAKE_HPSS_TRUNCATE", "1")
    with pytest.raises(RuntimeError, match=r"verification failed .*P1/b\.h5: size differs"):
        run(cfs, files)
    assert not tape.local(BUNDLE + ".md5").exists()  # checksums only after verification
    monkeypatch.delenv("FAKE_HPSS_TRUNCATE")
    result = run(cfs, files)
    # without its .md5 the damaged archive vouches for nothing: both go to a new part
    assert result["archives"] == [f"{HPSS_DIR}/P1/{NAME}_part01.tar"]
    assert result["where"] == [0, 0] and result["sent"] == 2


def test_hang_hits_walltime(cfs: Cfs, tape: Tape, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HPSS_HANG", "30")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="walltime exceeded"):
        run(cfs, [cfs.write("P1/a.h5", 100)], walltime_seconds=1)
    assert time.monotonic() - t0 < 3


def test_session_slots_bound_concurrency(cfs: Cfs, tape: Tape, tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    fd = os.open(lock_dir / "slot-00.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another task holds the only slot
    a = cfs.write("P1/a.h5", 100)
    try:
        with pytest.raises(RuntimeError, match=r"walltime exceeded .*waiting for one of 1"):
            run(cfs, [a], max_sessions=1, walltime_seconds=1)
    finally:
        os.close(fd)
    assert run(cfs, [a], max_sessions=1)["sent"] == 1


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"path": "../etc/passwd"}, "path outside root"),
        ({"path": "/abs/file"}, "path outside root"),
        ({"path": "P1/a.h5@v3"}, "reserved for versioned tape copies"),
        ({"checksum": "MD5:" + md5(b"x")}, "checksum is not 32 lowercase hex"),
        ({"version": 0}, "version 0 is not an integer >= 1"),
        ({"size": -5}, "size -5 is not an integer >= 0"),
    ],
)
def test_malformed_input_raises_before_any_session(
    cfs: Cfs, tape: Tape, entry: dict[str, Any], reason: str
) -> None:
    good = cfs.write("P1/a.h5", 100)
    with pytest.raises(RuntimeError, match=reason):
        run(cfs, [good, {**good, **entry}])
    assert list(tape.root.iterdir()) == []
