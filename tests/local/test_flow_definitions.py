"""The shipped flow_definitions/*.json, unchanged, on the engine with stub providers.

Every definition runs to SUCCEEDED with canned results in the real action-provider result
shapes, and every Action's Catch (plus every Choice Default) reaches its Fail state.

Input convention: on Globus Flows the run state starts as the run body itself (paths are
`$.x`). The definitions keep the user's document under `input` (`$.input.x`) and their input
schemas require `{"input": {...}}`, so the body is `{"input": <document>}` -- consistent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dichroism_control.local.engine import (
    FAILED,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
    Engine,
)

from .conftest import FakeClock

DEFINITIONS = Path(__file__).resolve().parents[2] / "flow_definitions"
TRANSFER = "https://transfer.actions.globus.org/transfer"
DELETE = "https://transfer.actions.globus.org/delete"
STAT = "https://transfer.actions.globus.org/stat"
COMPUTE = "https://compute.actions.globus.org/v3"

DTN = "11111111-1111-4111-8111-111111111111"
CFS = "22222222-2222-4222-8222-222222222222"
EP = "33333333-3333-4333-8333-333333333333"
F_INGEST = "44444444-4444-4444-8444-444444444444"
F_ARCHIVE = "55555555-5555-4555-8555-555555555555"
F_LOCATION = "66666666-6666-4666-8666-666666666666"
F_VERIFY = "77777777-7777-4777-8777-777777777777"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEFINITIONS / f"{name}.json").read_text())
    return doc


def body(document: dict[str, Any]) -> dict[str, Any]:
    """The run body for a flow-input document (see ARCHITECTURE.md)."""
    return {"input": document}


INPUTS: dict[str, dict[str, Any]] = {
    "new_file": {
        "beamline": "bl402",
        "source": {"collection_id": DTN, "path": "/data/bl402/P1/scan.h5", "size": 123},
        "destination": {"collection_id": CFS, "path": "/global/cfs/als/4.0.2/raw/P1/scan.h5"},
        "scicat": {
            "endpoint_id": EP,
            "function_id": F_INGEST,
            "proposal": "P1",
            "metadata": {
                "instrument_id": "bl402",
                "owner_group": "als",
                "access_groups": ["bl402"],
                "owner": "Beamline 4.0.2",
                "contact_email": "bl402@example.org",
                "principal_investigator": "PI",
            },
        },
    },
    "archive": {
        "beamline": "bl402",
        "proposal": "P1",
        "cfs_root": "/global/cfs/als/4.0.2/raw",
        "files": [{"path": "P1/scan.h5", "size": 123}],
        "hpss": {
            "endpoint_id": EP,
            "function_id": F_ARCHIVE,
            "directory": "/home/a/als/bl402/raw",
            "archive_name": "P1_2026-11-25_ab12cd",
            "options": {
                "bundle_max_bytes": 10**12,
                "single_file_threshold_bytes": 65 * 2**30,
                "max_sessions": 4,
                "walltime_seconds": 3600,
            },
        },
        "scicat": {"endpoint_id": EP, "function_id": F_LOCATION},
    },
    "prune": {
        "beamline": "bl402",
        "location": "compute_dtn",
        "target": {
            "collection_id": DTN,
            "root": "/data/bl402",
            "files": [{"path": "P1/scan.h5", "size": 123}],
        },
        "safe": {"root": "/global/cfs/als/4.0.2/raw"},
        "verify": {"endpoint_id": EP, "function_id": F_VERIFY},
    },
}


class StubProvider(ActionProvider):
    """Canned results in the real provider shapes; `fail=True` makes the action FAILED."""

    def __init__(self, respond: Callable[[dict[str, Any]], Any]) -> None:
        self.respond = respond
        self.bodies: list[dict[str, Any]] = []
        self.fail = False

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        self.bodies.append(body)
        if self.fail:
            return ActionStatus(
                status=FAILED, details={"code": "Failed", "description": "stub failure"}
            )
        return ActionStatus(status=SUCCEEDED, details=self.respond(body), label=body.get("label"))


def transfer_task(body: dict[str, Any], kind: str = "TRANSFER") -> dict[str, Any]:
    items = len(body.get("DATA", []))
    return {
        "DATA_TYPE": "task",
        "task_id": "b1e0a5c2-0000-4000-8000-000000000001",
        "type": kind,
        "status": "SUCCEEDED",
        "nice_status": "OK",
        "label": body.get("label"),
        "files": items,
        "files_transferred": items if kind == "TRANSFER" else 0,
        "files_skipped": 0,
        "subtasks_succeeded": items,
        "subtasks_failed": 0,
        "bytes_transferred": 123 if kind == "TRANSFER" else 0,
        "verify_checksum": body.get("verify_checksum", False),
        "sync_level": 3 if body.get("sync_level") == "checksum" else None,
        "fatal_error": None,
    }


def stat_result(size: int = 123) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def respond(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "DATA_TYPE": "file",
            "name": body["path"].rsplit("/", 1)[-1],
            "type": "file",
            "size": size,
            "last_modified": "2026-11-25 12:00:00+00:00",
            "permissions": "0644",
            "user": "als",
            "group": "als",
            "link_target": None,
        }

    return respond


def compute_result(
    results: dict[str, Callable[[dict[str, Any]], Any]],
) -> Callable[[dict[str, Any]], Any]:
    def respond(body: dict[str, Any]) -> dict[str, Any]:
        outputs = [results[task["function_id"]](task["kwargs"]) for task in body["tasks"]]
        return {
            "result": outputs,
            "results": [
                {"task_id": f"task-{i}", "status": "success", "output": out}
                for i, out in enumerate(outputs)
            ],
        }

    return respond


def hpss_archive(kwargs: dict[str, Any]) -> dict[str, Any]:
    manifest = [
        {
            "path": f["path"],
            "cfs_path": f"{kwargs['cfs_root']}/{f['path']}",
            "size": f["size"],
            "tape_path": f"{kwargs['hpss_dir']}/P1/{kwargs['archive_name']}.tar",
            "member": f["path"],
        }
        for f in kwargs["files"]
    ]
    return {
        "manifest": manifest,
        "archives": [manifest[0]["tape_path"]],
        "sent": len(manifest),
        "skipped": 0,
    }


def verify(all_verified: Any = True) -> Callable[[dict[str, Any]], Any]:
    def respond(kwargs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verified": len(kwargs["files"]),
            "delete": [{"path": f"{kwargs['target_root']}/{f['path']}"} for f in kwargs["files"]],
        }
        if all_verified is not None:
            out["all_verified"] = all_verified
        return out

    return respond


def providers(*, stat_size: int = 123, all_verified: Any = True) -> dict[str, StubProvider]:
    return {
        TRANSFER: StubProvider(transfer_task),
        DELETE: StubProvider(lambda body: transfer_task(body, "DELETE")),
        STAT: StubProvider(stat_result(stat_size)),
        COMPUTE: StubProvider(
            compute_result(
                {
                    F_INGEST: lambda kw: {
                        "pid": "pid-1",
                        "created": True,
                        "dataset_name": "scan",
                        "source_folder": "/global/cfs/als/4.0.2/raw/P1",
                    },
                    F_ARCHIVE: hpss_archive,
                    F_LOCATION: lambda kw: {"updated": ["pid-1"], "unchanged": []},
                    F_VERIFY: verify(all_verified),
                }
            )
        ),
    }


def run(name: str, stubs: dict[str, StubProvider], flow_input: dict[str, Any] | None = None) -> Any:
    definition = load(name)["definition"]
    clock = FakeClock()
    engine = Engine(stubs, sleep=clock.sleep, now=clock.now)
    data = body(flow_input if flow_input is not None else INPUTS[name])
    return engine.run(definition, data, context={"run_id": "run-0001", "username": "alice"})


@pytest.mark.parametrize("name", sorted(p.stem for p in DEFINITIONS.glob("*.json")))
def test_definition_is_valid_for_the_engine(name: str) -> None:
    definition = load(name)["definition"]
    Engine(providers()).check(definition)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_inputs_match_the_shipped_schemas(name: str) -> None:
    jsonschema.validate(body(INPUTS[name]), load(name)["input_schema"])


def test_every_shipped_definition_has_a_smoke_input() -> None:
    assert sorted(p.stem for p in DEFINITIONS.glob("*.json")) == sorted(INPUTS)


def test_new_file_succeeds() -> None:
    stubs = providers()
    outcome = run("new_file", stubs)
    assert outcome.status == "SUCCEEDED", outcome.details
    assert stubs[TRANSFER].bodies == [
        {
            "source_endpoint": DTN,
            "destination_endpoint": CFS,
            "DATA": [
                {
                    "source_path": "/data/bl402/P1/scan.h5",
                    "destination_path": "/global/cfs/als/4.0.2/raw/P1/scan.h5",
                }
            ],
            "sync_level": "checksum",
            "verify_checksum": True,
            "label": "run-0001",
        }
    ]
    assert stubs[STAT].bodies == [
        {"endpoint_id": CFS, "path": "/global/cfs/als/4.0.2/raw/P1/scan.h5"}
    ]
    (ingest,) = stubs[COMPUTE].bodies
    assert ingest["tasks"][0]["kwargs"]["size"] == 123
    assert outcome.output["ingest"]["details"]["result"][0]["pid"] == "pid-1"
    assert [e["details"].get("state_name") for e in outcome.log if e["code"].endswith("Started")][
        1:
    ] == [
        "TransferToCFS",
        "StatDestination",
        "CheckSize",
        "IngestToSciCat",
    ]


def test_archive_succeeds_and_passes_the_manifest_on() -> None:
    stubs = providers()
    outcome = run("archive", stubs)
    assert outcome.status == "SUCCEEDED", outcome.details
    archive_call, record_call = stubs[COMPUTE].bodies
    assert archive_call["tasks"][0]["function_id"] == F_ARCHIVE
    assert archive_call["tasks"][0]["kwargs"]["hpss_dir"] == "/home/a/als/bl402/raw"
    manifest = record_call["tasks"][0]["kwargs"]["manifest"]
    assert manifest[0]["tape_path"].endswith("P1_2026-11-25_ab12cd.tar")
    assert outcome.output["scicat"]["details"]["result"][0] == {
        "updated": ["pid-1"],
        "unchanged": [],
    }


def test_prune_succeeds_and_deletes_exactly_the_verified_list() -> None:
    stubs = providers()
    outcome = run("prune", stubs)
    assert outcome.status == "SUCCEEDED", outcome.details
    assert stubs[DELETE].bodies == [
        {
            "endpoint": DTN,
            "recursive": False,
            "DATA": [{"path": "/data/bl402/P1/scan.h5"}],
            "label": "run-0001",
        }
    ]


# Every Action's Catch reaches its Fail state:
# (flow, failing provider, which call of it fails, expected Fail state)
CATCH_PATHS = [
    ("new_file", TRANSFER, 1, "TransferFailed"),
    ("new_file", STAT, 1, "StatFailed"),
    ("new_file", COMPUTE, 1, "IngestFailed"),
    ("archive", COMPUTE, 1, "ArchiveFailed"),
    ("archive", COMPUTE, 2, "RecordFailed"),
    ("prune", COMPUTE, 1, "VerificationFailed"),
    ("prune", DELETE, 1, "DeleteFailed"),
]


class FailNth(StubProvider):
    def __init__(self, inner: StubProvider, nth: int, how: str) -> None:
        super().__init__(inner.respond)
        self.nth = nth
        self.how = how

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        if len(self.bodies) + 1 == self.nth:
            self.bodies.append(body)
            if self.how == "unable":
                raise ActionUnableToRun("endpoint is offline", code="EndpointOffline")
            return ActionStatus(
                status=FAILED, details={"code": "Failed", "description": "stub failure"}
            )
        return super().run(body, ctx)


@pytest.mark.parametrize("how", ["failed", "unable"])
@pytest.mark.parametrize(("name", "url", "nth", "fail_state"), CATCH_PATHS)
def test_catch_reaches_fail_state(name: str, url: str, nth: int, fail_state: str, how: str) -> None:
    stubs = providers()
    stubs[url] = FailNth(stubs[url], nth, how)
    outcome = run(name, stubs)
    assert outcome.status == "FAILED"
    assert outcome.details["code"] == "FlowFailed"
    assert outcome.details["state_name"] == fail_state
    assert outcome.details["error"] == fail_state
    error = outcome.output["error"]
    assert error["Error"] == ("ActionFailedException" if how == "failed" else "ActionUnableToRun")
    assert "stub failure" in error["Cause"] or "endpoint is offline" in error["Cause"]
    if name == "prune":
        assert (not stubs[DELETE].bodies) or fail_state == "DeleteFailed"


def test_every_action_state_has_a_catch_path_tested() -> None:
    tested = {(name, state) for name, _, _, state in CATCH_PATHS}
    for name in INPUTS:
        states = load(name)["definition"]["States"]
        for spec in states.values():
            if spec["Type"] == "Action":
                (catcher,) = spec["Catch"]
                assert (name, catcher["Next"]) in tested


def test_size_mismatch_reaches_fail_state() -> None:
    outcome = run("new_file", providers(stat_size=99))
    assert outcome.details["state_name"] == "SizeMismatch"
    assert "ingest" not in outcome.output


@pytest.mark.parametrize("all_verified", [False, None, "true"])
def test_prune_not_verified_deletes_nothing(all_verified: Any) -> None:
    stubs = providers(all_verified=all_verified)
    outcome = run("prune", stubs)
    assert outcome.details["state_name"] == "NotVerified"
    assert stubs[DELETE].bodies == []


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_unwrapped_document_fails_with_the_missing_path_named(name: str) -> None:
    definition = load(name)["definition"]
    clock = FakeClock()
    outcome = Engine(providers(), sleep=clock.sleep, now=clock.now).run(definition, INPUTS[name])
    assert outcome.status == "FAILED"
    assert outcome.code == "ParameterPathError"
    assert "'$.input." in outcome.details["description"]
