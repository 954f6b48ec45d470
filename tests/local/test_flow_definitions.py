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
F_TAPE = "88888888-8888-4888-8888-888888888888"
F_FLIGHT = "99999999-9999-4999-8999-999999999999"
SCICAT_EP = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
MD5 = "0cc175b9c0f1b6a831c399e269772661"
MTIME = "2026-11-25 12:00:00+00:00"
DEADLINE = "2026-11-27T12:00:00+00:00"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEFINITIONS / f"{name}.json").read_text())
    return doc


def body(document: dict[str, Any]) -> dict[str, Any]:
    """The run body for a flow-input document (see ARCHITECTURE.md)."""
    return {"input": document}


def prune_file(path: str, size: int = 123, **extra: Any) -> dict[str, Any]:
    return {"path": path, "size": size, "mtime": MTIME, "checksum": MD5, "version": 1, **extra}


INPUTS: dict[str, dict[str, Any]] = {
    "new_file": {
        "beamline": "bl402",
        "source": {
            "collection_id": DTN,
            "path": "/data/bl402/P1/scan.h5",
            "size": 123,
            "mtime": MTIME,
            "checksum": MD5,
            "version": 1,
        },
        "destination": {"collection_id": CFS, "path": "/global/cfs/als/4.0.2/raw/P1/scan.h5"},
        "deadline": DEADLINE,
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
        "files": [{"path": "P1/scan.h5", "size": 123, "checksum": MD5, "version": 1}],
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
            "files": [prune_file("P1/scan.h5")],
        },
        "safe": {"root": "/global/cfs/als/4.0.2/raw"},
        "verify": {"endpoint_id": EP, "function_id": F_VERIFY},
        "deadline": DEADLINE,
    },
    "flight_check": {
        "beamline": "bl402",
        "source": {
            "collection_id": DTN,
            "path": "/data/bl402/.dichroism-canary/bl402-20261125T120000Z-0a1b2c3d.dat",
            "size": 123,
            "checksum": MD5,
            "delete": True,
        },
        "destination": {
            "collection_id": CFS,
            "directory": "/global/cfs/als/4.0.2/raw/.dichroism-canary",
        },
        "nersc": {"endpoint_id": EP, "function_id": F_FLIGHT, "hpss_dir": "/home/a/als/bl402/raw"},
        "scicat": {"endpoint_id": SCICAT_EP, "function_id": F_FLIGHT},
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
        answer = self.respond(body)
        if isinstance(answer, ActionStatus):
            return answer
        return ActionStatus(status=SUCCEEDED, details=answer, label=body.get("label"))


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
        "sync_level": body.get("sync_level"),
        "fatal_error": None,
    }


# What a target looks like now, by path: (type, size, last_modified), None (the stat fails)
# or "NotFound" (the stat succeeds and says NotFound in details.code).
Targets = dict[str, tuple[str, int, str] | str | None]


