"""cfs_verify and hpss_verify: a file is safe to delete only when its copy is proven by content.

Issue 13, "tests that would catch a wrong deletion": every test here asserts the exact
verdict (safe index or kept reason), so a verifier that keeps a file for the wrong reason
fails as surely as one that deletes it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import compute_functions.cfs as cfs_module
import compute_functions.hpss as hpss_module
from compute_functions.cfs import cfs_verify
from compute_functions.hpss import hpss_archive, hpss_verify

from .conftest import HPSS_DIR, Cfs, Tape, archive_options, item, md5

DTN_ROOT = "/data/bl402"  # the compute-dtn root: not visible where cfs_verify runs


def verify_cfs(cfs: Cfs, files: list[dict[str, Any]]) -> dict[str, Any]:
    return cfs_verify(target_root=DTN_ROOT, safe_root=str(cfs.root), files=files)


def archive(cfs: Cfs, files: list[dict[str, Any]], name: str = "P1_x") -> dict[str, Any]:
    return hpss_archive(
        beamline="bl402",
        cfs_root=str(cfs.root),
        files=files,
        hpss_dir=HPSS_DIR,
        archive_name=name,
        options=archive_options(),
    )


def prune_items(files: list[dict[str, Any]], result: dict[str, Any]) -> list[dict[str, Any]]:
    """The CFS prune's file items: each archived file with hpss_archive's `where`."""
    return [{**f, "archive": result["where"][i]} for i, f in enumerate(files)]


def verify_tape(
    cfs: Cfs, files: list[dict[str, Any]], archives: list[str], **kw: Any
) -> dict[str, Any]:
    return hpss_verify(
        target_root=str(cfs.root), safe_root=HPSS_DIR, files=files, archives=archives, **kw
    )


def kept(result: dict[str, Any]) -> dict[int, str]:
    return {k["i"]: k["reason"] for k in result["kept"]}


# --- cfs_verify: the CFS copy, proven by size and MD5 ------------------------------------------
def test_cfs_verify_returns_compact_indices_and_ignores_extra_keys(cfs: Cfs) -> None:
    files = [
        {**cfs.write("P1/a.h5", 10), "mtime": 1764000000.5},
        {**cfs.write("P1/deep/b.h5", 20), "note": "extra keys are ignored"},
    ]
    result = verify_cfs(cfs, files)
    assert result == {"algorithm": "md5", "checked": 2, "safe": [0, 1], "kept": []}
    assert verify_cfs(cfs, files) == result


def test_cfs_larger_safe_copy_is_kept(cfs: Cfs) -> None:
    """A copy that begins with every expected byte but is longer is not a copy."""
    data = b"scan-bytes" * 10
    cfs.write("P1/a.h5", data=data + b"tail")
    result = verify_cfs(cfs, [item("P1/a.h5", data)])
    assert result["safe"] == []
    assert result["kept"] == [
        {"i": 0, "reason": "size_differs", "detail": "104 bytes, expected 100"}
    ]


def test_cfs_smaller_safe_copy_is_kept(cfs: Cfs) -> None:
    data = b"scan-bytes" * 10
    cfs.write("P1/a.h5", data=data[:-1])
    result = verify_cfs(cfs, [item("P1/a.h5", data)])
    assert result["safe"] == [] and kept(result) == {0: "size_differs"}


def test_cfs_same_size_other_content_is_kept(cfs: Cfs) -> None:
    cfs.write("P1/a.h5", data=b"b" * 64)
    wanted = item("P1/a.h5", b"a" * 64)
    result = verify_cfs(cfs, [wanted])
    assert result["safe"] == []
    assert result["kept"] == [
        {
            "i": 0,
            "reason": "checksum_differs",
            "detail": f"md5 {md5(b'b' * 64)}, expected {wanted['checksum']}",
        }
    ]


def test_cfs_sibling_sharing_the_root_prefix_is_outside(cfs: Cfs) -> None:
    """`raw_old` next to `raw` starts with the same characters but is not inside `raw`."""
    sibling = cfs.root.parent / (cfs.root.name + "_old")
    (sibling / "P1").mkdir(parents=True)
    data = b"identical bytes in the sibling"
    (sibling / "P1" / "a.h5").write_bytes(data)
    (sibling / "b.h5").write_bytes(data)
    (cfs.root / "P1").symlink_to(sibling / "P1", target_is_directory=True)  # directory link
    (cfs.root / "P2").mkdir()
    (cfs.root / "P2" / "b.h5").symlink_to(sibling / "b.h5")  # final-component link
    result = verify_cfs(cfs, [item("P1/a.h5", data), item("P2/b.h5", data)])
    assert result["safe"] == []
    assert kept(result) == {0: "outside_root", 1: "outside_root"}
    assert str(sibling) in result["kept"][0]["detail"]


def test_cfs_directory_symlinks_count_only_where_they_resolve(cfs: Cfs, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = b"same bytes everywhere"
    (elsewhere / "a.h5").write_bytes(data)
    (cfs.root / "out").symlink_to(elsewhere, target_is_directory=True)
    cfs.write("P1/real/a.h5", data=data)
    (cfs.root / "P1" / "alias").symlink_to(cfs.root / "P1" / "real", target_is_directory=True)
    result = verify_cfs(cfs, [item("out/a.h5", data), item("P1/alias/a.h5", data)])
    assert result["safe"] == [1]  # resolves inside the root: the bytes are on CFS
    assert kept(result) == {0: "outside_root"}


def test_cfs_symlink_as_final_component(cfs: Cfs, tmp_path: Path) -> None:
    data = b"content of the scan"
    outside = tmp_path / "outside.h5"
    outside.write_bytes(data)
    cfs.write("P1/target.h5", data=data)
    (cfs.root / "P1" / "to_outside.h5").symlink_to(outside)
    (cfs.root / "P1" / "to_inside.h5").symlink_to(cfs.root / "P1" / "target.h5")
    (cfs.root / "P1" / "dangling.h5").symlink_to(cfs.root / "P1" / "nothing.h5")
    result = verify_cfs(
        cfs,
        [
            item("P1/to_outside.h5", data),
            item("P1/to_inside.h5", data),
            item("P1/dangling.h5", data),
        ],
    )
    assert result["safe"] == [1]
    assert kept(result) == {0: "outside_root", 2: "missing"}


def test_cfs_link_appearing_after_resolution_is_never_followed(
    cfs: Cfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink swapped in between realpath() and open() (simulated: realpath that does
    not resolve) must not redirect the read, even to identical bytes."""
    data = b"identical bytes outside"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.h5").write_bytes(data)
    (cfs.root / "P1").mkdir()
    (cfs.root / "P1" / "a.h5").symlink_to(outside / "a.h5")
    (cfs.root / "P2").symlink_to(outside, target_is_directory=True)
    monkeypatch.setattr(os.path, "realpath", lambda p, **_: os.path.abspath(p))
    result = verify_cfs(cfs, [item("P1/a.h5", data), item("P2/a.h5", data)])
    assert result["safe"] == []
    assert kept(result) == {0: "not_regular", 1: "outside_root"}


