"""hpss_verify and cfs_verify: pass only when every safe copy is there with its size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compute_functions.cfs import cfs_verify
from compute_functions.hpss import hpss_archive, hpss_verify

from .conftest import HPSS_DIR, Cfs, Tape, archive_options

TARGET = "/global/cfs/cdirs/als/4.0.2/raw"


@pytest.fixture
def archived(cfs: Cfs, tape: Tape) -> list[dict[str, Any]]:
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/sub/b.txt", 50), cfs.write("P1/big.h5", 6000)]
    hpss_archive(
        beamline="bl402",
        cfs_root=str(cfs.root),
        files=files,
        hpss_dir=HPSS_DIR,
        archive_name="P1_x",
        options=archive_options(),
    )
    return files


def test_hpss_verify_passes_for_members_and_single_files(archived: list[dict[str, Any]]) -> None:
    result = hpss_verify(target_root=TARGET, safe_root=HPSS_DIR, files=archived)
    assert result == {
        "all_verified": True,
        "verified": 3,
        "delete": [{"path": f"{TARGET}/{f['path']}"} for f in archived],
    }
    assert hpss_verify(target_root=TARGET, safe_root=HPSS_DIR, files=archived) == result


def test_hpss_verify_missing_and_size_differs(archived: list[dict[str, Any]]) -> None:
    files = [
        {"path": "P1/a.h5", "size": 101},
        {"path": "P1/big.h5", "size": 1},
        {"path": "P1/never.h5", "size": 5},
        {"path": "P2/other.h5", "size": 5},
    ]
    with pytest.raises(RuntimeError) as info:
        hpss_verify(target_root=TARGET, safe_root=HPSS_DIR, files=files)
    text = str(info.value)
    assert "4 of 4 file(s) not verified" in text
    assert "P1/a.h5: size differs (tape 100, expected 101)" in text
    assert "P1/big.h5: size differs (tape 6000, expected 1)" in text
    assert "P1/never.h5: missing" in text and "P2/other.h5: missing" in text


def test_hpss_verify_sees_a_truncated_member(
    cfs: Cfs, tape: Tape, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [cfs.write("P1/a.h5", 1500), cfs.write("P1/b.h5", 1500)]
    monkeypatch.setenv("FAKE_HPSS_TRUNCATE", "1")
    with pytest.raises(RuntimeError):
        hpss_archive(
            beamline="bl402",
            cfs_root=str(cfs.root),
            files=files,
            hpss_dir=HPSS_DIR,
            archive_name="P1_x",
            options=archive_options(),
        )
    monkeypatch.delenv("FAKE_HPSS_TRUNCATE")
    with pytest.raises(RuntimeError, match=r"1 of 2 .*P1/b\.h5: size differs"):
        hpss_verify(target_root=TARGET, safe_root=HPSS_DIR, files=files)


@pytest.mark.parametrize("path", ["../P1/a.h5", "P1/../../etc/passwd", "/etc/passwd", "", "."])
@pytest.mark.parametrize("verify", ["hpss", "cfs"])
def test_verifiers_refuse_paths_leaving_the_root(path: str, verify: str, tmp_path: Path) -> None:
    func = hpss_verify if verify == "hpss" else cfs_verify
    safe = HPSS_DIR if verify == "hpss" else str(tmp_path)
    with pytest.raises(RuntimeError, match="outside root"):
        func(target_root=TARGET, safe_root=safe, files=[{"path": path, "size": 1}])


def test_hpss_verify_hang_hits_walltime(
    archived: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HPSS_HANG", "30")
    with pytest.raises(RuntimeError, match="walltime exceeded"):
        hpss_verify(target_root=TARGET, safe_root=HPSS_DIR, files=archived, walltime_seconds=1)


def test_hpss_verify_listing_failure_raises(
    archived: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HPSS_FAIL", "hsi:ls")
    with pytest.raises(RuntimeError, match=r"hsi ls -l .*exit code 1"):
        hpss_verify(target_root=TARGET, safe_root=HPSS_DIR, files=archived)


def test_cfs_verify_passes_and_is_repeatable(cfs: Cfs) -> None:
    files = [cfs.write("P1/a.h5", 10), cfs.write("P1/deep/b.h5", 20)]
    result = cfs_verify(target_root="/data/bl402/", safe_root=str(cfs.root), files=files)
    assert result == {
        "all_verified": True,
        "verified": 2,
        "delete": [{"path": "/data/bl402/P1/a.h5"}, {"path": "/data/bl402/P1/deep/b.h5"}],
    }
    assert cfs_verify(target_root="/data/bl402", safe_root=str(cfs.root), files=files) == result


def test_cfs_verify_reasons(cfs: Cfs, tmp_path: Path) -> None:
    cfs.write("P1/a.h5", 10)
    (cfs.root / "P1" / "dir.h5").mkdir()
    outside = tmp_path / "elsewhere.h5"
    outside.write_bytes(b"y" * 10)
    (cfs.root / "P1" / "escape.h5").symlink_to(outside)
    files = [
        {"path": "P1/a.h5", "size": 11},
        {"path": "P1/gone.h5", "size": 1},
        {"path": "P1/dir.h5", "size": 1},
        {"path": "P1/escape.h5", "size": 10},
    ]
    with pytest.raises(RuntimeError) as info:
        cfs_verify(target_root="/data/bl402", safe_root=str(cfs.root), files=files)
    text = str(info.value)
    assert "4 of 4" in text
    assert "P1/a.h5: size differs (safe copy 10, expected 11)" in text
    assert "P1/gone.h5: missing" in text
    assert "P1/dir.h5: not a regular file" in text
    assert "P1/escape.h5: outside root" in text


def test_unverified_list_is_capped_at_twenty(cfs: Cfs) -> None:
    files = [{"path": f"P1/f{i:02d}.h5", "size": 1} for i in range(25)]
    with pytest.raises(RuntimeError) as info:
        cfs_verify(target_root="/data", safe_root=str(cfs.root), files=files)
    text = str(info.value)
    assert "25 of 25" in text and "P1/f19.h5" in text and "P1/f20.h5" not in text
    assert "and 5 more" in text
