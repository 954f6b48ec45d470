"""The shipped flow definitions, unchanged, on the local backend: every step, every Catch,
every prune refusal (nothing deleted), and the safe prunes (deleted after verification)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from dichroism_control.errors import PermanentBackendError
from tests.e2e.conftest import Stack


def _fail_state(run: dict[str, Any]) -> str | None:
    return (run.get("details") or {}).get("state_name")


def _error_text(run: dict[str, Any]) -> str:
    return str(((run["details"].get("output") or {}).get("error") or {}).get("Cause"))


def _transfer(stack: Stack, rel: str, size: int = 3000) -> dict[str, Any]:
    stack.write_source(rel, size)
    run = stack.run("new_file", stack.new_file_body(rel, size))
    assert run["status"] == "SUCCEEDED", run["details"]
    return run


def _archive(stack: Stack, rels: list[str], name: str = "P1_e2e") -> dict[str, Any]:
    files = [{"path": rel, "size": stack.cfs(rel).stat().st_size} for rel in rels]
    run = stack.run("archive", stack.archive_body(files, name=name))
    assert run["status"] == "SUCCEEDED", run["details"]
    return run


# ------------------------------------------------------------------ new_file
def test_new_file_transfers_verifies_and_ingests(stack: Stack) -> None:
    run = _transfer(stack, "P1/scan_001.dat", 5000)
    assert stack.cfs("P1/scan_001.dat").read_bytes() == stack.source("P1/scan_001.dat").read_bytes()
    output = run["details"]["output"]
    transfer = output["transfer"]["details"]
    assert transfer["files_transferred"] == 1 and transfer["bytes_transferred"] == 5000
    assert transfer["verify_checksum"] is True
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
    run = stack.run("new_file", stack.new_file_body("P1/scan.dat", 3000))
    transfer = run["details"]["output"]["transfer"]["details"]
    assert run["status"] == "SUCCEEDED"
    assert transfer["files_skipped"] == 1 and transfer["files_transferred"] == 0
    # SciCat ingest is idempotent: still one dataset
    assert len(stack.catalogue("SELECT doc FROM datasets")) == 1


def test_new_file_missing_source_is_caught_as_transfer_failed(stack: Stack) -> None:
    run = stack.run("new_file", stack.new_file_body("P1/nope.dat", 10))
    assert run["status"] == "FAILED"
    assert _fail_state(run) == "TransferFailed"
    assert "FILE_NOT_FOUND" in _error_text(run)
    assert not stack.cfs("P1/nope.dat").exists()


def test_new_file_size_mismatch_fails_after_copy(stack: Stack) -> None:
    stack.write_source("P1/scan.dat", 100)
    run = stack.run("new_file", stack.new_file_body("P1/scan.dat", 101))
    assert run["status"] == "FAILED" and _fail_state(run) == "SizeMismatch"
    assert stack.catalogue("SELECT doc FROM datasets") == []


# ------------------------------------------------------------------ archive
def test_archive_to_fake_tape_and_record_location(stack: Stack) -> None:
    rels = ["P1/a.dat", "P1/b.dat"]
    for rel in rels:
        _transfer(stack, rel)
    run = _archive(stack, rels)
    manifest = run["details"]["output"]["archive"]["details"]["result"][0]["manifest"]
    tars = {m["tape_path"] for m in manifest}
    assert len(tars) == 1 and next(iter(tars)).endswith("/P1/P1_e2e.tar")
    assert stack.tape(next(iter(tars))).is_file()
    recorded = run["details"]["output"]["scicat"]["details"]["result"][0]
    assert len(recorded["updated"]) == 2
    assert len(stack.catalogue("SELECT doc FROM datablocks")) == 2


def test_archive_failure_is_caught(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    _transfer(stack, "P1/a.dat")
    monkeypatch.setenv("FAKE_HPSS_FAIL", "htar")
    files = [{"path": "P1/a.dat", "size": 3000}]
    run = stack.run("archive", stack.archive_body(files))
    assert run["status"] == "FAILED" and _fail_state(run) == "ArchiveFailed"
    assert "FAKE_HPSS_FAIL" in _error_text(run)
    assert stack.catalogue("SELECT doc FROM datablocks") == []


# ------------------------------------------------------------------ prune: safe cases
def test_prune_compute_dtn_deletes_after_cfs_verification(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    run = stack.run("prune", stack.prune_body("compute_dtn", [{"path": "P1/a.dat", "size": 3000}]))
    assert run["status"] == "SUCCEEDED", run["details"]
    assert not stack.source("P1/a.dat").exists()
    assert stack.cfs("P1/a.dat").exists()
    assert run["details"]["output"]["delete"]["details"]["files_deleted"] == 1


def test_prune_cfs_deletes_after_tape_verification(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    _archive(stack, ["P1/a.dat"])
    run = stack.run("prune", stack.prune_body("cfs", [{"path": "P1/a.dat", "size": 3000}]))
    assert run["status"] == "SUCCEEDED", run["details"]
    assert not stack.cfs("P1/a.dat").exists()
    assert stack.source("P1/a.dat").exists()  # only the target location is touched


# ------------------------------------------------------------------ prune: refusals
def test_prune_refuses_when_safe_copy_missing(stack: Stack) -> None:
    stack.write_source("P1/a.dat")
    run = stack.run("prune", stack.prune_body("compute_dtn", [{"path": "P1/a.dat", "size": 3000}]))
    assert run["status"] == "FAILED" and _fail_state(run) == "VerificationFailed"
    assert "missing" in _error_text(run)
    assert stack.source("P1/a.dat").exists()


def test_prune_refuses_when_size_differs(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    stack.cfs("P1/a.dat").write_bytes(b"short")
    run = stack.run("prune", stack.prune_body("compute_dtn", [{"path": "P1/a.dat", "size": 3000}]))
    assert run["status"] == "FAILED" and _fail_state(run) == "VerificationFailed"
    assert "size differs" in _error_text(run)
    assert stack.source("P1/a.dat").exists()


def test_prune_refuses_when_tape_copy_absent(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")  # on CFS, never archived
    run = stack.run("prune", stack.prune_body("cfs", [{"path": "P1/a.dat", "size": 3000}]))
    assert run["status"] == "FAILED" and _fail_state(run) == "VerificationFailed"
    assert stack.cfs("P1/a.dat").exists()


def test_prune_refuses_one_unverified_file_and_deletes_none(stack: Stack) -> None:
    _transfer(stack, "P1/a.dat")
    stack.write_source("P1/b.dat")  # never transferred
    files = [{"path": "P1/a.dat", "size": 3000}, {"path": "P1/b.dat", "size": 3000}]
    run = stack.run("prune", stack.prune_body("compute_dtn", files))
    assert run["status"] == "FAILED" and "P1/b.dat" in _error_text(run)
    assert stack.source("P1/a.dat").exists() and stack.source("P1/b.dat").exists()


def test_prune_path_outside_root_rejected_by_schema(stack: Stack) -> None:
    stack.write_source("P1/a.dat")
    body = stack.prune_body("compute_dtn", [{"path": "../escape.dat", "size": 3000}])
    with pytest.raises(PermanentBackendError) as caught:
        stack.start("prune", body)
    assert caught.value.http_status == 400 and "input_schema" in str(caught.value)
    body = stack.prune_body("compute_dtn", [{"path": "P1/a.dat", "size": 3000}])
    body["input"]["target"]["root"] = "/etc"  # not a configured root (specialised enum)
    with pytest.raises(PermanentBackendError):
        stack.start("prune", body)
    assert stack.source("P1/a.dat").exists()


def test_prune_path_outside_root_refused_by_verifier(stack: Stack, tmp_path: Any) -> None:
    # The safe copy "exists" only through a symlink leaving the CFS root: not verified.
    stack.write_source("P1/a.dat")
    outside = tmp_path / "elsewhere.dat"
    outside.write_bytes(stack.source("P1/a.dat").read_bytes())
    stack.cfs("P1").mkdir(parents=True, exist_ok=True)
    os.symlink(outside, stack.cfs("P1/a.dat"))
    run = stack.run("prune", stack.prune_body("compute_dtn", [{"path": "P1/a.dat", "size": 3000}]))
    assert run["status"] == "FAILED" and _fail_state(run) == "VerificationFailed"
    assert "outside root" in _error_text(run)
    assert stack.source("P1/a.dat").exists() and outside.exists()