def stat_result(size: int = 123, targets: Targets | None = None) -> Callable[..., Any]:
    def respond(body: dict[str, Any]) -> Any:
        kind, found_size, modified = ("file", size, MTIME)
        if targets is not None and body["path"] in targets:
            found = targets[body["path"]]
            if found == "NotFound":
                return {"code": "NotFound", "description": f"{body['path']} does not exist"}
            if found is None:
                # A path that does not exist: the stat action fails (NotFound).
                return ActionStatus(
                    status=FAILED,
                    details={"code": "NotFound", "description": f"{body['path']} not found"},
                )
            assert isinstance(found, tuple)
            kind, found_size, modified = found
        return {
            "DATA_TYPE": "file",
            "name": body["path"].rsplit("/", 1)[-1],
            "type": kind,
            "size": found_size,
            "last_modified": modified,
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
    n = len(kwargs["files"])
    return {
        "sent": n,
        "skipped": 0,
        "archives": [f"{kwargs['hpss_dir']}/P1/{kwargs['archive_name']}.tar"],
        "where": [0] * n,
        "changed": [],
    }


def endpoint_checks(kwargs: dict[str, Any]) -> dict[str, Any]:
    """compute_functions/flight.py's result shape, every check passing."""
    checks = [{"name": n, "ok": True, "detail": "fine", "remedy": None} for n in kwargs["checks"]]
    return {"ok": True, "host": "nid001", "checks": checks}


def verify(kept: list[dict[str, Any]] | None = None) -> Callable[[dict[str, Any]], Any]:
    def respond(kwargs: dict[str, Any]) -> dict[str, Any]:
        unsafe = {k["i"] for k in kept or []}
        return {
            "algorithm": "md5",
            "checked": len(kwargs["files"]),
            "safe": [i for i in range(len(kwargs["files"])) if i not in unsafe],
            "kept": kept or [],
        }

    return respond


def providers(
    *,
    stat_size: int = 123,
    kept: list[dict[str, Any]] | None = None,
    targets: Targets | None = None,
) -> dict[str, StubProvider]:
    return {
        TRANSFER: StubProvider(transfer_task),
        DELETE: StubProvider(lambda body: transfer_task(body, "DELETE")),
        STAT: StubProvider(stat_result(stat_size, targets)),
        COMPUTE: StubProvider(
            compute_result(
                {
                    F_INGEST: lambda kw: {
                        "pid": "pid-1",
                        "created": True,
                        "updated": False,
                        "dataset_name": "scan",
                        "source_folder": "/global/cfs/als/4.0.2/raw/P1",
                    },
                    F_ARCHIVE: hpss_archive,
                    F_LOCATION: lambda kw: {"updated": 1, "unchanged": 0, "missing": 0},
                    F_VERIFY: verify(kept),
                    F_TAPE: verify(kept),
                    F_FLIGHT: endpoint_checks,
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


def test_new_file_succeeds_and_globus_verifies_the_detected_checksum() -> None:
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
                    "external_checksum": MD5,
                    "checksum_algorithm": "MD5",
                }
            ],
            "sync_level": 3,
            "verify_checksum": True,
            "preserve_timestamp": True,
            "deadline": DEADLINE,
            "notify_on_succeeded": False,
            "label": "run-0001",
        }
    ]
    assert stubs[STAT].bodies == [
        {"endpoint_id": CFS, "path": "/global/cfs/als/4.0.2/raw/P1/scan.h5"}
    ]
    (ingest,) = stubs[COMPUTE].bodies
    assert ingest["tasks"][0]["kwargs"] == {
        "beamline": "bl402",
        "file_path": "/global/cfs/als/4.0.2/raw/P1/scan.h5",
        "size": 123,
        "checksum": MD5,
        "version": 1,
        "proposal": "P1",
        "metadata": INPUTS["new_file"]["scicat"]["metadata"],
    }
    assert outcome.output["ingest"]["details"]["result"][0]["pid"] == "pid-1"


def test_archive_succeeds_and_passes_the_placement_on() -> None:
    stubs = providers()
    outcome = run("archive", stubs)
    assert outcome.status == "SUCCEEDED", outcome.details
    archive_call, record_call = stubs[COMPUTE].bodies
    assert archive_call["tasks"][0]["function_id"] == F_ARCHIVE
    assert archive_call["tasks"][0]["kwargs"] == {
        "beamline": "bl402",
        "cfs_root": "/global/cfs/als/4.0.2/raw",
        "files": INPUTS["archive"]["files"],
        "hpss_dir": "/home/a/als/bl402/raw",
        "archive_name": "P1_2026-11-25_ab12cd",
        "options": INPUTS["archive"]["hpss"]["options"],
    }
    assert record_call["tasks"][0]["kwargs"] == {
        "beamline": "bl402",
        "cfs_root": "/global/cfs/als/4.0.2/raw",
        "hpss_dir": "/home/a/als/bl402/raw",
        "files": INPUTS["archive"]["files"],
        "archive": {
            "sent": 1,
            "skipped": 0,
            "archives": ["/home/a/als/bl402/raw/P1/P1_2026-11-25_ab12cd.tar"],
            "where": [0],
            "changed": [],
        },
    }


def _prune_input(files: list[dict[str, Any]], location: str = "compute_dtn") -> dict[str, Any]:
    document = json.loads(json.dumps(INPUTS["prune"]))
    document["target"]["files"] = files
    if location == "cfs":
        document["location"] = "cfs"
        document["target"]["root"] = "/global/cfs/als/4.0.2/raw"
        document["safe"] = {"root": "/home/a/als/bl402/raw", "archives": ["/home/a/als/x.tar"]}
        document["verify"]["function_id"] = F_TAPE
    return document


def test_prune_deletes_exactly_what_is_safe_and_unchanged_and_reports_the_rest() -> None:
    files = [prune_file(f"P1/f{i}.h5") for i in range(5)]
    stubs = providers(
        kept=[{"i": 1, "reason": "checksum_differs", "detail": "CFS copy ab12"}],
        targets={
            "/data/bl402/P1/f2.h5": ("file", 124, MTIME),  # grew since it was recorded
            "/data/bl402/P1/f3.h5": None,  # gone
            "/data/bl402/P1/f4.h5": ("file", 123, "2026-11-25 12:00:01+00:00"),  # rewritten
        },
    )
    outcome = run("prune", stubs, _prune_input(files))
    assert outcome.status == "SUCCEEDED", outcome.details
    # The unsafe file is never even looked at; every other target is stat'ed once.
    assert [b["path"] for b in stubs[STAT].bodies] == [
        "/data/bl402/P1/f0.h5",
        "/data/bl402/P1/f2.h5",
        "/data/bl402/P1/f3.h5",
        "/data/bl402/P1/f4.h5",
    ]
    assert stubs[DELETE].bodies == [
        {
            "endpoint": DTN,
            "recursive": False,
            "ignore_missing": True,
            "DATA": [{"path": "/data/bl402/P1/f0.h5"}],
            "deadline": DEADLINE,
            "notify_on_succeeded": False,
            "label": "run-0001",
        }
    ]
    check = outcome.output["check"]
    assert (check["delete"], check["changed"], check["gone"]) == ([0], [2, 4], [3])
    assert outcome.output["verification"]["details"]["result"][0]["kept"] == [
        {"i": 1, "reason": "checksum_differs", "detail": "CFS copy ab12"}
    ]
    assert outcome.output["summary"] == {
        "deleting": 1,
        "kept_changed": 2,
        "kept_gone": 1,
        "kept_unsafe": 1,
    }


def test_a_target_reported_not_found_by_a_successful_stat_is_gone() -> None:
    stubs = providers(targets={"/data/bl402/P1/scan.h5": "NotFound"})
    outcome = run("prune", stubs)
    assert outcome.status == "SUCCEEDED"
    assert outcome.output["check"]["gone"] == [0] and stubs[DELETE].bodies == []


def test_a_target_that_became_a_directory_is_kept() -> None:
    stubs = providers(targets={"/data/bl402/P1/scan.h5": ("dir", 123, MTIME)})
    outcome = run("prune", stubs)
    assert outcome.status == "SUCCEEDED"
    assert outcome.output["check"]["changed"] == [0] and stubs[DELETE].bodies == []


def test_cfs_prune_asks_the_tape_verifier_with_the_archives() -> None:
    stubs = providers()
    outcome = run("prune", stubs, _prune_input([prune_file("P1/a.h5", archive=0)], "cfs"))
    assert outcome.status == "SUCCEEDED", outcome.details
    (call,) = stubs[COMPUTE].bodies
    assert call["tasks"][0]["function_id"] == F_TAPE
    assert call["tasks"][0]["kwargs"] == {
        "target_root": "/global/cfs/als/4.0.2/raw",
        "safe_root": "/home/a/als/bl402/raw",
        "files": [prune_file("P1/a.h5", archive=0)],
        "archives": ["/home/a/als/x.tar"],
    }
    assert stubs[DELETE].bodies[0]["DATA"] == [{"path": "/global/cfs/als/4.0.2/raw/P1/a.h5"}]


def test_nothing_verified_deletes_nothing() -> None:
    stubs = providers(kept=[{"i": 0, "reason": "missing", "detail": ""}])
    outcome = run("prune", stubs)
    assert outcome.status == "SUCCEEDED"
    assert outcome.output["summary"]["deleting"] == 0 and "delete" not in outcome.output
    assert stubs[STAT].bodies == [] and stubs[DELETE].bodies == []


# Every Action's Catch reaches its Fail state:
# (flow, failing provider, which call of it fails, expected Fail state, input)
CATCH_PATHS = [
    ("new_file", TRANSFER, 1, "TransferFailed", None),
    ("new_file", STAT, 1, "StatFailed", None),
    ("new_file", COMPUTE, 1, "IngestFailed", None),
    ("archive", COMPUTE, 1, "ArchiveFailed", None),
    ("archive", COMPUTE, 2, "RecordFailed", None),
    ("prune", COMPUTE, 1, "VerificationFailed", None),
    ("prune", COMPUTE, 1, "VerificationFailed", "cfs"),
    ("prune", STAT, 1, "StatUnavailable", None),
    ("prune", DELETE, 1, "DeleteFailed", None),
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


# A FAILED prune stat is recorded, not raised (ExceptionOnActionFailure: false): only an
# action that cannot run at all reaches StatUnavailable.
CATCH_CASES = [
    (*path, how)
    for path in CATCH_PATHS
    for how in ("failed", "unable")
    if not (path[3] == "StatUnavailable" and how == "failed")
]


@pytest.mark.parametrize(("name", "url", "nth", "fail_state", "variant", "how"), CATCH_CASES)
def test_catch_reaches_fail_state(
    name: str, url: str, nth: int, fail_state: str, variant: str | None, how: str
) -> None:
    stubs = providers()
    stubs[url] = FailNth(stubs[url], nth, how)
    flow_input = _prune_input([prune_file("P1/a.h5", archive=0)], variant) if variant else None
    outcome = run(name, stubs, flow_input)
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
    tested = {(name, state) for name, _, _, state, _ in CATCH_PATHS}
    carried_on = {("flight_check", state) for state, _, _, _ in FLIGHT_CATCHES}
    for name in INPUTS:
        states = load(name)["definition"]["States"]
        for state_name, spec in states.items():
            if spec["Type"] == "Action":
                (catcher,) = spec["Catch"]
                if states[catcher["Next"]]["Type"] == "Fail":
                    assert (name, catcher["Next"]) in tested
                else:  # records the error and carries on (the flight check)
                    assert (name, state_name) in carried_on


def test_size_mismatch_reaches_fail_state() -> None:
    outcome = run("new_file", providers(stat_size=99))
    assert outcome.details["state_name"] == "SizeMismatch"
    assert "ingest" not in outcome.output


def test_an_unknown_location_deletes_nothing() -> None:
    """The schema refuses it; the definition refuses it too (run-local of a crafted input)."""
    flow_input = _prune_input([prune_file("P1/a.h5")])
    flow_input["location"] = "elsewhere"
    stubs = providers()
    outcome = run("prune", stubs, flow_input)
    assert outcome.details["state_name"] == "UnknownLocation"
    assert stubs[COMPUTE].bodies == [] and stubs[DELETE].bodies == []


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_unwrapped_document_fails_with_the_missing_path_named(name: str) -> None:
    definition = load(name)["definition"]
    clock = FakeClock()
    outcome = Engine(providers(), sleep=clock.sleep, now=clock.now).run(definition, INPUTS[name])
    assert outcome.status == "FAILED"
    assert outcome.code in ("ParameterPathError", "ChoicePathError", "ExpressionError")
    description = outcome.details["description"]
    assert "$.input." in description or "name 'input' is not present" in description


# -- the flight check ------------------------------------------------------------------------
CANARY_AT_CFS = "/global/cfs/als/4.0.2/raw/.dichroism-canary/bl402-run-0001.dat"
CANARY_AT_DTN = INPUTS["flight_check"]["source"]["path"]


def test_flight_check_round_trip_with_exact_action_bodies() -> None:
    stubs = providers()
    outcome = run("flight_check", stubs)
    assert outcome.status == "SUCCEEDED", outcome.details
    # The CFS name comes from the run id: a recurring timer's fixed body gets a new one each run.
    assert stubs[TRANSFER].bodies == [
        {
            "source_endpoint": DTN,
            "destination_endpoint": CFS,
            "DATA": [
                {
                    "source_path": CANARY_AT_DTN,
                    "destination_path": CANARY_AT_CFS,
                    "external_checksum": MD5,
                    "checksum_algorithm": "MD5",
                }
            ],
            "verify_checksum": True,
            "notify_on_succeeded": False,
            "notify_on_failed": False,
            "label": "run-0001",
        }
    ]
    assert stubs[STAT].bodies == [{"endpoint_id": CFS, "path": CANARY_AT_CFS}]
    assert stubs[DELETE].bodies == [
        {
            "endpoint": endpoint,
            "recursive": False,
            "ignore_missing": True,
            "DATA": [{"path": path}],
            "notify_on_succeeded": False,
            "notify_on_failed": False,
            "label": "run-0001",
        }
        for endpoint, path in ((CFS, CANARY_AT_CFS), (DTN, CANARY_AT_DTN))
    ]
    nersc, scicat = stubs[COMPUTE].bodies
    assert nersc == {
        "endpoint_id": EP,
        "tasks": [
            {
                "function_id": F_FLIGHT,
                "args": [],
                "kwargs": {"checks": ["hsi", "htar", "hpss"], "hpss_dir": "/home/a/als/bl402/raw"},
            }
        ],
    }
    assert scicat["endpoint_id"] == SCICAT_EP
    assert scicat["tasks"][0]["kwargs"] == {"checks": ["scicat"]}


def test_the_recurring_checks_canary_stays_at_the_source() -> None:
    stubs = providers()
    flow_input = json.loads(json.dumps(INPUTS["flight_check"]))
    flow_input["source"]["delete"] = False
    outcome = run("flight_check", stubs, flow_input)
    assert outcome.status == "SUCCEEDED"
    assert [b["endpoint"] for b in stubs[DELETE].bodies] == [CFS]


def test_a_failed_endpoint_check_fails_the_run_after_every_step_ran() -> None:
    stubs = providers()
    broken = {"ok": False, "host": "nid001", "checks": [{"name": "hsi", "ok": False}]}
    stubs[COMPUTE] = StubProvider(
        compute_result({F_FLIGHT: lambda kw: broken if "hpss_dir" in kw else endpoint_checks(kw)})
    )
    outcome = run("flight_check", stubs)
    assert outcome.status == "FAILED" and outcome.details["state_name"] == "FlightCheckFailed"
    assert len(stubs[COMPUTE].bodies) == 2 and len(stubs[DELETE].bodies) == 2


def test_a_copy_of_the_wrong_size_fails_the_run() -> None:
    outcome = run("flight_check", providers(stat_size=99))
    assert outcome.status == "FAILED" and outcome.details["state_name"] == "FlightCheckFailed"


# (failing state, its provider, which call of it, where its error is recorded)
FLIGHT_CATCHES = [
    ("CopyCanary", TRANSFER, 1, "copy_error"),
    ("StatCanary", STAT, 1, "stat_error"),
    ("DeleteCanaryAtCFS", DELETE, 1, "delete_cfs_error"),
    ("DeleteCanaryAtSource", DELETE, 2, "delete_source_error"),
    ("CheckNersc", COMPUTE, 1, "nersc_error"),
    ("CheckScicat", COMPUTE, 2, "scicat_error"),
]


@pytest.mark.parametrize("how", ["failed", "unable"])
@pytest.mark.parametrize(("state", "url", "nth", "key"), FLIGHT_CATCHES)
def test_a_flight_step_that_raises_is_recorded_and_the_rest_still_run(
    state: str, url: str, nth: int, key: str, how: str
) -> None:
    """Every step runs, so one run names every problem; the run still ends in a Fail."""
    stubs = providers()
    stubs[url] = FailNth(stubs[url], nth, how)
    outcome = run("flight_check", stubs)
    assert outcome.status == "FAILED"
    assert outcome.details["state_name"] == "FlightCheckFailed"
    error = outcome.output[key]
    assert error["Error"] == ("ActionFailedException" if how == "failed" else "ActionUnableToRun")
    assert "stub failure" in error["Cause"] or "endpoint is offline" in error["Cause"]
    # The steps after the failing one ran all the same.
    assert len(stubs[TRANSFER].bodies) == 1 and len(stubs[STAT].bodies) == 1
    assert len(stubs[DELETE].bodies) == 2 and len(stubs[COMPUTE].bodies) == 2


def test_the_delete_list_holds_file_indices_not_loop_positions() -> None:
    """Issue 13 (flow mutation `MarkForDelete-appends-pos`, tools/mutate_flow.py): with the
    first file unverified, the loop's position 0 stands for file 1. A flow that recorded the
    position would delete file 0 — the one whose safe copy did NOT verify."""
    files = [prune_file("P1/f0.h5"), prune_file("P1/f1.h5")]
    stubs = providers(kept=[{"i": 0, "reason": "checksum_differs", "detail": "CFS copy ab12"}])
    outcome = run("prune", stubs, _prune_input(files))
    assert outcome.status == "SUCCEEDED", outcome.details
    assert [b["path"] for b in stubs[STAT].bodies] == ["/data/bl402/P1/f1.h5"]
    assert outcome.output["check"]["delete"] == [1]
    assert stubs[DELETE].bodies[0]["DATA"] == [{"path": "/data/bl402/P1/f1.h5"}]
