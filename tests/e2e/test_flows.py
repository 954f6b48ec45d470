"""The shipped flow definitions, bound to this deployment, on the local backend: every step,
every Catch, and every way a prune keeps a file (the verifier's per-file verdicts, the
target's stat at delete time, the input schema's bounds, the delete never going through a
directory symlink).

Bodies are written out in tests/e2e/conftest.py (not built by the code under test); the
local backend checks them against the bound input schemas as Flows does (400)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.errors import PermanentBackendError
from tests.e2e.conftest import Stack


def _fail_state(run: dict[str, Any]) -> str | None:
    return (run.get("details") or {}).get("state_name")


def _error_text(run: dict[str, Any]) -> str:
    return str(((run["details"].get("output") or {}).get("error") or {}).get("Cause"))


def _output(run: dict[str, Any]) -> dict[str, Any]:
    output: dict[str, Any] = run["details"]["output"]
    return output


def _transfer(stack: Stack, rel: str, size: int = 3000) -> dict[str, Any]:
    stack.write_source(rel, size)
    run = stack.run("new_file", stack.new_file_body(rel))
    assert run["status"] == "SUCCEEDED", run["details"]
    return run


def _archive(stack: Stack, rels: list[str], name: str = "P1_e2e") -> dict[str, Any]:
    """Archive `rels` from CFS; returns the hpss_archive result."""
    files = [stack.item(rel, on="cfs") for rel in rels]
    run = stack.run("archive", stack.archive_body(files, name=name))
    assert run["status"] == "SUCCEEDED", run["details"]
    result: dict[str, Any] = _output(run)["archive"]["details"]["result"][0]
    return result


def _cfs_items(stack: Stack, rels: list[str], archived: dict[str, Any]) -> list[dict[str, Any]]:
    """CFS prune items for `rels` (archived in this order), placed as the archive said."""
    return [
        {**stack.item(rel, on="cfs"), "archive": archived["where"][i]} for i, rel in enumerate(rels)
    ]


def _prune(stack: Stack, location: str, files: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    run = stack.run("prune", stack.prune_body(location, files, **kw))
    return run


def _kept(run: dict[str, Any]) -> dict[int, str]:
    """The verifier's verdicts for the files it did not prove safe: index -> reason."""
    kept = _output(run)["verification"]["details"]["result"][0]["kept"]
    return {k["i"]: k["reason"] for k in kept}


# ------------------------------------------------------------------ new_file
def test_new_file_transfers_verifies_and_ingests(stack: Stack) -> None:
    run = _transfer(stack, "P1/scan_001.dat", 5000)
    source, copy = stack.source("P1/scan_001.dat"), stack.cfs("P1/scan_001.dat")
    assert copy.read_bytes() == source.read_bytes()
    # preserve_timestamp: the copy carries the source's mtime (whole seconds at least)
    assert int(copy.stat().st_mtime) == int(source.stat().st_mtime)
    output = _output(run)
    transfer = output["transfer"]["details"]
    assert transfer["files_transferred"] == 1 and transfer["bytes_transferred"] == 5000
    assert transfer["verify_checksum"] is True and transfer["sync_level"] == 3
    assert output["stat"]["details"]["size"] == 5000
    ingest = output["ingest"]["details"]
    pid = ingest["result"][0]["pid"]
    assert ingest["results"][0]["output"]["pid"] == pid
    datasets = stack.catalogue("SELECT doc FROM datasets")
    assert [d["pid"] for d in datasets] == [pid]
    assert datasets[0]["sourceFolder"] == str(stack.cfs("P1"))
    # the run document is Flows-shaped
    assert run["label"] == "e2e" and run["tags"] == ["e2e", "new_file"]
    assert run["user_role"] == "run_owner" and run["flow_id"] == stack.flows["new_file"]
    codes = [e["code"] for e in stack.backend.iter_run_logs(run["run_id"])]
    assert codes[0] == "FlowStarted" and codes[-1] == "FlowSucceeded"


def test_new_file_again_is_a_checksum_skip(stack: Stack) -> None:
    _transfer(stack, "P1/scan.dat")
    run = stack.run("new_file", stack.new_file_body("P1/scan.dat"))
    transfer = _output(run)["transfer"]["details"]
    assert run["status"] == "SUCCEEDED"
    assert transfer["files_skipped"] == 1 and transfer["files_transferred"] == 0
    # SciCat ingest is idempotent: still one dataset
    assert len(stack.catalogue("SELECT doc FROM datasets")) == 1


