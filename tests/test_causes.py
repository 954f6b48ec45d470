"""The one-line cause of a failed run, from realistic run documents.

The shapes follow what the Flows service returns for our definitions: a run that ends in a
`Fail` state, with the caught `{"Error": "ActionFailedException", "Cause": "<JSON dump of the
action status document>"}` under `$.error`. The action status documents follow the Compute
action provider (globus-compute `docs/actionprovider.rst`: `details.result` /
`details.results[i]`, the task's exception as traceback text) and the Transfer action
provider (the Transfer task document: `fatal_error`, `nice_status`, `nice_status_details`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dichroism_control.causes import (
    explain_error,
    explain_run,
    explain_text,
    from_traceback,
    log_entry_cause,
)
from dichroism_control.lifecycle.base import failure_reason

IDENTITY = "urn:globus:auth:identity:0e5f1a6c-91c4-4e1f-9b38-2d4c55c1a9e7"
CFS = "/global/cfs/cdirs/als/data_mover/4.0.2/raw"
ARCHIVE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/global/common/software/als/compute/lib/python3.11/site-packages/'
    'globus_compute_endpoint/engines/helper.py", line 147, in _call_user_function\n'
    "    result_data = f(*args, **kwargs)\n"
    '  File "<hpss_archive>", line 212, in hpss_archive\n'
    '  File "<hpss_archive>", line 118, in _plan\n'
    f"NotADirectoryError: [Errno 20] Not a directory: '{CFS}/P1/scan_0001.h5/'\n"
)


def _action(details: dict[str, Any], *, state: str, status: str = "FAILED") -> dict[str, Any]:
    """An action status document as the Flows service stores it in a Catch's Cause."""
    return {
        "action_id": "tg_44f09e3d-c920-4f3a-969a-301b019af1b1",
        "completion_time": "2026-03-02T04:11:27.412950+00:00",
        "creator_id": IDENTITY,
        "details": details,
        "display_status": status,
        "label": None,
        "manage_by": [IDENTITY],
        "monitor_by": [IDENTITY, "urn:globus:groups:id:6b4d5c3a-0000-4000-8000-0000000000aa"],
        "release_after": "P30D",
        "start_time": "2026-03-02T04:09:02.118004+00:00",
        "status": status,
        "state_name": state,
    }


def _failed_run(fail_state: str, fail_cause: str, error: dict[str, Any] | None) -> dict[str, Any]:
    output: dict[str, Any] = {"input": {"beamline": "bl402"}}
    if error is not None:
        output["error"] = error
    return {
        "run_id": "8d3c7e9a-6b0f-4d2e-9a51-0c8f2f8b1e11",
        "flow_id": "5f1e0000-0000-4000-8000-00000000f002",
        "status": "FAILED",
        "label": "bl402 archive P1_2026-03-02_ab12cd34ef",
        "start_time": "2026-03-02T04:09:00.000000+00:00",
        "completion_time": "2026-03-02T04:11:28.000000+00:00",
        "details": {
            "code": "FlowFailed",
            "description": f"Fail state {fail_state}",
            "state_name": fail_state,
            "error": fail_state,
            "cause": fail_cause,
            "output": output,
        },
    }


def _caught(action: dict[str, Any]) -> dict[str, Any]:
    return {"Error": "ActionFailedException", "Cause": json.dumps(action, sort_keys=True)}


# -- Compute ------------------------------------------------------------------------------
def test_compute_exception_hundreds_of_characters_into_the_dump() -> None:
    action = _action(
        {"exception": ARCHIVE_TRACEBACK, "result": None, "results": None}, state="ArchiveToTape"
    )
    error = _caught(action)
    assert error["Cause"].index("[Errno 20]") > 500  # where an operator would have to dig
    run = _failed_run(
        "ArchiveFailed",
        "Archiving to HPSS failed or could not be verified; nothing was recorded. "
        "The error details are in the run's output under $.error.",
        error,
    )
    cause = explain_run(run)
    assert cause.step == "ArchiveFailed"
    assert cause.message == (
        f"NotADirectoryError: [Errno 20] Not a directory: '{CFS}/P1/scan_0001.h5/'"
    )
    assert cause.remedy is not None and "path exists" in cause.remedy
    line = failure_reason(run)
    assert line.startswith("ArchiveFailed: NotADirectoryError: [Errno 20] Not a directory")
    assert "\n" not in line and " — next: check that the path exists" in line
    # --format json: the whole structure, decoded and untruncated.
    full = cause.as_dict()["detail"]["caught"]["error"]
    assert full["Cause"]["details"]["exception"] == ARCHIVE_TRACEBACK
    assert full["Cause"]["monitor_by"] == action["monitor_by"]


