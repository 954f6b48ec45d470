"""hpss_verify's own decisions, one at a time: its argument checks, the tape path of each
version, which archive paths it trusts, how a listing's answer (missing, failed, listed)
becomes a verdict, and how a CFS-side reason is renamed for the tape prune.

Issue 13 (mutation testing of the deletion path): the end-to-end verifier tests go through
the fake hsi/htar; here the HPSS sessions are replaced by canned answers (rc, stdout,
stderr) so every branch is reached and every verdict asserted exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import compute_functions.hpss as hpss_module
from compute_functions.hpss import (
    _UNUSABLE,
    _archive_paths,
    _missing,
    _parse_hsi_ls,
    _parse_htar_tvf,
    _Sessions,
    _single_path,
    hpss_verify,
)

from .conftest import HPSS_DIR, Cfs, item

LS = "-rw-r-----    1 alsdata  als   {size} Mar 11 09:14 {name}\n"
TVF = "HTAR: -rw-r-----  alsdata/als {size} 2024-03-11 09:14  {name}\n"


def test_single_path_of_each_version() -> None:
    assert _single_path("/hpss/raw/", "P1/a.h5", 1) == "/hpss/raw/P1/a.h5"
    assert _single_path("/hpss/raw", "P1/a.h5", 2) == "/hpss/raw/P1/a.h5@v2"
    assert _single_path("/hpss/raw", "a.h5", 13) == "/hpss/raw/a.h5@v13"
    assert _single_path("/hpss/X", "a.h5", 1) == "/hpss/X/a.h5"  # only '/' is trimmed


def test_archive_paths_normalised_and_refused() -> None:
    assert _archive_paths([f"{HPSS_DIR}//P1/./x.tar"], HPSS_DIR) == [f"{HPSS_DIR}/P1/x.tar"]
    assert _archive_paths([], HPSS_DIR) == []
    with pytest.raises(RuntimeError) as info:
        _archive_paths(f"{HPSS_DIR}/P1/x.tar", HPSS_DIR)
    assert str(info.value) == "archives must be a list of HPSS paths (got str)"
    bad = [f"{HPSS_DIR}/P1/x\x00.tar", f"{HPSS_DIR}/P1/x\n.tar", "P1/x.tar", 7]
    with pytest.raises(RuntimeError) as info:
        _archive_paths([f"{HPSS_DIR}/ok.tar", *bad], HPSS_DIR)
    assert str(info.value) == (
        f"4 archive path(s) not inside safe_root {HPSS_DIR} (nothing was checked): "
        + ", ".join(f"#{k} {str(raw)[:200]!r}" for k, raw in enumerate(bad, start=1))
    )


def test_archive_paths_with_dot_dot_are_refused_even_inside() -> None:
    """`..` is refused as such, even where the normalised path would stay inside."""
    inside = f"{HPSS_DIR}/P1/../P2/x.tar"
    long = f"{HPSS_DIR}/../" + "q" * 250
    with pytest.raises(RuntimeError) as info:
        _archive_paths([inside, long], HPSS_DIR)
    assert str(info.value).endswith(f"#0 {inside!r}, #1 {long[:200]!r}")


def test_archive_paths_refusal_names_twenty_and_counts_the_rest() -> None:
    bad = [f"/elsewhere/{i:02d}.tar" for i in range(23)]
    with pytest.raises(RuntimeError) as info:
        _archive_paths(bad, HPSS_DIR)
    text = str(info.value)
    assert text.startswith(f"23 archive path(s) not inside safe_root {HPSS_DIR}")
    assert "'/elsewhere/19.tar' ... and 3 more" in text and "20.tar" not in text
    with pytest.raises(RuntimeError) as info:
        _archive_paths(bad[:20], HPSS_DIR)
    assert str(info.value).endswith("'/elsewhere/19.tar'")
    with pytest.raises(RuntimeError) as info:
        _archive_paths(bad[:21], HPSS_DIR)
    assert str(info.value).endswith("'/elsewhere/19.tar' ... and 1 more")


def test_missing_recognises_both_spellings() -> None:
    assert _missing("", "*** HPSS_ENOENT: no such entry")
    assert _missing("No such file or directory", "")
    assert not _missing("Permission denied", "HPSS_EACCES")


def test_hsi_listing_keeps_regular_files_and_marks_conflicts() -> None:
    text = (
        LS.format(size=10, name="a.h5")
        + LS.format(size=10, name="a.h5")  # the same twice: still 10
        + LS.format(size=5, name="b.h5")
        + LS.format(size=6, name="b.h5")  # two sizes for one name: unusable
        + "drwxr-x---    2 alsdata  als   512 Mar 11 09:14 P2\n"
        + LS.format(size=7, name="/hpss/raw/P1/c.h5")  # full path: the name counts
    )
    assert _parse_hsi_ls(text) == {"a.h5": 10, "b.h5": _UNUSABLE, "c.h5": 7}


def test_htar_listing_marks_soft_deleted_members() -> None:
    text = (
        TVF.format(size=10, name="P1/a.h5")
        + "HTAR: -rw-r-----  D alsdata/als 11 2024-03-11 09:14  P1/b.h5\n"
        + "HTAR: drwxr-x---  alsdata/als 0 2024-03-11 09:14  P1/sub\n"
    )
    assert _parse_htar_tvf(text) == {"P1/a.h5": 10, "P1/b.h5": _UNUSABLE}


# --- the sessions' answers -----------------------------------------------------------------
def canned(monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[int, str, str]]) -> None:
    """HPSS answers by tool and path: (exit code, stdout, stderr)."""

    def run(self: _Sessions, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        tool = Path(argv[0]).name
        return answers[f"{tool} {argv[-1]}"]

    monkeypatch.setattr(_Sessions, "run", run)
    monkeypatch.setattr(hpss_module, "_tool", lambda name: f"/usr/bin/{name}")


def test_sessions_lists_read_both_streams_and_tell_missing_from_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canned(
        monkeypatch,
        {
            "hsi /d/err": (0, "", LS.format(size=3, name="a.h5")),
            "hsi /d/out": (0, LS.format(size=4, name="a.h5"), ""),
            "hsi /d/none": (72, "", "*** hpss_Lstat: No such file or directory [-2: HPSS_ENOENT]"),
            "hsi /d/denied": (72, "", "*** HPSS_EACCES"),
            "htar /t/out.tar": (0, TVF.format(size=5, name="P1/a.h5"), "HTAR: HTAR SUCCESSFUL"),
            "htar /t/err.tar": (0, "", TVF.format(size=6, name="P1/a.h5")),
            "htar /t/none.tar": (70, "", "ERROR: No such file: /t/none.tar.idx"),
            "htar /t/broken.tar": (70, "", "ERROR: index is damaged"),
        },
    )
    sessions = _Sessions(1, 30)
    assert sessions.hsi_list("/d/err") == {"a.h5": 3}
    assert sessions.hsi_list("/d/out") == {"a.h5": 4}
    assert sessions.hsi_list("/d/none") is None
    with pytest.raises(RuntimeError) as info:
        sessions.hsi_list("/d/denied")
    assert (
        str(info.value) == "hsi ls -l /d/denied failed with exit code 72; stderr: *** HPSS_EACCES"
    )
    assert sessions.htar_list("/t/out.tar") == {"P1/a.h5": 5}
    assert sessions.htar_list("/t/err.tar") == {"P1/a.h5": 6}
    assert sessions.htar_list("/t/none.tar") is None
    with pytest.raises(RuntimeError) as info:
        sessions.htar_list("/t/broken.tar")
    assert str(info.value) == (
        "htar -tvf /t/broken.tar failed with exit code 70; stderr: ERROR: index is damaged"
    )


# --- hpss_verify verdicts from canned listings -------------------------------------------------
def verify(cfs: Cfs, files: list[dict[str, Any]], archives: list[str], **kw: Any) -> Any:
    return hpss_verify(
        target_root=str(cfs.root), safe_root=HPSS_DIR, files=files, archives=archives, **kw
    )


def kept(result: dict[str, Any]) -> dict[int, tuple[str, str]]:
    return {k["i"]: (k["reason"], k["detail"]) for k in result["kept"]}


def test_verdicts_from_listings(cfs: Cfs, monkeypatch: pytest.MonkeyPatch) -> None:
    tar = f"{HPSS_DIR}/P1/x.tar"
    files = [
        cfs.write("P1/a.h5", 10),  # single v1, listed with its size: safe
        cfs.write("P1/b.h5", 10),  # single, two sizes listed: unusable
        {**cfs.write("P1/c.h5", 10), "version": 2},  # single v2: listed as c.h5@v2
        cfs.write("P1/d.h5", 10),  # member, listed: safe
        cfs.write("P1/e.h5", 10),  # member, soft-deleted
        cfs.write("P1/f.h5", 10),  # member, other size
        cfs.write("P2/g.h5", 10),  # single in a directory that is not there
    ]
    where = [-1, -1, -1, 0, 0, 0, -1]
    items = [{**f, "archive": k} for f, k in zip(files, where, strict=True)]
    canned(
        monkeypatch,
        {
            f"hsi {HPSS_DIR}/P1": (
                0,
                "",
                LS.format(size=10, name="a.h5")
                + LS.format(size=10, name="b.h5")
                + LS.format(size=11, name="b.h5")
                + LS.format(size=10, name="c.h5@v2"),
            ),
            f"hsi {HPSS_DIR}/P2": (72, "", "HPSS_ENOENT"),
            f"htar {tar}": (
                0,
                TVF.format(size=10, name="P1/d.h5")
                + "HTAR: -rw-r-----  D alsdata/als 10 2024-03-11 09:14  P1/e.h5\n"
                + TVF.format(size=12, name="P1/f.h5"),
                "",
            ),
        },
    )
    result = verify(cfs, items, [tar])
    assert result["checked"] == 7 and result["algorithm"] == "md5"
    assert result["safe"] == [0, 2, 3]
    assert kept(result) == {
        1: ("not_on_tape", "soft-deleted or listed twice in the archive"),
        4: ("not_on_tape", "soft-deleted or listed twice in the archive"),
        5: ("tape_size_differs", "tape 12 bytes, expected 10"),
        6: ("not_on_tape", f"nothing at {HPSS_DIR}/P2/g.h5"),
    }


def test_each_directory_and_archive_is_listed_once(
    cfs: Cfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = f"{HPSS_DIR}/P1/x.tar"
    calls: list[str] = []
    listing = LS.format(size=10, name="a.h5") + LS.format(size=10, name="b.h5")
    members = TVF.format(size=10, name="P1/c.h5") + TVF.format(size=10, name="P1/d.h5")

    def run(self: _Sessions, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        calls.append(argv[-1])
        return (0, listing, "") if argv[-1].endswith("P1") else (0, members, "")

    monkeypatch.setattr(_Sessions, "run", run)
    monkeypatch.setattr(hpss_module, "_tool", lambda name: name)
    files = [cfs.write(f"P1/{n}.h5", 10) for n in "abcd"]
    items = [{**f, "archive": k} for f, k in zip(files, [-1, -1, 0, 0], strict=True)]
    assert verify(cfs, items, [tar])["safe"] == [0, 1, 2, 3]
    assert calls == [f"{HPSS_DIR}/P1", tar]


def test_cfs_side_reasons_for_the_tape_prune(cfs: Cfs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CFS file is the TARGET of a tape prune: missing -> target_missing, another size
    or content -> target_changed; outside_root and not_regular keep their names."""
    names = ["gone", "short", "other", "dir", "link"]
    files = [item(f"P1/{n}.h5", b"0123456789") for n in names]
    cfs.write("P1/short.h5", data=b"012345678")
    cfs.write("P1/other.h5", data=b"9123456789")
    (cfs.root / "P1" / "dir.h5").mkdir()
    (cfs.root / "P1" / "link.h5").symlink_to("/etc/hostname")
    listing = "".join(LS.format(size=10, name=f"{n}.h5") for n in names)
    canned(monkeypatch, {f"hsi {HPSS_DIR}/P1": (0, "", listing)})
    result = verify(cfs, [{**f, "archive": -1} for f in files], [])
    reasons = {i: reason for i, (reason, _) in kept(result).items()}
    assert reasons == {
        0: "target_missing",
        1: "target_changed",
        2: "target_changed",
        3: "not_regular",
        4: "outside_root",
    }
    assert result["safe"] == []


