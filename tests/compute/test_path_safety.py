"""The path-safety block that cfs.py and hpss.py both carry (the same text, registered with
each verifier): which inputs are refused, what counts as inside a root, and how a local copy
is proven to hold the expected bytes.

Issue 13 (mutation testing of the deletion path): the verifier tests reach this block only
through cfs_verify / hpss_verify, which leaves its error paths (a directory swapped for a
symlink, a file gone between stat and open, a read that comes up short) and its exact
refusal texts untested. Every test here runs against BOTH copies, asserting exact reason
codes and details: a detail is what an operator reads in the run's output.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import compute_functions.cfs as cfs_module
import compute_functions.hpss as hpss_module

MODULES = [cfs_module, hpss_module]
MD5_X = hashlib.md5(b"x", usedforsecurity=False).hexdigest()


@pytest.fixture(params=MODULES, ids=["cfs", "hpss"])
def m(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- _clean_rel ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("a.h5", "a.h5"),
        ("P1/a.h5", "P1/a.h5"),
        ("P1//a.h5", "P1/a.h5"),
        ("./P1/./a.h5", "P1/a.h5"),
        ("P1/..a.h5", "P1/..a.h5"),  # a name that starts with two dots is a name
        (".. x/a.h5", ".. x/a.h5"),  # so is one with a space after them
        ("P1/../a.h5", None),  # a '..' component is refused even where it stays inside
        ("P1/..", None),
        ("../a.h5", None),
        ("/P1/a.h5", None),
        ("", None),
        (".", None),
        ("./", None),
        ("P1/a\x00.h5", None),
        ("P1/a\n.h5", None),
        (None, None),
        (5, None),
    ],
)
def test_clean_rel(m: ModuleType, rel: Any, expected: str | None) -> None:
    assert m._clean_rel(rel) == expected


# --- _abs_root and _inside -------------------------------------------------------------------
def test_abs_root_normalises_and_refuses(m: ModuleType) -> None:
    assert m._abs_root("/cfs//raw/./", "safe_root") == "/cfs/raw"
    with pytest.raises(RuntimeError) as info:
        m._abs_root("/cfs/raw\x00", "safe_root")
    assert str(info.value) == "safe_root contains a NUL or newline: '/cfs/raw\\x00'"
    with pytest.raises(RuntimeError) as info:
        m._abs_root("/cfs/raw\n", "target_root")
    assert str(info.value) == "target_root contains a NUL or newline: '/cfs/raw\\n'"
    with pytest.raises(RuntimeError) as info:
        m._abs_root(None, "safe_root")
    assert str(info.value) == "safe_root must be an absolute path without '..': None"


@pytest.mark.parametrize(
    ("path", "root", "inside"),
    [
        ("/cfs/raw/a", "/cfs/raw", True),
        ("/cfs/raw/a", "/cfs/raw/", True),
        ("/cfs/raw/", "/cfs/raw", False),  # the root itself, spelled with a slash
        ("/cfs/raw", "/cfs/raw", False),
        ("/cfs/raw_old/a", "/cfs/raw", False),
        ("/a", "/", True),
        ("/data/X/a", "/data/X", True),
        ("/data/a", "/data/X", False),  # only slashes are trimmed from a root
    ],
)
def test_inside(m: ModuleType, path: str, root: str, inside: bool) -> None:
    assert m._inside(path, root) is inside


# --- _roots_apart ----------------------------------------------------------------------------
def test_roots_apart_refuses_a_safe_root_reached_through_a_symlink(
    m: ModuleType, tmp_path: Path
) -> None:
    """The safe root is a link into the target root: lexically apart, really inside."""
    target = tmp_path / "cfs" / "raw"
    (target / "P1").mkdir(parents=True)
    alias = tmp_path / "alias"
    alias.symlink_to(target / "P1", target_is_directory=True)
    with pytest.raises(RuntimeError) as info:
        m._roots_apart(str(target), str(alias))
    assert str(info.value) == (
        f"target_root {target} and safe_root {alias} overlap ({target} vs {target}/P1);"
        " nothing was checked"
    )


def test_roots_apart_returns_both_normalised(m: ModuleType, tmp_path: Path) -> None:
    assert m._roots_apart("/data//bl402/", f"{tmp_path}/cfs/") == ("/data/bl402", f"{tmp_path}/cfs")


# --- _items --------------------------------------------------------------------------------
GOOD = {"path": "P1/a.h5", "size": 1, "checksum": MD5_X, "version": 1}
ROOTS = ("/data/bl402", "/cfs/raw")


def refusal(m: ModuleType, files: Any, **kwargs: Any) -> str:
    with pytest.raises(RuntimeError) as info:
        m._items(files, ROOTS, **kwargs)
    return str(info.value)


def test_items_as_checked(m: ModuleType) -> None:
    files = [
        {**GOOD, "path": "./P1//a.h5", "size": 0, "extra": True},
        {**GOOD, "version": 3, "archive": 4},
    ]
    assert m._items(files, ROOTS) == [
        {"rel": "P1/a.h5", "size": 0, "checksum": MD5_X, "version": 1, "archive": -1},
        # without `archives` an item's archive is ignored: -1
        {"rel": "P1/a.h5", "size": 1, "checksum": MD5_X, "version": 3, "archive": -1},
    ]
    assert m._items(files, ROOTS, archives=5) == [
        {"rel": "P1/a.h5", "size": 0, "checksum": MD5_X, "version": 1, "archive": -1},
        {"rel": "P1/a.h5", "size": 1, "checksum": MD5_X, "version": 3, "archive": 4},
    ]


def test_items_refusal_texts(m: ModuleType) -> None:
    assert refusal(m, []) == "files is empty: nothing to check"
    assert refusal(m, "P1/a.h5") == "files is empty: nothing to check"
    assert refusal(m, ["x", 3]) == (
        "2 of 2 file(s) refused (nothing was checked): #0: not an object; #1: not an object"
    )
    bad = {"path": "/abs", "size": -1, "checksum": "A" * 32, "version": 0}
    assert refusal(m, [bad, GOOD, bad]).startswith("2 of 3 file(s) refused")
    assert refusal(m, [GOOD, bad]) == (
        "1 of 2 file(s) refused (nothing was checked): #1 '/abs': path outside root"
        " (absolute, '..', empty, NUL or newline), size -1 is not an integer >= 0, checksum"
        " is not 32 lowercase hex digits (MD5), version 0 is not an integer >= 1"
    )


def test_items_names_at_most_200_characters_of_a_path(m: ModuleType) -> None:
    long = "/" + "p" * 300
    text = refusal(m, [{**GOOD, "path": long}])
    assert f"#0 {long[:200]!r}: path outside root" in text


@pytest.mark.parametrize(
    ("archive", "ok"),
    [(-1, True), (0, True), (2, True), (3, False), (-2, False), (None, False), (True, False)],
)
def test_items_archive_index_bounds(m: ModuleType, archive: Any, ok: bool) -> None:
    files = [{**GOOD, "archive": archive}]
    if ok:
        assert m._items(files, ROOTS, archives=3)[0]["archive"] == archive
    else:
        assert refusal(m, files, archives=3) == (
            "1 of 1 file(s) refused (nothing was checked): #0 'P1/a.h5': archive"
            f" {archive!r} is neither -1 nor an index into archives"
        )


def test_items_archive_defaults_to_a_single(m: ModuleType) -> None:
    assert m._items([GOOD], ROOTS, archives=0)[0]["archive"] == -1


@pytest.mark.parametrize(
    ("rel", "reserved"),
    [
        ("P1/a.h5@v2", True),
        ("a.h5@v12", True),
        ("P1@v2/a.h5", False),  # only the file's own name counts
        ("P1/a.h5@v2 ", False),
        ("P1/a.h5@v", False),
        ("a.h5", False),
    ],
)
def test_items_names_reserved_for_tape_versions(m: ModuleType, rel: str, reserved: bool) -> None:
    files = [{**GOOD, "path": rel}]
    assert m._items(files, ROOTS)[0]["rel"] == rel  # reserved only on tape
    if reserved:
        assert refusal(m, files, tape=True) == (
            f"1 of 1 file(s) refused (nothing was checked): #0 {rel!r}:"
            " name ends in '@v<n>', reserved for versioned tape copies"
        )
    else:
        assert m._items(files, ROOTS, tape=True)[0]["rel"] == rel


@pytest.mark.parametrize("count", [20, 21])
def test_summary_names_twenty_and_counts_the_rest(m: ModuleType, count: int) -> None:
    problems = [f"p{i}" for i in range(count)]
    shown = "; ".join(problems[:20])
    more = "; ... and 1 more" if count == 21 else ""
    assert m._summary(problems, 30, "refused") == f"{count} of 30 file(s) refused: {shown}{more}"


# --- _kind ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "name"),
    [
        (stat.S_IFDIR, "directory"),
        (stat.S_IFLNK, "symlink"),
        (stat.S_IFIFO, "FIFO"),
        (stat.S_IFSOCK, "socket"),
        (stat.S_IFCHR, "character device"),
        (stat.S_IFBLK, "block device"),
        (0, "special file"),
    ],
)
def test_kind(m: ModuleType, mode: int, name: str) -> None:
    assert m._kind(mode | 0o644) == name


# --- _open_below: every way a component can fail --------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "P1").mkdir(parents=True)
    (root / "P1" / "a.h5").write_bytes(b"x")
    return root


def refused(m: ModuleType, root: Path | str, parts: list[str]) -> tuple[str, str]:
    with pytest.raises(m._Refused) as info:
        fd = m._open_below(str(root), parts)
        os.close(fd)
    return info.value.reason, info.value.detail


def test_open_below_opens_the_file(m: ModuleType, tree: Path) -> None:
    fd = m._open_below(str(tree), ["P1", "a.h5"])
    try:
        assert os.read(fd, 10) == b"x"
    finally:
        os.close(fd)


def test_open_below_root_problems(m: ModuleType, tree: Path) -> None:
    assert refused(m, tree / "none", ["a.h5"]) == (
        "unreadable",
        "root not readable: No such file or directory",
    )
    # a root that is a file is refused as a root, not looked into
    assert refused(m, tree / "P1" / "a.h5", ["a.h5"]) == (
        "unreadable",
        "root not readable: Not a directory",
    )


def test_open_below_directory_problems(m: ModuleType, tree: Path, tmp_path: Path) -> None:
    long = "d" * 70
    assert refused(m, tree, [long, "a.h5"]) == ("missing", f"directory {long[:60]!r} missing")
    (tree / ("f" * 70)).write_bytes(b"x")
    assert refused(m, tree, ["f" * 70, "a.h5"]) == ("missing", f"{'f' * 60!r} is not a directory")
    (tree / ("l" * 70)).symlink_to(tree / "P1", target_is_directory=True)
    assert refused(m, tree, ["l" * 70, "a.h5"]) == (
        "outside_root",
        f"{'l' * 60!r} became a symlink",
    )


def test_open_below_file_problems(m: ModuleType, tree: Path) -> None:
    assert refused(m, tree, ["P1", "gone.h5"]) == ("missing", "no such file")
    assert refused(m, tree, ["P1"]) == ("not_regular", "is a directory, not a regular file")


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> dict[str, OSError]:
    """Make os.open / os.lstat fail for chosen names (name -> error), as a file system that
    denies access, or a file swapped between two calls, would."""
    errors: dict[str, OSError] = {}
    real_open, real_lstat = os.open, os.lstat

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if f"open:{path}" in errors:
            raise errors[f"open:{path}"]
        return real_open(path, flags, *args, **kwargs)

    def fake_lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if f"lstat:{path}" in errors:
            raise errors[f"lstat:{path}"]
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "lstat", fake_lstat)
    return errors


def test_open_below_denied_directory(
    m: ModuleType, tree: Path, failing: dict[str, OSError]
) -> None:
    failing["open:" + "P1"] = PermissionError(errno.EACCES, "Permission denied")
    assert refused(m, tree, ["P1", "a.h5"]) == ("unreadable", "'P1': Permission denied")
    long = "p" * 70
    (tree / long).mkdir()
    failing["open:" + long] = PermissionError(errno.EACCES, "Permission denied")
    assert refused(m, tree, [long, "a.h5"]) == ("unreadable", f"{long[:60]!r}: Permission denied")


def test_open_below_denied_stat(m: ModuleType, tree: Path, failing: dict[str, OSError]) -> None:
    failing["lstat:a.h5"] = PermissionError(errno.EACCES, "Permission denied")
    assert refused(m, tree, ["P1", "a.h5"]) == ("unreadable", "cannot stat: Permission denied")


def test_open_below_file_gone_between_stat_and_open(
    m: ModuleType, tree: Path, failing: dict[str, OSError]
) -> None:
    failing["open:a.h5"] = FileNotFoundError(errno.ENOENT, "No such file or directory")
    assert refused(m, tree, ["P1", "a.h5"]) == ("missing", "no such file")


def test_open_below_denied_open(m: ModuleType, tree: Path, failing: dict[str, OSError]) -> None:
    failing["open:a.h5"] = PermissionError(errno.EACCES, "Permission denied")
    assert refused(m, tree, ["P1", "a.h5"]) == ("unreadable", "cannot open: Permission denied")


def test_open_below_never_follows_a_file_swapped_for_a_symlink(
    m: ModuleType, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lstat saw a regular file; by the time of open() it is a symlink (to identical bytes).
    O_NOFOLLOW makes the open fail: the link is never followed."""
    (tree / "P1" / "link.h5").symlink_to(tree / "P1" / "a.h5")
    regular = os.lstat(tree / "P1" / "a.h5")
    real_lstat = os.lstat

    def stale_lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return regular if path == "link.h5" else real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", stale_lstat)
    assert refused(m, tree, ["P1", "link.h5"]) == (
        "not_regular",
        "became a symlink while checking",
    )


