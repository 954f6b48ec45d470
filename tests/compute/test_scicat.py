"""scicat_ingest / scicat_add_location against a SciCat v3 mock and the SQLite stand-in."""

from __future__ import annotations

import json
import logging
import sqlite3
import traceback
from pathlib import Path
from typing import Any

import pytest

from compute_functions.scicat import scicat_add_location, scicat_ingest

from .conftest import BASE_URL, METADATA, PASSWORD, TOKEN, Cfs, FakeSciCat, md5

HPSS = "/home/a/alsdata/bl402/raw"
TAR = f"{HPSS}/P1/P1_x.tar"


def ingest(path: Path, version: int = 1, **kw: Any) -> dict[str, Any]:
    data = path.read_bytes()
    args: dict[str, Any] = {
        "beamline": "bl402",
        "file_path": str(path),
        "size": len(data),
        "proposal": "P1",
        "metadata": METADATA,
        "checksum": md5(data),
        "version": version,
    }
    args.update(kw)
    return scicat_ingest(**args)


def add_location(cfs: Cfs, files: list[dict[str, Any]], where: list[Any]) -> dict[str, Any]:
    return scicat_add_location(
        beamline="bl402",
        cfs_root=str(cfs.root),
        hpss_dir=HPSS,
        files=files,
        archive={"sent": 1, "skipped": 0, "archives": [TAR], "where": where, "changed": []},
    )


def test_ingest_creates_dataset_and_origdatablock_once(cfs: Cfs, scicat: FakeSciCat) -> None:
    cfs.write(
        "P1/scan_001.dat", data=b"# sample: Fe3O4\n# energy = 708.5\n# field: 1.5 T\n1 2\n3 4\n"
    )
    path = cfs.root / "P1/scan_001.dat"
    result = ingest(path)
    assert result == {
        "pid": result["pid"],
        "created": True,
        "updated": False,
        "dataset_name": "scan_001.dat",
        "source_folder": str(cfs.root / "P1"),
    }

    doc = scicat.datasets[result["pid"]]
    assert doc["creationLocation"] == "/ALS/bl402"
    assert doc["type"] == "raw" and doc["proposalId"] == "P1"
    assert doc["ownerGroup"] == "als-402" and doc["accessGroups"] == ["als-402-staff"]
    assert doc["instrumentId"] == "bl402-instrument" and doc["numberOfFiles"] == 1
    assert doc["size"] == path.stat().st_size
    assert doc["creationTime"].endswith("Z")
    assert doc["scientificMetadata"]["header"] == {
        "sample": "Fe3O4",
        "energy": "708.5",
        "field": "1.5 T",
    }
    (record,) = doc["scientificMetadata"]["file_versions"]
    assert record["version"] == 1 and record["checksum"] == md5(path.read_bytes())
    (odb,) = scicat.origdatablocks[result["pid"]]
    assert odb["chkAlg"] == "md5"
    assert odb["dataFileList"] == [
        {
            "path": "scan_001.dat",
            "size": path.stat().st_size,
            "time": doc["creationTime"],
            "chk": md5(path.read_bytes()),
        }
    ]

    calls = len(scicat.calls)
    again = ingest(path)
    assert again == {**result, "created": False, "updated": False}
    assert not [c for c in scicat.calls[calls:] if not c.startswith("GET")]  # a no-op
    assert len(scicat.datasets) == 1 and len(scicat.origdatablocks[result["pid"]]) == 1


def test_ingest_retry_after_missing_origdatablock_completes_it(
    cfs: Cfs, scicat: FakeSciCat
) -> None:
    cfs.write("P1/a.h5", 10)
    path = cfs.root / "P1/a.h5"
    scicat.fail["post-origdatablocks"] = (500, '{"message": "boom"}')
    with pytest.raises(RuntimeError, match=r"POST /Datasets/.*/origdatablocks answered HTTP 500"):
        ingest(path)
    del scicat.fail["post-origdatablocks"]
    result = ingest(path)
    assert result["created"] is False and result["updated"] is True
    assert len(scicat.datasets) == 1 and len(scicat.origdatablocks[result["pid"]]) == 1


