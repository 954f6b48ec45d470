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

from .conftest import BASE_URL, METADATA, PASSWORD, TOKEN, Cfs, FakeSciCat


def ingest(path: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "beamline": "bl402",
        "file_path": str(path),
        "size": path.stat().st_size,
        "proposal": "P1",
        "metadata": METADATA,
    }
    args.update(kw)
    return scicat_ingest(**args)


def manifest_for(cfs: Cfs, rel: str, size: int, member: bool = True) -> dict[str, Any]:
    tape = "/home/a/als/bl402/raw/P1/P1_x.tar" if member else f"/home/a/als/bl402/raw/{rel}"
    return {
        "path": rel,
        "cfs_path": f"{cfs.root}/{rel}",
        "size": size,
        "tape_path": tape,
        "member": rel if member else None,
    }


def test_ingest_creates_dataset_and_origdatablock_once(cfs: Cfs, scicat: FakeSciCat) -> None:
    cfs.write(
        "P1/scan_001.dat", data=b"# sample: Fe3O4\n# energy = 708.5\n# field: 1.5 T\n1 2\n3 4\n"
    )
    path = cfs.root / "P1/scan_001.dat"
    result = ingest(path, checksum="md5:0123456789abcdef")
    assert result["created"] is True and result["origdatablock_created"] is True
    assert result["dataset_name"] == "scan_001.dat"
    assert result["source_folder"] == str(cfs.root / "P1")
    assert result["catalogue"] == "scicat"

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
    (odb,) = scicat.origdatablocks[result["pid"]]
    assert odb["dataFileList"] == [
        {
            "path": "scan_001.dat",
            "size": path.stat().st_size,
            "time": doc["creationTime"],
            "chk": "0123456789abcdef",
        }
    ]

    again = ingest(path)
    assert again["pid"] == result["pid"]
    assert again["created"] is False and again["origdatablock_created"] is False
    assert len(scicat.datasets) == 1 and len(scicat.origdatablocks[result["pid"]]) == 1


def test_ingest_retry_after_missing_origdatablock_completes_it(
    cfs: Cfs, scicat: FakeSciCat
) -> None:
    cfs.write("P1/a.h5", 10)
    path = cfs.root / "P1/a.h5"
    scicat.fail["post-origdatablocks"] = (500, '{"message": "boom"}')
    with pytest.raises(RuntimeError, match="datasets_origdatablock_create"):
        ingest(path)
    del scicat.fail["post-origdatablocks"]
    result = ingest(path)
    assert result["created"] is False and result["origdatablock_created"] is True
    assert len(scicat.datasets) == 1


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


def test_add_location_records_datablocks_idempotently(cfs: Cfs, scicat: FakeSciCat) -> None:
    cfs.write("P1/a.h5", 10)
    cfs.write("P1/big.h5", 20)
    pid_a = ingest(cfs.root / "P1/a.h5")["pid"]
    pid_b = ingest(cfs.root / "P1/big.h5")["pid"]
    manifest = [manifest_for(cfs, "P1/a.h5", 10), manifest_for(cfs, "P1/big.h5", 20, member=False)]

    result = scicat_add_location(beamline="bl402", manifest=manifest)
    assert result == {"updated": [pid_a, pid_b], "unchanged": [], "catalogue": "scicat"}
    (block_a,) = scicat.datablocks[pid_a]
    assert block_a["archiveId"] == "/home/a/als/bl402/raw/P1/P1_x.tar:P1/a.h5"
    assert block_a["size"] == 10 and block_a["packedSize"] == 10
    assert block_a["dataFileList"][0]["path"] == "P1/a.h5"
    (block_b,) = scicat.datablocks[pid_b]
    assert block_b["archiveId"] == "/home/a/als/bl402/raw/P1/big.h5"
    assert block_b["dataFileList"][0]["path"] == "big.h5"

    again = scicat_add_location(beamline="bl402", manifest=manifest)
    assert again == {"updated": [], "unchanged": [pid_a, pid_b], "catalogue": "scicat"}
    assert len(scicat.datablocks[pid_a]) == 1 and len(scicat.datablocks[pid_b]) == 1


