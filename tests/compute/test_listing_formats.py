"""The HPSS listing parsers against samples in the documented formats, not only against the
fake tools' own output. Formats and their sources: fixtures/README.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compute_functions.hpss import _UNUSABLE, _parse_hsi_ls, _parse_htar_tvf, _Sessions, hpss_verify

from .conftest import FAKE_HPSS_DIR, Cfs, Tape, item

FIXTURES = Path(__file__).parent / "fixtures"
HSI_SAMPLE = FIXTURES / "hsi_ls_l.stderr.txt"
HTAR_SAMPLE = FIXTURES / "htar_tvf.txt"
SAMPLE_DIR = "/home/a/alsdata/bl402/raw/P1"
SAMPLE_TAR = f"{SAMPLE_DIR}/P1_2024-1_ab12cd.tar"

HSI_REGULAR_FILES = {
    "scan_0001.h5": 1234,
    "scan_0002.h5": 2199023255552,
    "scan_0003.h5@v2": 5678,
    "P1_2024-1_ab12cd.tar": 107374182400,
    "P1_2024-1_ab12cd.tar.idx": 3360,
    "P1_2024-1_ab12cd.tar.md5": 98,
    "scan with spaces.dat": 42,
}


def test_hsi_long_listing_sample_yields_regular_files_only() -> None:
    """Directories and symlinks are not tape copies, not even a link named like a scan."""
    assert _parse_hsi_ls(HSI_SAMPLE.read_text()) == HSI_REGULAR_FILES


def test_htar_listing_sample_yields_regular_members() -> None:
    assert _parse_htar_tvf(HTAR_SAMPLE.read_text()) == {
        "P1/scan_0001.h5": 1234,
        "P1/sub dir/scan 0002.h5": 5678,
        "P1/scan_0003.h5": _UNUSABLE,  # soft-deleted: htar will not extract it
        "P1/scan_0004.h5": 68719476736,
        "/global/cfs/cdirs/als/tmp/HTAR_CF_CHK_48213_1710173999": 256,
    }


def test_a_member_listed_twice_with_different_sizes_is_unusable() -> None:
    line = "HTAR: -rw-r-----  alsdata/als {size} 2024-03-11 09:14  P1/a.h5\n"
    twice = line.format(size=10) + line.format(size=12)
    assert _parse_htar_tvf(twice) == {"P1/a.h5": _UNUSABLE}
    assert _parse_htar_tvf(line.format(size=10) * 2) == {"P1/a.h5": 10}


@pytest.fixture
def recorded_tools(tmp_path: Path, tape: Tape, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-in hsi/htar that answer with the recorded samples: hsi on stderr only, htar
    with the member lines on stdout and its summary on stderr."""
    bin_dir = tmp_path / "recorded"
    bin_dir.mkdir()
    hsi = bin_dir / "hsi"
    hsi.write_text(
        f"#!/usr/bin/env python3\nimport sys\nsys.stderr.write(open({str(HSI_SAMPLE)!r}).read())\n"
    )
    htar = bin_dir / "htar"
    htar.write_text(
        "#!/usr/bin/env python3\nimport sys\n"
        f"lines = open({str(HTAR_SAMPLE)!r}).read().splitlines(keepends=True)\n"
        "sys.stdout.write(''.join(lines[:-2]))\nsys.stderr.write(''.join(lines[-2:]))\n"
    )
    hsi.chmod(0o755)
    htar.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_sessions_read_the_hsi_listing_from_stderr(recorded_tools: Path) -> None:
    assert _Sessions(1, 30).hsi_list(SAMPLE_DIR) == HSI_REGULAR_FILES


def test_hpss_verify_against_the_recorded_listings(cfs: Cfs, recorded_tools: Path) -> None:
    """End to end: tape state from the recorded samples, CFS files written here."""
    files = [
        {**cfs.write("P1/scan_0001.h5", 1234), "archive": -1},
        {**cfs.write("P1/scan_0003.h5", 5678, version=2), "archive": -1},  # at ...@v2
        {**cfs.write("P1/sub dir/scan 0002.h5", 5678), "archive": 0},
        {**item("P1/scan_0003.h5", b"d" * 4321), "archive": 0},  # soft-deleted member
        {**cfs.write("P1/scan_0004.h5", 100), "archive": -1},  # tape has only a symlink
        {**item("P1/scan_0001.h5", b"x" * 1234), "archive": 0},  # right size, other bytes
    ]
    result = hpss_verify(
        target_root=str(cfs.root),
        safe_root="/home/a/alsdata/bl402/raw",
        files=files,
        archives=[SAMPLE_TAR],
    )
    assert result["safe"] == [0, 1, 2]
    assert {k["i"]: k["reason"] for k in result["kept"]} == {
        3: "not_on_tape",
        4: "not_on_tape",
        5: "target_changed",
    }


def test_fake_hsi_writes_its_listing_to_stderr(tape: Tape) -> None:
    directory = tape.local("/home/a/alsdata/bl402/raw/P1")
    directory.mkdir(parents=True)
    (directory / "new.h5").write_bytes(b"n" * 10)
    (directory / "old.h5").write_bytes(b"o" * 20)
    os.utime(directory / "old.h5", (1546300800, 1546300800))  # 2019: listed with its year
    (directory / "sub").mkdir()
    (directory / "link.h5").symlink_to("new.h5")
    proc = subprocess.run(
        [sys.executable, str(FAKE_HPSS_DIR / "hsi"), "-q", "ls", "-l", SAMPLE_DIR],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{SAMPLE_DIR}:"
    assert any(line.startswith("l") and line.endswith("link.h5 -> new.h5") for line in lines)
    assert any(" 2019 old.h5" in line for line in lines)
    assert _parse_hsi_ls(proc.stderr) == {"new.h5": 10, "old.h5": 20}