def test_new_version_points_scicat_at_the_new_content(cfs: Cfs, scicat: FakeSciCat) -> None:
    path = cfs.root / "P1/scan.h5"
    cfs.write("P1/scan.h5", data=b"version one")
    first = ingest(path)
    cfs.write("P1/scan.h5", data=b"version two, longer")
    second = ingest(path, version=2)
    assert second["pid"] == first["pid"]
    assert second["created"] is False and second["updated"] is True

    doc = scicat.datasets[first["pid"]]
    assert doc["size"] == len(b"version two, longer")
    assert [(v["version"], v["checksum"]) for v in doc["scientificMetadata"]["file_versions"]] == [
        (1, md5(b"version one")),
        (2, md5(b"version two, longer")),
    ]
    (odb,) = scicat.origdatablocks[first["pid"]]  # replaced, not added
    (entry,) = odb["dataFileList"]
    assert entry["chk"] == md5(b"version two, longer") and entry["size"] == 19
    assert odb["size"] == 19 and odb["chkAlg"] == "md5"

    calls = len(scicat.calls)
    assert ingest(path, version=2)["updated"] is False  # the same version again: no-op
    assert not [c for c in scicat.calls[calls:] if not c.startswith("GET")]


def test_an_older_version_arriving_late_only_adds_history(cfs: Cfs, scicat: FakeSciCat) -> None:
    path = cfs.root / "P1/scan.h5"
    cfs.write("P1/scan.h5", data=b"version two")
    pid = ingest(path, version=2)["pid"]
    late = ingest(path, version=1, size=3, checksum=md5(b"one"))  # v1 is no longer on disk
    assert late["updated"] is True
    doc = scicat.datasets[pid]
    assert doc["size"] == len(b"version two")
    assert sorted(v["version"] for v in doc["scientificMetadata"]["file_versions"]) == [1, 2]
    (odb,) = scicat.origdatablocks[pid]
    assert odb["dataFileList"][0]["chk"] == md5(b"version two")


def test_same_version_with_other_content_is_refused(cfs: Cfs, scicat: FakeSciCat) -> None:
    path = cfs.root / "P1/scan.h5"
    cfs.write("P1/scan.h5", data=b"first")
    pid = ingest(path)["pid"]
    cfs.write("P1/scan.h5", data=b"other")
    with pytest.raises(RuntimeError, match="version 1 is already recorded with checksum"):
        ingest(path, version=1)
    assert scicat.origdatablocks[pid][0]["dataFileList"][0]["chk"] == md5(b"first")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"checksum": "md5:" + "0" * 32}, "checksum is not 32 lowercase hex"),
        ({"checksum": None}, "checksum is not 32 lowercase hex"),
        ({"version": 0}, "version 0 is not an integer >= 1"),
        ({"version": True}, "version True is not an integer >= 1"),
        ({"size": -1}, "size -1 is not an integer >= 0"),
    ],
)
def test_ingest_refuses_malformed_facts(
    cfs: Cfs, scicat: FakeSciCat, kw: dict[str, Any], message: str
) -> None:
    cfs.write("P1/a.h5", 10)
    with pytest.raises(RuntimeError, match=message):
        ingest(cfs.root / "P1/a.h5", **kw)
    assert scicat.calls == []


def test_hdf5_attributes_and_shapes(cfs: Cfs, scicat: FakeSciCat) -> None:
    h5py = pytest.importorskip("h5py")
    import numpy as np

    path = cfs.root / "P1/scan.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as h5:
        h5.attrs["sample"] = "CoFe"
        h5.attrs["temperature"] = np.float64(12.5)
        h5.create_dataset("entry/data", data=np.zeros((4, 3)))
    result = ingest(path)
    meta = scicat.datasets[result["pid"]]["scientificMetadata"]
    assert meta["hdf5_attributes"] == {"sample": "CoFe", "temperature": 12.5}
    assert meta["hdf5_datasets"] == {"entry/data": {"shape": [4, 3], "dtype": "float64"}}


def test_unknown_format_gets_basic_facts(cfs: Cfs, scicat: FakeSciCat) -> None:
    cfs.write("P1/image.tif", 64)
    result = ingest(cfs.root / "P1/image.tif")
    meta = scicat.datasets[result["pid"]]["scientificMetadata"]
    assert meta["file"]["extension"] == ".tif" and meta["file"]["size_bytes"] == 64