def test_compute_v3_results_with_a_per_task_exception() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "<scicat_ingest>", line 88, in scicat_ingest\n'
        "pyscicat.client.ScicatCommError: Error creating raw dataset: 401 Unauthorized\n"
    )
    details = {
        "result": [None],
        "results": [{"task_id": "c971987e-643b-48ab-af6f-47411234abcd", "exception": traceback}],
    }
    run = _failed_run(
        "IngestFailed",
        "The file is safely at CFS but the SciCat registration failed. "
        "The error details are in the run's output under $.error.",
        _caught(_action(details, state="IngestToSciCat")),
    )
    cause = explain_run(run)
    assert cause.message == "ScicatCommError: Error creating raw dataset: 401 Unauthorized"
    assert cause.step == "IngestFailed" and "SciCat" in (cause.remedy or "")


def test_verifier_list_of_files_is_the_cause_and_nothing_was_deleted() -> None:
    problems = "P1/a.h5: missing; P1/b.h5: size differs (safe copy 10, expected 12)"
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "<cfs_verify>", line 66, in cfs_verify\n'
        f"RuntimeError: 2 of 3 file(s) not verified under {CFS}: {problems}\n"
    )
    run = _failed_run(
        "VerificationFailed",
        "At least one file's safe copy is missing ... nothing was deleted.",
        _caught(_action({"exception": traceback}, state="VerifySafeCopies")),
    )
    line = failure_reason(run)
    # RuntimeError says nothing the message does not: dropped.
    assert line.startswith(f"VerificationFailed: 2 of 3 file(s) not verified under {CFS}: ")
    assert problems in line and "RuntimeError" not in line
    assert "next: nothing was deleted" in line


# -- Transfer -----------------------------------------------------------------------------
def _transfer_task(**fields: Any) -> dict[str, Any]:
    task = {
        "DATA_TYPE": "task",
        "task_id": "e7c1a2b4-0a6f-11f1-8f5e-0affd0d8c6a3",
        "type": "TRANSFER",
        "status": "FAILED",
        "label": "bl402 P1/scan_0001.h5",
        "files": 1,
        "files_transferred": 0,
        "bytes_transferred": 0,
        "faults": 3,
        "nice_status": None,
        "nice_status_details": None,
        "fatal_error": None,
        "source_endpoint_display_name": "bl402-compute-dtn",
        "destination_endpoint_display_name": "bl402-nersc_alsdev_raw",
    }
    task.update(fields)
    return task


def test_transfer_fatal_error() -> None:
    task = _transfer_task(
        fatal_error={
            "code": "PERMISSION_DENIED",
            "description": "Permission denied on /data/bl402/P1/scan_0001.h5",
        }
    )
    run = _failed_run(
        "TransferFailed",
        "The checksum-verified copy from compute-dtn to CFS failed. "
        "The error details are in the run's output under $.error.",
        _caught(_action(task, state="TransferToCFS")),
    )
    cause = explain_run(run)
    assert cause.line().startswith(
        "TransferFailed: PERMISSION_DENIED: Permission denied on /data/bl402/P1/scan_0001.h5"
        " — next: grant the service identity access"
    )


def test_transfer_nice_status_details_detail_line() -> None:
    details = (
        "Error (transfer)\n"
        "Endpoint: bl402-nersc_alsdev_raw (1b2c3d4e-0000-4000-8000-000000004020)\n"
        "Server: dtn03.nersc.gov:2811\n"
        f"File: {CFS}/P1/scan_0001.h5\n"
        "Command: STOR ~/P1/scan_0001.h5\n"
        "Message: Fatal FTP response\n"
        "---\n"
        "Details: 500-Command failed. : globus_xio: System error in write: "
        "Disk quota exceeded\\r\\n500 End.\\r\\n\n"
    )
    task = _transfer_task(
        status="ACTIVE", nice_status="QUOTA_EXCEEDED", nice_status_details=details
    )
    cause = explain_error(_caught(_action(task, state="TransferToCFS")))
    assert cause.message.startswith("500-Command failed. : globus_xio: System error in write: Disk")
    assert cause.remedy is not None and "quota" in cause.remedy