def test_the_cfs_file_is_hashed_only_where_the_tape_copy_is_there(
    cfs: Cfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [cfs.write("P1/a.h5", 10), cfs.write("P1/b.h5", 10)]
    canned(monkeypatch, {f"hsi {HPSS_DIR}/P1": (0, "", LS.format(size=10, name="a.h5"))})
    hashed: list[str] = []
    real = hpss_module._local_copy

    def spy(root: str, real_root: str, rel: str, size: int, checksum: str) -> Any:
        hashed.append(rel)
        return real(root, real_root, rel, size, checksum)

    monkeypatch.setattr(hpss_module, "_local_copy", spy)
    result = verify(cfs, [{**f, "archive": -1} for f in files], [])
    assert result["safe"] == [0] and hashed == ["P1/a.h5"]


def test_long_tape_paths_are_cut_in_the_detail(cfs: Cfs, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = "P1/" + "n" * 150 + ".h5"
    canned(monkeypatch, {f"hsi {HPSS_DIR}/P1": (0, "", "")})
    result = verify(cfs, [{**cfs.write(rel, 10), "archive": -1}], [])
    assert result["kept"] == [
        {"i": 0, "reason": "not_on_tape", "detail": f"nothing at {HPSS_DIR}/{rel}"[:120]}
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_sessions": 0}, "max_sessions must be an integer >= 1 (got 0)"),
        ({"max_sessions": True}, "max_sessions must be an integer >= 1 (got True)"),
        ({"walltime_seconds": 0}, "walltime_seconds must be an integer >= 1 (got 0)"),
        ({"walltime_seconds": 1.5}, "walltime_seconds must be an integer >= 1 (got 1.5)"),
    ],
)
def test_session_limits_are_checked(cfs: Cfs, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RuntimeError) as info:
        verify(cfs, [{**cfs.write("P1/a.h5", 1), "archive": -1}], [], **kwargs)
    assert str(info.value) == message


def test_smallest_session_limits_are_accepted(cfs: Cfs, monkeypatch: pytest.MonkeyPatch) -> None:
    canned(monkeypatch, {f"hsi {HPSS_DIR}/P1": (0, "", LS.format(size=1, name="a.h5"))})
    files = [{**cfs.write("P1/a.h5", 1), "archive": -1}]
    assert verify(cfs, files, [], max_sessions=1, walltime_seconds=1)["safe"] == [0]


def test_a_target_root_that_is_not_here_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        hpss_verify(
            target_root=str(tmp_path / "none"),
            safe_root=HPSS_DIR,
            files=[item("P1/a.h5", b"x", archive=-1)],
            archives=[],
        )
    assert str(info.value) == f"target_root {tmp_path}/none is not a directory here"


def test_sessions_ask_the_tools_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hsi -q ls -l <dir>` and `htar -tvf <archive>`, and a failure reported only on stdout
    is still named."""
    calls: list[list[str]] = []

    def run(self: _Sessions, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        calls.append(argv)
        return 1, "HPSS_EIO on stdout", ""

    monkeypatch.setattr(_Sessions, "run", run)
    monkeypatch.setattr(hpss_module, "_tool", lambda name: name)
    with pytest.raises(RuntimeError) as info:
        _Sessions(1, 30).hsi_list("/d")
    assert str(info.value) == "hsi ls -l /d failed with exit code 1; stderr: HPSS_EIO on stdout"
    with pytest.raises(RuntimeError) as info:
        _Sessions(1, 30).htar_list("/t.tar")
    assert str(info.value) == (
        "htar -tvf /t.tar failed with exit code 1; stderr: HPSS_EIO on stdout"
    )
    assert calls == [["hsi", "-q", "ls", "-l", "/d"], ["htar", "-tvf", "/t.tar"]]


def test_a_member_missing_from_its_archive_is_named(
    cfs: Cfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = f"{HPSS_DIR}/P1/x.tar"
    canned(monkeypatch, {f"htar {tar}": (0, TVF.format(size=10, name="P1/other.h5"), "")})
    result = verify(cfs, [{**cfs.write("P1/a.h5", 10), "archive": 0}], [tar])
    assert result["kept"] == [
        {"i": 0, "reason": "not_on_tape", "detail": f"nothing at {tar}:P1/a.h5"}
    ]