def test_add_location_missing_dataset_names_file_and_writes_nothing(
    cfs: Cfs, scicat: FakeSciCat
) -> None:
    cfs.write("P1/a.h5", 10)
    ingest(cfs.root / "P1/a.h5")
    manifest = [manifest_for(cfs, "P1/a.h5", 10), manifest_for(cfs, "P1/unknown.h5", 5)]
    with pytest.raises(RuntimeError, match=r"no SciCat dataset .*P1/unknown\.h5"):
        scicat_add_location(beamline="bl402", manifest=manifest)
    assert scicat.datablocks == {}


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
    cfs.write("P1/a.h5", 10)
    result = ingest(cfs.root / "P1/a.h5")
    loc = scicat_add_location(beamline="bl402", manifest=[manifest_for(cfs, "P1/a.h5", 10)])

    # an error whose server answer echoes the token
    cfs.write("P1/b.h5", 10)
    scicat.fail["create"] = (500, json.dumps({"message": f"bad token {TOKEN}"}))
    with pytest.raises(RuntimeError) as info:
        ingest(cfs.root / "P1/b.h5")
    error_text = "".join(traceback.format_exception(info.value))
    assert "***" in str(info.value)

    out = capsys.readouterr()
    everything = json.dumps([result, loc]) + caplog.text + out.out + out.err + error_text
    _assert_no_secret(everything, TOKEN)


def test_password_login_never_leaks(
    cfs: Cfs,
    scicat: FakeSciCat,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("SCICAT_TOKEN")
    monkeypatch.setenv("SCICAT_USERNAME", "ingestor")
    monkeypatch.setenv("SCICAT_PASSWORD", PASSWORD)
    cfs.write("P1/a.h5", 10)
    result = ingest(cfs.root / "P1/a.h5")
    assert result["created"] is True and "POST login" in scicat.calls

    monkeypatch.setenv("SCICAT_PASSWORD", PASSWORD + "-wrong")
    with pytest.raises(RuntimeError) as info:
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


def test_unreachable_url_with_credentials_is_scrubbed(
    cfs: Cfs, scicat: FakeSciCat, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCICAT_URL", "https://user:urlpass-SECRET@elsewhere.test/api/v3")
    cfs.write("P1/a.h5", 10)
    with pytest.raises(RuntimeError) as info:
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
    assert BASE_URL  # the URL alone is not a credential


def test_sqlite_local_stand_in(cfs: Cfs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "state" / "catalogue.sqlite"
    monkeypatch.setenv("SCICAT_URL", f"sqlite:///{db}")
    for name in ("SCICAT_TOKEN", "SCICAT_TOKEN_FILE", "SCICAT_USERNAME", "SCICAT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    cfs.write("P1/a.dat", data=b"# sample: Ni\n1 2\n")
    first = ingest(cfs.root / "P1/a.dat")
    assert first["catalogue"] == "local stand-in" and first["created"] is True
    assert first["pid"].startswith("local/")
    second = ingest(cfs.root / "P1/a.dat")
    assert second["pid"] == first["pid"] and second["created"] is False

    manifest = [manifest_for(cfs, "P1/a.dat", (cfs.root / "P1/a.dat").stat().st_size)]
    assert scicat_add_location(beamline="bl402", manifest=manifest)["updated"] == [first["pid"]]
    assert scicat_add_location(beamline="bl402", manifest=manifest)["unchanged"] == [first["pid"]]

    con = sqlite3.connect(db)
    (doc,) = [json.loads(r[0]) for r in con.execute("SELECT doc FROM datasets")]
    assert doc["sourceFolder"] == str(cfs.root / "P1") and doc["datasetName"] == "a.dat"
    assert doc["creationLocation"] == "/ALS/bl402" and doc["type"] == "raw"
    assert doc["scientificMetadata"]["header"] == {"sample": "Ni"}
    (odb,) = [json.loads(r[0]) for r in con.execute("SELECT doc FROM origdatablocks")]
    assert odb["datasetId"] == first["pid"] and odb["dataFileList"][0]["path"] == "a.dat"
    (block,) = [json.loads(r[0]) for r in con.execute("SELECT doc FROM datablocks")]
    assert block["archiveId"].endswith("P1_x.tar:P1/a.dat")
    con.close()

    with pytest.raises(RuntimeError, match="no SciCat dataset"):
        scicat_add_location(beamline="bl402", manifest=[manifest_for(cfs, "P1/none.dat", 1)])