def test_cfs_missing_directory_and_fifo_are_kept(cfs: Cfs) -> None:
    (cfs.root / "P1" / "dir.h5").mkdir(parents=True)
    os.mkfifo(cfs.root / "P1" / "fifo.h5")  # opening it for reading would block
    result = verify_cfs(
        cfs, [item("P1/gone.h5", b"x"), item("P1/dir.h5", b"x"), item("P1/fifo.h5", b"x")]
    )
    assert result["safe"] == []
    assert kept(result) == {0: "missing", 1: "not_regular", 2: "not_regular"}
    assert result["kept"][2]["detail"] == "is a FIFO, not a regular file"


def test_cfs_read_error_keeps_the_file(cfs: Cfs, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"on a failing disk"
    cfs.write("P1/a.h5", data=data)

    def failing_read(fd: int) -> tuple[str, int]:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cfs_module, "_md5", failing_read)
    result = verify_cfs(cfs, [item("P1/a.h5", data)])
    assert result["kept"] == [
        {"i": 0, "reason": "unreadable", "detail": "read failed: Input/output error"}
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_cfs_unreadable_copy_is_kept(cfs: Cfs) -> None:
    data = b"locked"
    cfs.write("P1/a.h5", data=data)
    (cfs.root / "P1" / "a.h5").chmod(0)
    try:
        result = verify_cfs(cfs, [item("P1/a.h5", data)])
    finally:
        (cfs.root / "P1" / "a.h5").chmod(0o644)
    assert result["safe"] == [] and kept(result) == {0: "unreadable"}


def test_cfs_every_file_gets_exactly_one_verdict(cfs: Cfs) -> None:
    files = [cfs.write(f"P1/f{i:02d}.h5", 5 + i) for i in range(30)]
    files[7] = item("P1/f07.h5", b"other content")
    files[21] = item("P1/none.h5", b"x")
    result = verify_cfs(cfs, files)
    assert result["checked"] == 30
    assert kept(result) == {7: "size_differs", 21: "missing"}
    assert sorted(result["safe"] + list(kept(result))) == list(range(30))


# --- batch refusals: raise, check nothing --------------------------------------------------
@pytest.fixture
def nothing_checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if either verifier looks at a single file or HPSS."""
    calls: list[str] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        calls.append(repr(args))
        raise AssertionError("a file was checked although the batch was refused")

    monkeypatch.setattr(cfs_module, "_local_copy", forbidden)
    monkeypatch.setattr(hpss_module, "_local_copy", forbidden)
    monkeypatch.setattr(hpss_module._Sessions, "run", forbidden)
    return calls


def run_verifier(verify: str, target: str, safe: str, files: Any, archives: Any = None) -> Any:
    if verify == "cfs":
        return cfs_verify(target_root=target, safe_root=safe, files=files)
    return hpss_verify(target_root=target, safe_root=safe, files=files, archives=archives or [])


VERIFIERS = ["cfs", "hpss"]


@pytest.mark.parametrize("verify", VERIFIERS)
@pytest.mark.parametrize(
    ("target", "safe", "message"),
    [
        ("data/bl402", "/cfs/raw", "target_root must be an absolute path"),
        ("/data/bl402", "/cfs/../raw", "safe_root must be an absolute path without '..'"),
        ("/cfs/raw", "/cfs/raw", "overlap"),
        ("/cfs/raw/", "/cfs/raw", "overlap"),
        ("/cfs/raw/P1", "/cfs/raw", "overlap"),
        ("/cfs", "/cfs/raw", "overlap"),
    ],
)
def test_verifiers_refuse_bad_or_overlapping_roots(
    verify: str, target: str, safe: str, message: str, nothing_checked: list[str]
) -> None:
    with pytest.raises(RuntimeError, match=message):
        run_verifier(verify, target, safe, [item("P1/a.h5", b"x")])
    assert nothing_checked == []


@pytest.mark.parametrize("verify", VERIFIERS)
def test_verifiers_refuse_roots_overlapping_through_a_symlink(
    verify: str, tmp_path: Path, nothing_checked: list[str]
) -> None:
    real = tmp_path / "cfs" / "raw"
    (real / "P1").mkdir(parents=True)
    alias = tmp_path / "alias"
    alias.symlink_to(real / "P1", target_is_directory=True)  # lexically apart, really inside
    with pytest.raises(RuntimeError, match=r"overlap \(.*/cfs/raw/P1 vs .*/cfs/raw\)"):
        run_verifier(verify, str(alias), str(real), [item("P1/a.h5", b"x")])
    assert nothing_checked == []


def test_sibling_roots_sharing_a_prefix_do_not_overlap(cfs: Cfs) -> None:
    sibling = str(cfs.root) + "_old"  # the compute-dtn root may be named anything
    files = [cfs.write("P1/a.h5", 10)]
    result = cfs_verify(target_root=sibling, safe_root=str(cfs.root), files=files)
    assert result["safe"] == [0]


GOOD = {"path": "P1/a.h5", "size": 1, "checksum": md5(b"x"), "version": 1}


@pytest.mark.parametrize("verify", VERIFIERS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"path": "/etc/passwd"}, "path outside root"),
        ({"path": "../P1/a.h5"}, "path outside root"),
        ({"path": "P1/../../etc/passwd"}, "path outside root"),
        ({"path": ""}, "path outside root"),
        ({"path": "."}, "path outside root"),
        ({"path": "P1/a\x00.h5"}, "path outside root"),
        ({"path": "P1/a\n.h5"}, "path outside root"),
        ({"path": None}, "path outside root"),
        ({"size": -1}, "size -1 is not an integer >= 0"),
        ({"size": "1"}, "size '1' is not an integer >= 0"),
        ({"size": True}, "size True is not an integer >= 0"),
        ({"size": 1.0}, "size 1.0 is not an integer >= 0"),
        ({"checksum": md5(b"x").upper()}, "checksum is not 32 lowercase hex"),
        ({"checksum": md5(b"x")[:31]}, "checksum is not 32 lowercase hex"),
        ({"checksum": None}, "checksum is not 32 lowercase hex"),
        ({"version": 0}, "version 0 is not an integer >= 1"),
        ({"version": True}, "version True is not an integer >= 1"),
        ({"version": "2"}, "version '2' is not an integer >= 1"),
    ],
)
def test_verifiers_refuse_a_batch_with_one_malformed_item(
    verify: str, bad: dict[str, Any], message: str, tmp_path: Path, nothing_checked: list[str]
) -> None:
    safe = HPSS_DIR if verify == "hpss" else str(tmp_path)
    target = str(tmp_path) if verify == "hpss" else DTN_ROOT
    files = [dict(GOOD), {**GOOD, **bad}, dict(GOOD)]
    with pytest.raises(
        RuntimeError, match=r"^1 of 3 file\(s\) refused \(nothing was checked\): #1 "
    ):
        run_verifier(verify, target, safe, files)
    with pytest.raises(RuntimeError, match=message):
        run_verifier(verify, target, safe, files)
    assert nothing_checked == []


@pytest.mark.parametrize("verify", VERIFIERS)
def test_verifiers_refuse_an_empty_batch(verify: str, tmp_path: Path) -> None:
    safe = HPSS_DIR if verify == "hpss" else str(tmp_path)
    target = str(tmp_path) if verify == "hpss" else DTN_ROOT
    with pytest.raises(RuntimeError, match="files is empty"):
        run_verifier(verify, target, safe, [])


def test_refusal_names_the_first_twenty_and_counts_the_rest(cfs: Cfs) -> None:
    files = [{**GOOD, "path": f"/abs/f{i:02d}.h5"} for i in range(25)]
    with pytest.raises(RuntimeError, match="refused") as info:
        verify_cfs(cfs, files)
    text = str(info.value)
    assert text.startswith("25 of 25 file(s) refused (nothing was checked): #0 '/abs/f00.h5'")
    assert "#19 '/abs/f19.h5'" in text and "f20.h5" not in text
    assert text.endswith("; ... and 5 more")


def test_hpss_verify_refuses_names_reserved_for_versions(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"#0 'P1/a.h5@v2': name ends in '@v<n>'"):
        hpss_verify(
            target_root=str(tmp_path),
            safe_root=HPSS_DIR,
            files=[{**GOOD, "path": "P1/a.h5@v2", "archive": -1}],
            archives=[],
        )


@pytest.mark.parametrize(
    ("archives", "archive", "message"),
    [
        ([HPSS_DIR + "_old/P1/x.tar"], 0, "not inside safe_root"),
        (["/elsewhere/P1/x.tar"], 0, "not inside safe_root"),
        ([HPSS_DIR + "/../P1/x.tar"], 0, "not inside safe_root"),
        ([HPSS_DIR], 0, "not inside safe_root"),
        ([HPSS_DIR + "/P1/x.tar"], 1, "archive 1 is neither -1 nor an index"),
        ([HPSS_DIR + "/P1/x.tar"], -2, "archive -2 is neither -1 nor an index"),
        ([HPSS_DIR + "/P1/x.tar"], None, "archive None is neither -1 nor an index"),
    ],
)
def test_hpss_verify_refuses_archives_it_may_not_trust(
    archives: list[str], archive: Any, message: str, tmp_path: Path, nothing_checked: list[str]
) -> None:
    with pytest.raises(RuntimeError, match=message):
        hpss_verify(
            target_root=str(tmp_path),
            safe_root=HPSS_DIR,
            files=[{**GOOD, "archive": archive}],
            archives=archives,
        )
    assert nothing_checked == []


# --- hpss_verify: tape copy by exact size AND the CFS file by content --------------------------
@pytest.fixture
def archived(cfs: Cfs, tape: Tape) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/sub/b.txt", 50), cfs.write("P1/big.h5", 6000)]
    result = archive(cfs, files)
    assert result["where"] == [0, 0, -1]  # two members of one bundle, one single
    return files, result


def test_hpss_verify_members_and_singles(
    cfs: Cfs, archived: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    files, result = archived
    items = [{**f, "mtime": 1.5} for f in prune_items(files, result)]
    verdict = verify_tape(cfs, items, result["archives"])
    assert verdict == {"algorithm": "md5", "checked": 3, "safe": [0, 1, 2], "kept": []}
    assert verify_tape(cfs, items, result["archives"]) == verdict


def test_hpss_single_tape_copy_larger_than_the_file_is_kept(
    cfs: Cfs, tape: Tape, archived: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    files, result = archived
    single = tape.local(f"{HPSS_DIR}/P1/big.h5")
    single.write_bytes(single.read_bytes() + b"+")  # CFS file untouched: only tape differs
    verdict = verify_tape(cfs, prune_items(files, result), result["archives"])
    assert verdict["safe"] == [0, 1]
    assert verdict["kept"] == [
        {"i": 2, "reason": "tape_size_differs", "detail": "tape 6001 bytes, expected 6000"}
    ]


def test_hpss_member_larger_than_the_file_is_kept(cfs: Cfs, tape: Tape) -> None:
    bigger = cfs.write("P1/a.h5", data=b"a" * 120)
    first = archive(cfs, [bigger], name="P1_first")
    now = cfs.write("P1/a.h5", data=b"a" * 100)  # the CFS file as the prune sees it
    verdict = verify_tape(cfs, [{**now, "archive": 0}], first["archives"])
    assert verdict["safe"] == []
    assert verdict["kept"] == [
        {"i": 0, "reason": "tape_size_differs", "detail": "tape 120 bytes, expected 100"}
    ]


def test_hpss_truncated_member_is_kept(
    cfs: Cfs, tape: Tape, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [cfs.write("P1/a.h5", 1500), cfs.write("P1/b.h5", 1500)]
    monkeypatch.setenv("FAKE_HPSS_TRUNCATE", "1")
    with pytest.raises(RuntimeError, match=r"verification failed .*P1/b\.h5: size differs"):
        archive(cfs, files)
    monkeypatch.delenv("FAKE_HPSS_TRUNCATE")
    tar = f"{HPSS_DIR}/P1/P1_x.tar"
    verdict = verify_tape(cfs, [{**f, "archive": 0} for f in files], [tar])
    assert verdict["safe"] == [0] and kept(verdict) == {1: "tape_size_differs"}


def test_hpss_nothing_on_tape_is_kept(
    cfs: Cfs, archived: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    _, result = archived
    extra = cfs.write("P1/later.h5", 10)
    other = cfs.write("P2/c.h5", 10)
    items = [
        {**extra, "archive": -1},  # never sent as a single
        {**extra, "archive": 0},  # not a member of the archive
        {**other, "archive": 1},  # an archive that does not exist
        {**other, "archive": -1},  # a directory that does not exist
    ]
    archives = [*result["archives"], f"{HPSS_DIR}/P2/none.tar"]
    verdict = verify_tape(cfs, items, archives)
    assert verdict["safe"] == []
    assert kept(verdict) == {0: "not_on_tape", 1: "not_on_tape", 2: "not_on_tape", 3: "not_on_tape"}
    assert verdict["kept"][0]["detail"] == f"nothing at {HPSS_DIR}/P1/later.h5"


def test_hpss_cfs_file_replaced_since_archiving_is_kept(
    cfs: Cfs, archived: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    files, result = archived
    cfs.write("P1/a.h5", data=b"z" * 100)  # same size, new content
    cfs.write("P1/sub/b.txt", data=b"z" * 51)
    (cfs.root / "P1" / "big.h5").unlink()
    verdict = verify_tape(cfs, prune_items(files, result), result["archives"])
    assert verdict["safe"] == []
    assert kept(verdict) == {0: "target_changed", 1: "target_changed", 2: "target_missing"}


def test_hpss_v1_tape_copy_never_vouches_for_v2(cfs: Cfs, tape: Tape) -> None:
    """Same path, same size, different content: tape keeps both, each under its own name."""
    v1 = cfs.write("P1/big.h5", data=b"1" * 6000)
    assert archive(cfs, [v1])["where"] == [-1]
    v2 = cfs.write("P1/big.h5", data=b"2" * 6000, version=2)  # CFS now holds version 2
    items = [{**v1, "archive": -1}, {**v2, "archive": -1}]

    verdict = verify_tape(cfs, items, [])
    assert verdict["safe"] == []  # v2 is not on tape yet; v1 is no longer on CFS
    assert kept(verdict) == {0: "target_changed", 1: "not_on_tape"}
    assert verdict["kept"][1]["detail"] == f"nothing at {HPSS_DIR}/P1/big.h5@v2"

    assert archive(cfs, [v2])["where"] == [-1]
    verdict = verify_tape(cfs, items, [])
    assert verdict["safe"] == [1] and kept(verdict) == {0: "target_changed"}
    assert tape.local(f"{HPSS_DIR}/P1/big.h5").read_bytes() == b"1" * 6000  # history kept
    assert tape.local(f"{HPSS_DIR}/P1/big.h5@v2").read_bytes() == b"2" * 6000


def test_hpss_directory_symlink_in_target_root_is_outside(
    cfs: Cfs, tmp_path: Path, archived: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    """The tape copy is fine and the bytes are identical, but the file the flow would
    delete now lives outside the CFS root."""
    files, result = archived
    moved = tmp_path / "moved"
    (cfs.root / "P1").rename(moved)
    (cfs.root / "P1").symlink_to(moved, target_is_directory=True)
    verdict = verify_tape(cfs, prune_items(files, result), result["archives"])
    assert verdict["safe"] == []
    assert kept(verdict) == {0: "outside_root", 1: "outside_root", 2: "outside_root"}


def test_hpss_final_symlink_in_target_root_pointing_outside_is_kept(
    cfs: Cfs, tmp_path: Path, archived: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    files, result = archived
    outside = tmp_path / "big.h5"
    (cfs.root / "P1" / "big.h5").rename(outside)
    (cfs.root / "P1" / "big.h5").symlink_to(outside)
    verdict = verify_tape(cfs, prune_items(files, result), result["archives"])
    assert verdict["safe"] == [0, 1] and kept(verdict) == {2: "outside_root"}


def test_hpss_verify_hang_hits_walltime(
    cfs: Cfs,
    archived: tuple[list[dict[str, Any]], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files, result = archived
    monkeypatch.setenv("FAKE_HPSS_HANG", "30")
    with pytest.raises(RuntimeError, match="walltime exceeded"):
        verify_tape(cfs, prune_items(files, result), result["archives"], walltime_seconds=1)


@pytest.mark.parametrize("failing", ["hsi:ls", "htar:t"])
def test_hpss_listing_failure_fails_the_batch(
    cfs: Cfs,
    archived: tuple[list[dict[str, Any]], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    files, result = archived
    monkeypatch.setenv("FAKE_HPSS_FAIL", failing)
    with pytest.raises(RuntimeError, match=r"(hsi ls -l|htar -tvf) .*exit code 1"):
        verify_tape(cfs, prune_items(files, result), result["archives"])