# -- other failure shapes -----------------------------------------------------------------
def test_action_unable_to_run_and_timeout() -> None:
    unable = {
        "Error": "ActionUnableToRun",
        "Cause": json.dumps({"code": "EndpointNotFound", "description": "endpoint is offline"}),
    }
    run = _failed_run(
        "ArchiveFailed", "The error details are in the run's output under $.error.", unable
    )
    assert (
        explain_run(run)
        .line()
        .startswith(
            "ArchiveFailed: EndpointNotFound: endpoint is offline — next: check that the endpoint"
        )
    )

    timeout = {
        "Error": "ActionTimeout",
        "Cause": json.dumps(_action({"result": None}, state="ArchiveToTape", status="ACTIVE")),
    }
    run = _failed_run("ArchiveFailed", "... under $.error.", timeout)
    cause = explain_run(run)
    assert cause.message == "the action was still ACTIVE when the state's WaitTime ran out"
    assert "ran out of time" in (cause.remedy or "")


def test_a_fail_state_without_an_action_error_uses_its_own_cause() -> None:
    run = _failed_run(
        "SizeMismatch", "The copy at CFS is missing or its size differs from the source scan.", None
    )
    assert failure_reason(run) == (
        "SizeMismatch: The copy at CFS is missing or its size differs from the source scan."
        " — next: the CFS copy differs from the scan: retry to send it again"
    )


def test_inactive_run_waiting_for_consent() -> None:
    run = {
        "run_id": "r1",
        "status": "INACTIVE",
        "details": {
            "code": "ConsentRequired",
            "description": "Missing required data_access consent for collection 1b2c3d4e",
            "required_scope": "https://auth.globus.org/scopes/actions.globus.org/transfer/transfer",
        },
    }
    cause = explain_run(run)
    assert cause.message.startswith("ConsentRequired: Missing required data_access consent")
    assert "a person must grant consent" in (cause.remedy or "")


def test_cancelled_and_unknown_shapes_still_give_a_line() -> None:
    assert explain_run({"status": "ENDED", "details": {}}).line() == "cancelled"
    assert explain_run({"status": "FAILED"}).line() == "run FAILED"
    text = explain_text("400 BAD_REQUEST: input invalid at source.path")
    assert text.message.startswith("400 BAD_REQUEST") and "schema" in (text.remedy or "")


def test_one_line_is_bounded_but_json_keeps_everything() -> None:
    many = "; ".join(f"P1/scan_{i:04d}.h5: missing" for i in range(400))
    traceback = f"Traceback (most recent call last):\nRuntimeError: 400 of 400 file(s): {many}\n"
    run = _failed_run(
        "VerificationFailed", "x", _caught(_action({"exception": traceback}, state="V"))
    )
    cause = explain_run(run)
    assert len(cause.line()) == 400 and cause.line().endswith("…")
    assert cause.message.endswith("P1/scan_0399.h5: missing")  # message itself: whole


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            ARCHIVE_TRACEBACK,
            f"NotADirectoryError: [Errno 20] Not a directory: '{CFS}/P1/scan_0001.h5/'",
        ),
        ("Traceback (most recent call last):\n  x\nRuntimeError: plain\n", "plain"),
        ("no traceback here", None),
    ],
)
def test_from_traceback(text: str, expected: str | None) -> None:
    assert from_traceback(text) == expected


def test_run_log_entries() -> None:
    action = _action({"exception": ARCHIVE_TRACEBACK}, state="ArchiveToTape")
    failed = {
        "code": "ActionFailed",
        "description": "State ArchiveToTape of type Action failed",
        "details": {"state_name": "ArchiveToTape", "error": _caught(action)},
    }
    cause = log_entry_cause(failed)
    assert cause is not None and cause.message.startswith("NotADirectoryError: [Errno 20]")
    started = {"code": "ActionStarted", "description": "started", "details": {"input": {}}}
    assert log_entry_cause(started) is None