def test_ingest_rejects_size_mismatch_and_missing_metadata(cfs: Cfs, scicat: FakeSciCat) -> None:
    cfs.write("P1/a.h5", 10)
    with pytest.raises(RuntimeError, match="size differs"):
        ingest(cfs.root / "P1/a.h5", size=11)
    with pytest.raises(RuntimeError, match="metadata is missing owner_group"):
        ingest(
            cfs.root / "P1/a.h5", metadata={k: v for k, v in METADATA.items() if k != "owner_group"}
        )
    assert scicat.datasets == {}


def test_add_location_records_each_tape_copy_idempotently(cfs: Cfs, scicat: FakeSciCat) -> None:
    a = cfs.write("P1/a.h5", 10)
    big = cfs.write("P1/big.h5", 20, version=2)
    skipped = cfs.write("P1/changed.h5", 5)
    pid_a = ingest(cfs.root / "P1/a.h5")["pid"]
    pid_big = ingest(cfs.root / "P1/big.h5", version=2)["pid"]
    ingest(cfs.root / "P1/changed.h5")

    result = add_location(cfs, [a, big, skipped], [0, -1, None])
    assert result == {"updated": 2, "unchanged": 0, "missing": 0}
    (block_a,) = scicat.datablocks[pid_a]
    assert block_a["archiveId"] == f"{TAR}:P1/a.h5"
    assert block_a["size"] == 10 and block_a["packedSize"] == 10 and block_a["chkAlg"] == "md5"
    assert block_a["dataFileList"][0]["path"] == "P1/a.h5"
    assert block_a["dataFileList"][0]["chk"] == a["checksum"]
    (block_big,) = scicat.datablocks[pid_big]
    assert block_big["archiveId"] == f"{HPSS}/P1/big.h5@v2"  # the version's own tape path
    assert block_big["dataFileList"][0]["path"] == "big.h5"

    again = add_location(cfs, [a, big, skipped], [0, -1, None])
    assert again == {"updated": 0, "unchanged": 2, "missing": 0}
    assert len(scicat.datablocks[pid_a]) == 1 and len(scicat.datablocks[pid_big]) == 1


