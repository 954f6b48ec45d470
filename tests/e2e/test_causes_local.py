"""The one-line cause of runs that really failed: the shipped definitions on the local
backend, whose run documents nest the cause as the Flows service does (Fail state ->
`$.error` -> JSON dump of the action status -> the Compute task's exception)."""

from __future__ import annotations

import pytest

from dichroism_control.causes import explain_run, log_entry_cause
from dichroism_control.lifecycle.base import failure_reason
from tests.e2e.conftest import Stack


def test_archive_failure_cause_is_the_htar_error(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.write_source("P1/a.dat")
    run = stack.run("new_file", stack.new_file_body("P1/a.dat"))
    assert run["status"] == "SUCCEEDED"
    monkeypatch.setenv("FAKE_HPSS_FAIL", "htar")
    run = stack.run("archive", stack.archive_body([stack.item("P1/a.dat", on="cfs")]))
    assert run["status"] == "FAILED"
    cause = explain_run(run)
    assert cause.step == "ArchiveFailed"
    assert "FAKE_HPSS_FAIL: simulated failure of htar" in cause.message
    assert "HPSS" in (cause.remedy or "")
    line = failure_reason(run)
    assert line.startswith("ArchiveFailed: ") and "\n" not in line
    # The raw Cause is a JSON string; the JSON view holds it decoded.
    raw = run["details"]["output"]["error"]["Cause"]
    assert isinstance(raw, str) and raw.index("FAKE_HPSS_FAIL") > 100
    detail = cause.as_dict()["detail"]["caught"]["error"]["Cause"]
    assert isinstance(detail, dict) and detail["status"] == "FAILED"

    # `runs logs`: the failed action's entry carries the same innermost cause.
    entries = list(stack.backend.iter_run_logs(run["run_id"]))
    failed = [c for c in (log_entry_cause(e) for e in entries) if c is not None]
    assert failed and all("FAKE_HPSS_FAIL" in c.message for c in failed)


def test_prune_verifier_refusal_cause_says_nothing_was_checked(stack: Stack) -> None:
    """A verifier that refuses the whole batch (its safe root is not there) fails the run
    before any stat or delete; the one-line cause says so and names the root."""
    stack.write_source("P1/a.dat")
    cfs_root = stack.cfs("P1").parent
    cfs_root.rename(cfs_root.with_name("moved"))
    run = stack.run("prune", stack.prune_body("compute_dtn", [stack.item("P1/a.dat")]))
    assert run["status"] == "FAILED"
    line = failure_reason(run)
    assert line.startswith("VerificationFailed: ") and "\n" not in line
    assert f"safe_root {cfs_root} is not a directory here; nothing was checked" in line
    assert explain_run(run).step == "VerificationFailed"