def test_new_file_missing_source_is_caught_as_transfer_failed(stack: Stack) -> None:
    run = stack.run("new_file", stack.new_file_body("P1/nope.dat"))
    assert run["status"] == "FAILED"
    assert _fail_state(run) == "TransferFailed"
    assert "FILE_NOT_FOUND" in _error_text(run)
    assert not stack.cfs("P1/nope.dat").exists()


def test_new_file_size_mismatch_fails_after_copy(stack: Stack) -> None:
    stack.write_source("P1/scan.dat", 100)
    run = stack.run("new_file", stack.new_file_body("P1/scan.dat", size=101))
    assert run["status"] == "FAILED" and _fail_state(run) == "SizeMismatch"
    assert stack.catalogue("SELECT doc FROM datasets") == []


def test_a_source_changed_after_detection_fails_its_external_checksum(stack: Stack) -> None:
    """The body carries the MD5 recorded at detection; Transfer checks the bytes it moves
    against it, so a file rewritten since (same name, same size) never lands on CFS as
    that version."""
    path = stack.write_source("P1/scan.dat", 3000)
    body = stack.new_file_body("P1/scan.dat")
    path.write_bytes(b"x" * 3000)
    run = stack.run("new_file", body)
    assert run["status"] == "FAILED" and _fail_state(run) == "TransferFailed"
    assert "EXTERNAL_CHECKSUM_MISMATCH" in _error_text(run)
    assert not stack.cfs("P1/scan.dat").exists()
    assert stack.catalogue("SELECT doc FROM datasets") == []


def test_a_source_swapped_for_a_symlink_fails_its_external_checksum(
    stack: Stack, tmp_path: Path
) -> None:
    path = stack.write_source("P1/scan.dat", 3000)
    body = stack.new_file_body("P1/scan.dat")
    other = tmp_path / "other.dat"
    other.write_bytes(b"y" * 3000)
    path.unlink()
    path.symlink_to(other)
    run = stack.run("new_file", body)
    assert run["status"] == "FAILED" and _fail_state(run) == "TransferFailed"
    assert "EXTERNAL_CHECKSUM_MISMATCH" in _error_text(run)
    assert not stack.cfs("P1/scan.dat").exists()


# ------------------------------------------------------------------ archive
def test_archive_to_fake_tape_and_record_location(stack: Stack) -> None:
    rels = ["P1/a.dat", "P1/b.dat"]
    for rel in rels:
        _transfer(stack, rel)
    result = _archive(stack, rels)
    assert len(result["archives"]) == 1 and result["archives"][0].endswith("/P1/P1_e2e.tar")
    assert result["where"] == [0, 0] and result["changed"] == []
    tar = stack.tape(result["archives"][0])
    assert tar.is_file()
    # the archive's checksum list, which hpss_verify reads back before a CFS prune
    sums = Path(f"{tar}.md5").read_text()
    for rel in rels:
        assert f"{stack.item(rel, on='cfs')['checksum']}  {rel}" in sums
    assert len(stack.catalogue("SELECT doc FROM datablocks")) == 2


def test_archive_leaves_out_a_file_that_is_no_longer_the_version_asked_for(
    stack: Stack,
) -> None:
    for rel in ("P1/a.dat", "P1/b.dat"):
        _transfer(stack, rel)
    files = [stack.item(rel, on="cfs") for rel in ("P1/a.dat", "P1/b.dat")]
    stack.cfs("P1/b.dat").write_bytes(b"z" * 3000)  # same size, other bytes
    run = stack.run("archive", stack.archive_body(files))
    assert run["status"] == "SUCCEEDED", run["details"]
    result = _output(run)["archive"]["details"]["result"][0]
    assert result["where"] == [0, None]
    assert result["changed"] == [{"i": 1, "reason": "checksum_differs"}]