# --- _local_copy -------------------------------------------------------------------------------
def test_local_copy_proves_the_bytes(m: ModuleType, tree: Path) -> None:
    reason, detail, identity = m._local_copy(str(tree), str(tree), "P1/a.h5", 1, md5(b"x"))
    st = os.stat(tree / "P1" / "a.h5")
    assert (reason, detail) == (None, "")
    assert identity == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def test_local_copy_hashes_every_chunk(
    m: ModuleType, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of several read chunks (chunk size lowered): every byte is counted and hashed."""
    monkeypatch.setattr(m, "_CHUNK", 4)
    data = b"0123456789abcdefghij-"
    (tree / "P1" / "b.h5").write_bytes(data)
    fd = os.open(tree / "P1" / "b.h5", os.O_RDONLY)
    try:
        assert m._md5(fd) == (md5(data), len(data))
    finally:
        os.close(fd)
    assert m._local_copy(str(tree), str(tree), "P1/b.h5", len(data), md5(data))[0] is None
    wrong = md5(data[:-1] + b"+")
    assert m._local_copy(str(tree), str(tree), "P1/b.h5", len(data), wrong)[:2] == (
        "checksum_differs",
        f"md5 {md5(data)}, expected {wrong}",
    )


def test_local_copy_a_short_read_is_no_proof(
    m: ModuleType, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer bytes read than the size (the file shrank while read), even with the expected
    digest: the copy is not taken as proven."""
    monkeypatch.setattr(m, "_md5", lambda fd: (md5(b"x"), 0))
    assert m._local_copy(str(tree), str(tree), "P1/a.h5", 1, md5(b"x")) == (
        "checksum_differs",
        "changed while being read",
        None,
    )


def test_local_copy_a_directory_where_the_file_was(
    m: ModuleType, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was swapped for a directory between the checks and the open."""
    directory = os.open(tree / "P1", os.O_RDONLY | os.O_DIRECTORY)
    monkeypatch.setattr(m, "_open_below", lambda root, parts: directory)
    assert m._local_copy(str(tree), str(tree), "P1/a.h5", 1, md5(b"x")) == (
        "not_regular",
        "is a directory",
        None,
    )


def test_local_copy_details_stay_short(
    m: ModuleType, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Details land in the run state (capped): at most 120 characters each."""
    far = tmp_path / ("elsewhere-" + "x" * 150)
    far.mkdir()
    (far / "a.h5").write_bytes(b"x")
    (tree / "P2").symlink_to(far, target_is_directory=True)
    reason, detail, _ = m._local_copy(str(tree), str(tree), "P2/a.h5", 1, md5(b"x"))
    assert (reason, detail) == ("outside_root", f"resolves to {far}/a.h5"[:120])
    assert len(detail) == 120

    def failing_md5(fd: int) -> tuple[str, int]:
        raise OSError(errno.EIO, "I/O error " + "e" * 200)

    monkeypatch.setattr(m, "_md5", failing_md5)
    reason, detail, _ = m._local_copy(str(tree), str(tree), "P1/a.h5", 1, md5(b"x"))
    assert (reason, len(detail)) == ("unreadable", 120)
    assert detail.startswith("read failed: I/O error eee")


def test_cfs_verify_refuses_a_safe_root_that_is_not_here(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        cfs_module.cfs_verify(
            target_root="/data/bl402",
            safe_root=str(tmp_path / "none"),
            files=[{"path": "P1/a.h5", "size": 1, "checksum": MD5_X, "version": 1}],
        )
    assert str(info.value) == (
        f"safe_root {tmp_path}/none is not a directory here; nothing was checked"
    )


def test_local_copy_opens_component_by_component(
    m: ModuleType, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory swapped for a symlink after realpath() ran (simulated: realpath that does
    not resolve) is refused, even though the bytes behind it are the expected ones: each
    component is opened on its own, without following links."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.h5").write_bytes(b"x")
    (tree / "P2").symlink_to(outside, target_is_directory=True)
    monkeypatch.setattr(os.path, "realpath", lambda p, **_: os.path.abspath(p))
    reason, detail, _ = m._local_copy(str(tree), str(tree), "P2/a.h5", 1, md5(b"x"))
    assert (reason, detail) == ("outside_root", "'P2' became a symlink")
