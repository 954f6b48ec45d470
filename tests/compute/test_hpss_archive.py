"""hpss_archive against the fake hsi/htar: bundling, splitting, idempotency, failures."""

from __future__ import annotations

import fcntl
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from compute_functions.hpss import hpss_archive

from .conftest import HPSS_DIR, Cfs, Tape, archive_options


def run(
    cfs: Cfs, files: list[dict[str, Any]], name: str = "P1_2026-11-25_ab12cd", **opts: int
) -> Any:
    return hpss_archive(
        beamline="bl402",
        proposal="P1",
        cfs_root=str(cfs.root),
        files=files,
        hpss_dir=HPSS_DIR,
        archive_name=name,
        options=archive_options(**opts),
    )


def by_path(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["path"]: m for m in result["manifest"]}


def test_bundles_small_files_and_sends_large_one_alone(cfs: Cfs, tape: Tape) -> None:
    files = [
        cfs.write("P1/a.h5", 100),
        cfs.write("P1/sub/b.txt", 200),
        cfs.write("P1/big.h5", 6000),
    ]
    result = run(cfs, files)

    m = by_path(result)
    bundle = f"{HPSS_DIR}/P1/P1_2026-11-25_ab12cd.tar"
    assert m["P1/a.h5"] == {
        "path": "P1/a.h5",
        "cfs_path": f"{cfs.root}/P1/a.h5",
        "size": 100,
        "tape_path": bundle,
        "member": "P1/a.h5",
    }
    assert m["P1/sub/b.txt"]["tape_path"] == bundle
    assert m["P1/big.h5"]["tape_path"] == f"{HPSS_DIR}/P1/big.h5"
    assert m["P1/big.h5"]["member"] is None
    assert result["sent"] == 3 and result["skipped"] == 0
    assert result["archives"] == [{"tape_path": bundle, "members": 2, "bytes": 300, "new": True}]

    # the archive is a real tar whose members are relative to cfs_root
    with tarfile.open(tape.local(bundle)) as tar:
        names = tar.getnames()
    assert "P1/a.h5" in names and "P1/sub/b.txt" in names
    assert tape.local(bundle + ".idx").exists()
    assert tape.local(f"{HPSS_DIR}/P1/big.h5").read_bytes() == (cfs.root / "P1/big.h5").read_bytes()


def test_retry_is_idempotent(cfs: Cfs, tape: Tape) -> None:
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/big.h5", 6000)]
    first = run(cfs, files)
    before = sorted(p.name for p in tape.local(f"{HPSS_DIR}/P1").iterdir())
    second = run(cfs, files)
    assert second["sent"] == 0 and second["skipped"] == 2
    assert second["manifest"] == first["manifest"]
    assert second["archives"][0]["new"] is False
    assert sorted(p.name for p in tape.local(f"{HPSS_DIR}/P1").iterdir()) == before


def test_new_file_on_retry_goes_to_a_new_part_and_never_overwrites(cfs: Cfs, tape: Tape) -> None:
    first = run(cfs, [cfs.write("P1/a.h5", 100)])
    extra = cfs.write("P1/c.h5", 50)
    second = run(cfs, [{"path": "P1/a.h5", "size": 100}, extra])
    m = by_path(second)
    assert m["P1/a.h5"] == by_path(first)["P1/a.h5"]
    assert m["P1/c.h5"]["tape_path"] == f"{HPSS_DIR}/P1/P1_2026-11-25_ab12cd_part01.tar"
    assert second["sent"] == 1 and second["skipped"] == 1


def test_bundle_cap_splits_into_parts(cfs: Cfs, tape: Tape) -> None:
    files = [cfs.write(f"P1/s{i}.dat", 400) for i in range(5)]
    result = run(cfs, files, bundle_max_bytes=1000, single_file_threshold_bytes=900)
    parts = sorted({m["tape_path"] for m in result["manifest"]})
    assert parts == [f"{HPSS_DIR}/P1/P1_2026-11-25_ab12cd_part{n:02d}.tar" for n in (1, 2, 3)]
    assert [a["bytes"] for a in result["archives"]] == [800, 800, 400]
    again = run(cfs, files, bundle_max_bytes=1000, single_file_threshold_bytes=900)
    assert again["sent"] == 0 and again["manifest"] == result["manifest"]


def test_over_threshold_file_uses_hsi_cput(cfs: Cfs, tape: Tape) -> None:
    result = run(cfs, [cfs.write("P1/huge.h5", 3000)], single_file_threshold_bytes=2000)
    assert result["manifest"][0]["tape_path"] == f"{HPSS_DIR}/P1/huge.h5"
    assert result["archives"] == []
    assert tape.local(f"{HPSS_DIR}/P1/huge.h5").stat().st_size == 3000


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
    monkeypatch.delenv("FAKE_HPSS_TRUNCATE")
    result = run(cfs, files)
    m = by_path(result)
    assert m["P1/a.h5"]["tape_path"].endswith("P1_2026-11-25_ab12cd.tar")  # intact member
    assert m["P1/b.h5"]["tape_path"].endswith("P1_2026-11-25_ab12cd_part01.tar")
    assert result["sent"] == 1 and result["skipped"] == 1


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
    try:
        with pytest.raises(RuntimeError, match=r"walltime exceeded .*waiting for one of 1"):
            run(cfs, [cfs.write("P1/a.h5", 100)], max_sessions=1, walltime_seconds=1)
    finally:
        os.close(fd)
    assert run(cfs, [{"path": "P1/a.h5", "size": 100}], max_sessions=1)["sent"] == 1


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"path": "../etc/passwd", "size": 1}, "not a safe relative path"),
        ({"path": "/abs/file", "size": 1}, "not a safe relative path"),
        ({"path": "P1/missing.h5", "size": 1}, "missing on CFS"),
        ({"path": "P1/a.h5", "size": 99}, "size differs"),
    ],
)
def test_bad_inputs_raise_before_any_session(
    cfs: Cfs, tape: Tape, entry: dict[str, Any], reason: str
) -> None:
    cfs.write("P1/a.h5", 100)
    with pytest.raises(RuntimeError, match=reason):
        run(cfs, [entry])
    assert list(tape.root.iterdir()) == []


def test_symlink_leaving_cfs_root_is_refused(cfs: Cfs, tape: Tape, tmp_path: Path) -> None:
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"x" * 10)
    (cfs.root / "P1").mkdir()
    (cfs.root / "P1" / "link.h5").symlink_to(outside)
    with pytest.raises(RuntimeError, match="outside cfs_root"):
        run(cfs, [{"path": "P1/link.h5", "size": 10}])