def test_archive_failure_is_caught(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    _transfer(stack, "P1/a.dat")
    monkeypatch.setenv("FAKE_HPSS_FAIL", "htar")
    run = stack.run("archive", stack.archive_body([stack.item("P1/a.dat", on="cfs")]))
    assert run["status"] == "FAILED" and _fail_state(run) == "ArchiveFailed"
    assert "FAKE_HPSS_FAIL" in _error_text(run)
    assert stack.catalogue("SELECT doc FROM datablocks") == []


# ------------------------------------------------------------------ prune: deletes
def test_prune_compute_dtn_deletes_after_cfs_verification(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    run = _prune(stack, "compute_dtn", [stack.item("P1/a.dat")])
    assert run["status"] == "SUCCEEDED", run["details"]
    assert not stack.source("P1/a.dat").exists()
    assert stack.cfs("P1/a.dat").exists()
    output = _output(run)
    assert output["summary"] == {
        "deleting": 1,
        "kept_changed": 0,
        "kept_gone": 0,
        "kept_unsafe": 0,
    }
    assert output["delete"]["details"]["files_deleted"] == 1


def test_prune_cfs_deletes_after_tape_verification(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    archived = _archive(stack, ["P1/a.dat"])
    files = _cfs_items(stack, ["P1/a.dat"], archived)
    run = _prune(stack, "cfs", files, archives=archived["archives"])
    assert run["status"] == "SUCCEEDED", run["details"]
    assert not stack.cfs("P1/a.dat").exists()
    assert stack.source("P1/a.dat").exists()  # only the target location is touched


def test_one_unverified_file_is_kept_and_the_verified_one_deleted(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    stack.write_source("P1/b.dat")  # never transferred
    run = _prune(stack, "compute_dtn", [stack.item("P1/a.dat"), stack.item("P1/b.dat")])
    assert run["status"] == "SUCCEEDED", run["details"]
    assert _kept(run) == {1: "missing"}
    assert not stack.source("P1/a.dat").exists() and stack.source("P1/b.dat").exists()
    assert _output(run)["summary"]["kept_unsafe"] == 1


# ------------------------------------------------------------------ prune: kept files
def _nothing_deleted(run: dict[str, Any]) -> None:
    assert run["status"] == "SUCCEEDED", run["details"]
    assert "delete" not in _output(run)
    assert _output(run)["summary"]["deleting"] == 0


def test_prune_keeps_a_file_whose_safe_copy_is_missing(stack: Stack) -> None:
    stack.write_source("P1/a.dat")
    run = _prune(stack, "compute_dtn", [stack.item("P1/a.dat")])
    _nothing_deleted(run)
    assert _kept(run) == {0: "missing"}
    assert stack.source("P1/a.dat").exists()


@pytest.mark.parametrize(
    ("cfs_bytes", "reason"),
    [
        (b"short", "size_differs"),
        (None, "size_differs"),  # a LARGER copy is not a copy either
        (b"q" * 3000, "checksum_differs"),  # same size, other bytes
    ],
)
def test_prune_keeps_a_file_whose_safe_copy_differs(
    stack: Stack, cfs_bytes: bytes | None, reason: str
) -> None:
    _transfer(stack, "P1/a.dat")
    copy = stack.cfs("P1/a.dat")
    copy.write_bytes(cfs_bytes if cfs_bytes is not None else copy.read_bytes() + b"+")
    run = _prune(stack, "compute_dtn", [stack.item("P1/a.dat")])
    _nothing_deleted(run)
    assert _kept(run) == {0: reason}
    assert stack.source("P1/a.dat").exists()


def test_prune_keeps_a_cfs_file_never_archived(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    run = _prune(stack, "cfs", [{**stack.item("P1/a.dat", on="cfs"), "archive": -1}])
    _nothing_deleted(run)
    assert _kept(run) == {0: "not_on_tape"}
    assert stack.cfs("P1/a.dat").exists()


def test_prune_keeps_a_target_changed_after_its_safe_copy_was_made(stack: Stack) -> None:
    """CFS holds the recorded version, but the compute-dtn file was rewritten since (same
    size): the stat at delete time sees another mtime, so it is kept, not deleted."""
    _transfer(stack, "P1/a.dat")
    item = stack.item("P1/a.dat")
    source = stack.source("P1/a.dat")
    source.write_bytes(b"w" * 3000)
    later = time.time() + 120
    os.utime(source, (later, later))
    run = _prune(stack, "compute_dtn", [item])
    _nothing_deleted(run)
    assert _output(run)["summary"]["kept_changed"] == 1
    assert source.read_bytes() == b"w" * 3000


def test_prune_counts_a_target_already_gone_and_deletes_nothing(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    item = stack.item("P1/a.dat")
    stack.source("P1/a.dat").unlink()
    run = _prune(stack, "compute_dtn", [item])
    _nothing_deleted(run)
    assert _output(run)["summary"]["kept_gone"] == 1


def test_prune_keeps_a_safe_copy_reached_through_a_symlink_out_of_its_root(
    stack: Stack, tmp_path: Path
) -> None:
    stack.write_source("P1/a.dat")
    outside = tmp_path / "elsewhere.dat"
    outside.write_bytes(stack.source("P1/a.dat").read_bytes())
    stack.cfs("P1").mkdir(parents=True, exist_ok=True)
    os.symlink(outside, stack.cfs("P1/a.dat"))
    run = _prune(stack, "compute_dtn", [stack.item("P1/a.dat")])
    _nothing_deleted(run)
    assert _kept(run) == {0: "outside_root"}
    assert stack.source("P1/a.dat").exists() and outside.exists()


def test_prune_never_deletes_through_a_directory_symlink_in_the_target(
    stack: Stack, tmp_path: Path
) -> None:
    """compute-dtn `P1` is a symlink to a directory elsewhere: the safe copy verifies and
    the stat (which follows links) matches, but the delete refuses the path, and the file
    behind the link survives."""
    _transfer(stack, "P1/a.dat")
    elsewhere = tmp_path / "elsewhere"
    stack.source("P1").rename(elsewhere)
    stack.source("P1").symlink_to(elsewhere, target_is_directory=True)
    run = _prune(stack, "compute_dtn", [stack.item("P1/a.dat")])
    assert run["status"] == "FAILED" and _fail_state(run) == "DeleteFailed"
    assert "PERMISSION_DENIED" in _error_text(run)
    assert (elsewhere / "a.dat").is_file()


def test_prune_verifier_refuses_a_whole_batch_whose_safe_root_is_absent(stack: Stack) -> None:
    stack.write_source("P1/a.dat")
    cfs_root = stack.cfs("P1").parent
    cfs_root.rename(cfs_root.with_name("moved"))
    run = _prune(stack, "compute_dtn", [stack.item("P1/a.dat")])
    assert run["status"] == "FAILED" and _fail_state(run) == "VerificationFailed"
    assert "is not a directory here; nothing was checked" in _error_text(run)
    assert stack.source("P1/a.dat").exists()


# ------------------------------------------------------------------ prune: schema bounds
def test_prune_input_outside_this_deployment_is_refused_by_the_service(stack: Stack) -> None:
    stack.write_source("P1/a.dat")
    refused = "400 BAD_REQUEST: input does not match the flow's input_schema"

    body = stack.prune_body("compute_dtn", [{**stack.item("P1/a.dat"), "path": "../up.dat"}])
    with pytest.raises(PermanentBackendError, match=refused) as caught:
        stack.start("prune", body)
    assert caught.value.http_status == 400

    body = stack.prune_body("compute_dtn", [stack.item("P1/a.dat")])
    body["input"]["target"]["root"] = "/etc"  # not a configured root (bound by deploy)
    with pytest.raises(PermanentBackendError, match=refused):
        stack.start("prune", body)

    body = stack.prune_body("compute_dtn", [stack.item("P1/a.dat")])
    body["input"]["safe"]["root"] = body["input"]["target"]["root"]  # target == safe
    with pytest.raises(PermanentBackendError, match=refused):
        stack.start("prune", body)

    # bl402's compute-dtn proven safe by bl631's CFS: a root of another beamline
    body = stack.prune_body("compute_dtn", [stack.item("P1/a.dat")])
    other = stack.prune_body("compute_dtn", [stack.item("P1/a.dat")], beamline="bl631")
    body["input"]["safe"]["root"] = other["input"]["safe"]["root"]
    with pytest.raises(PermanentBackendError, match=refused):
        stack.start("prune", body)

    # the verifier must be the one deployed for this location (hpss_verify cannot prove
    # a CFS copy)
    body = stack.prune_body("compute_dtn", [stack.item("P1/a.dat")])
    body["input"]["verify"]["function_id"] = stack.functions["hpss_verify"]
    with pytest.raises(PermanentBackendError, match=refused):
        stack.start("prune", body)

    assert stack.source("P1/a.dat").exists()
    assert list(stack.backend.iter_runs(flow_ids=[stack.flows["prune"]])) == []