def test_add_location_counts_files_without_dataset(cfs: Cfs, scicat: FakeSciCat) -> None:
    a = cfs.write("P1/a.h5", 10)
    ingest(cfs.root / "P1/a.h5")
    unknown = cfs.write("P1/unknown.h5", 5)
    assert add_location(cfs, [a, unknown], [0, 0]) == {"updated": 1, "unchanged": 0, "missing": 1}


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        ({"archives": [TAR], "where": [0, 0]}, "one 'where' per file"),
        ({"archives": [TAR]}, "one 'where' per file"),
        ({"archives": ["/elsewhere/x.tar"], "where": [0]}, "not inside hpss_dir"),
        ({"archives": [TAR], "where": [1]}, "neither -1, null nor an archive index"),
    ],
)
def test_add_location_refuses_a_malformed_archive_result(
    cfs: Cfs, scicat: FakeSciCat, archive: dict[str, Any], message: str
) -> None:
    a = cfs.write("P1/a.h5", 10)
    with pytest.raises(RuntimeError, match=message):
        scicat_add_location(
            beamline="bl402", cfs_root=str(cfs.root), hpss_dir=HPSS, files=[a], archive=archive
        )
    assert scicat.calls == []


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def test_token_never_in_results_logs_or_errors(
    cfs: Cfs,
    scicat: FakeSciCat,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    a = cfs.write("P1/a.h5", 10)
    result = ingest(cfs.root / "P1/a.h5")
    loc = add_location(cfs, [a], [0])

    # an error whose server answer echoes the token
    cfs.write("P1/b.h5", 10)
    scicat.fail["create"] = (500, json.dumps({"message": f"bad token {TOKEN}"}))
    with pytest.raises(RuntimeError, match="datasets_create") as info:
        ingest(cfs.root / "P1/b.h5")
    error_text = "".join(traceback.format_exception(info.value))
    assert "***" in str(info.value)

    out = capsys.readouterr()
    everything = json.dumps([result, loc]) + caplog.text + out.out + out.err + error_text
    _assert_no_secret(everything, TOKEN)


def test_failed_login_never_leaks_the_password(
    cfs: Cfs,
    scicat: FakeSciCat,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The fake SciCat echoes a rejected login; pyscicat logs that answer and raises with
    it. Neither may reach the logs or the error."""
    from pyscicat.client import ScicatLoginError, get_token

    caplog.set_level(logging.DEBUG)
    wrong = PASSWORD + "-wrong"
    # precondition, so the check below cannot pass vacuously: pyscicat on its own leaks
    with pytest.raises(ScicatLoginError, match="Unauthorized"):
        get_token(BASE_URL, "ingestor", wrong)
    assert wrong in caplog.text
    caplog.clear()

    monkeypatch.delenv("SCICAT_TOKEN")
    monkeypatch.setenv("SCICAT_USERNAME", "ingestor")
    monkeypatch.setenv("SCICAT_PASSWORD", PASSWORD)
    cfs.write("P1/a.h5", 10)
    result = ingest(cfs.root / "P1/a.h5")
    assert result["created"] is True and "POST login" in scicat.calls

    monkeypatch.setenv("SCICAT_PASSWORD", wrong)
    with pytest.raises(RuntimeError, match="scicat_ingest failed") as info:
        ingest(cfs.root / "P1/a.h5")
    out = capsys.readouterr()
    everything = (
        json.dumps(result)
        + caplog.text
        + out.out
        + out.err
        + "".join(traceback.format_exception(info.value))
    )
    _assert_no_secret(everything, TOKEN, PASSWORD)
    assert "***" in str(info.value)  # the echoed password was there, and was scrubbed


def test_unreachable_url_with_credentials_is_scrubbed(
    cfs: Cfs, scicat: FakeSciCat, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCICAT_URL", "https://user:urlpass-SECRET@elsewhere.test/api/v3")
    cfs.write("P1/a.h5", 10)
    with pytest.raises(RuntimeError, match=r"GET \*\*\*/Datasets") as info:
        ingest(cfs.root / "P1/a.h5")
    text = "".join(traceback.format_exception(info.value))
    _assert_no_secret(text, "urlpass-SECRET", TOKEN)


def test_token_file(
    cfs: Cfs, scicat: FakeSciCat, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.delenv("SCICAT_TOKEN")
    monkeypatch.setenv("SCICAT_TOKEN_FILE", str(token_file))
    cfs.write("P1/a.h5", 10)
    assert ingest(cfs.root / "P1/a.h5")["created"] is True


def test_missing_credentials(cfs: Cfs, scicat: FakeSciCat, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCICAT_TOKEN")
    cfs.write("P1/a.h5", 10)
    with pytest.raises(RuntimeError, match="SciCat credentials missing"):
        ingest(cfs.root / "P1/a.h5")


def test_sqlite_local_stand_in(cfs: Cfs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "state" / "catalogue.sqlite"
    monkeypatch.setenv("SCICAT_URL", f"sqlite:///{db}")
    for name in ("SCICAT_TOKEN", "SCICAT_TOKEN_FILE", "SCICAT_USERNAME", "SCICAT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    path = cfs.root / "P1/a.dat"
    v1 = cfs.write("P1/a.dat", data=b"# sample: Ni\n1 2\n")
    first = ingest(path)
    assert first["created"] is True and first["pid"].startswith("local/")
    assert ingest(path) == {**first, "created": False}
    assert add_location(cfs, [v1], [0]) == {"updated": 1, "unchanged": 0, "missing": 0}
    assert add_location(cfs, [v1], [0]) == {"updated": 0, "unchanged": 1, "missing": 0}

    v2 = cfs.write("P1/a.dat", data=b"# sample: Ni, again\n1 2 3\n", version=2)
    assert ingest(path, version=2)["updated"] is True
    assert add_location(cfs, [v2], [-1]) == {"updated": 1, "unchanged": 0, "missing": 0}

    con = sqlite3.connect(db)
    (doc,) = [json.loads(r[0]) for r in con.execute("SELECT doc FROM datasets")]
    assert doc["sourceFolder"] == str(cfs.root / "P1") and doc["datasetName"] == "a.dat"
    assert doc["creationLocation"] == "/ALS/bl402" and doc["type"] == "raw"
    assert doc["size"] == v2["size"]
    assert [v["version"] for v in doc["scientificMetadata"]["file_versions"]] == [1, 2]
    (odb,) = [json.loads(r[0]) for r in con.execute("SELECT doc FROM origdatablocks")]
    assert odb["datasetId"] == first["pid"] and odb["dataFileList"][0]["chk"] == v2["checksum"]
    blocks = sorted(
        json.loads(r[0])["archiveId"] for r in con.execute("SELECT doc FROM datablocks")
    )
    assert blocks == [f"{TAR}:P1/a.dat", f"{HPSS}/P1/a.dat@v2"]
    con.close()
