"""`dichroism deploy` at the HTTP level: exact payloads, zero-write no-ops, 404, drift, pins."""

from __future__ import annotations

import copy
import inspect
import json
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dichroism_control.binding import specialise
from dichroism_control.config import FUNCTION_NAMES, load_config
from dichroism_control.definitions import load_document
from dichroism_control.deploy_state import Deployment
from tests.conftest import GROUP
from tests.deploy.helpers import FakeGlobus, run_cli

REPO = Path(__file__).resolve().parents[2]
SUBSCRIPTION = "5a05c000-0000-4000-8000-000000000001"
NO_SUBSCRIPTION_WARNING = (
    "dichroism: warning: globus.subscription_id is not set: flows without a subscription"
    " expire after 30 days and an identity may own only one such flow, so the four flows"
    " need one (docs.globus.org/api/flows/limits)\n"
)
FLOW_TITLES = {
    "new_file": "Dichroism: new scan",
    "archive": "Dichroism: archive",
    "prune": "Dichroism: prune",
    # Not in the test config's globus.flows: deployed with its default title.
    "flight_check": "Dichroism: flight check",
}


def _deploy(
    config_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any], str]:
    code, out, err = run_cli(
        ["--config", str(config_path), "--format", "json", "deploy", *extra], capsys
    )
    return code, json.loads(out) if out.strip() else {}, err


def _actions(report: dict[str, Any], kind: str) -> dict[str, str]:
    return {item["name"]: item["action"] for item in report[kind]}


def _expected_flow_body(config_path: Path, name: str) -> dict[str, Any]:
    """The flow as deployed: its schema bound to the config and to the function ids the
    same deploy registered (read back from the deploy state)."""
    config = load_config(config_path)
    document = specialise(
        load_document(config.definitions_path / f"{name}.json", name=name),
        config,
        functions=Deployment.resolve(config).functions,
    )
    keywords = {"new_file": ["ALS"]}.get(name, [])
    return {
        "title": FLOW_TITLES[name],
        "definition": document.definition,
        "input_schema": document.input_schema,
        "subtitle": "",
        "description": "",
        "keywords": keywords,
        "flow_viewers": [],
        "flow_starters": [GROUP],
        "flow_administrators": [],
        "run_managers": [GROUP],
        "run_monitors": [GROUP],
    }


def _copy_definitions(tmp_path: Path) -> Path:
    target = tmp_path / "flows"
    shutil.copytree(REPO / "flow_definitions", target)
    return target


def _with_definitions(directory: Path) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["flow_definitions_dir"] = str(directory)

    return mutate


def _edit_definition(directory: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    path = directory / f"{name}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


# -- first deploy -----------------------------------------------------------------------
def test_first_deploy_registers_functions_and_creates_flows_with_exact_payloads(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import globus_compute_sdk

    import compute_functions.cfs
    import compute_functions.flight
    import compute_functions.hpss
    import compute_functions.scicat

    config_path = write_config()
    code, report, _ = _deploy(config_path, capsys)

    assert code == 0
    assert report["ok"] is True and report["dry_run"] is False
    assert _actions(report, "functions") == {n: "registered" for n in FUNCTION_NAMES}
    assert _actions(report, "flows") == {n: "created" for n in FLOW_TITLES}

    modules = {
        "scicat_ingest": compute_functions.scicat,
        "scicat_add_location": compute_functions.scicat,
        "hpss_archive": compute_functions.hpss,
        "hpss_verify": compute_functions.hpss,
        "cfs_verify": compute_functions.cfs,
        "flight_check_endpoint": compute_functions.flight,
    }
    registrations = fake_globus.calls("POST", "/v3/functions")
    assert len(registrations) == len(FUNCTION_NAMES) == 6
    for call, name in zip(registrations, FUNCTION_NAMES, strict=True):
        function = getattr(modules[name], name)
        assert json.loads(call.request.body) == {
            "function_name": name,
            "function_code": inspect.getsource(modules[name]),
            "serialized": False,
            "meta": {
                "python_version": platform.python_version(),
                "sdk_version": globus_compute_sdk.__version__,
            },
            "description": inspect.getdoc(function).splitlines()[0],
        }

    creates = fake_globus.calls("POST", "/flows")
    assert [json.loads(c.request.body) for c in creates] == [
        _expected_flow_body(config_path, name) for name in FLOW_TITLES
    ]
    # The prune schema is specialised to the configured roots before upload.
    prune = json.loads(creates[2].request.body)["input_schema"]["properties"]["input"]
    assert prune["properties"]["beamline"]["enum"] == ["bl402", "bl631"]

    state = json.loads((config_path.parent / "state" / "deploy-state.json").read_text())
    ids = {item["name"]: item["id"] for item in report["flows"]}
    assert {n: e["id"] for n, e in state["globus"]["flows"].items()} == ids
    assert set(state["globus"]["functions"]) == set(FUNCTION_NAMES)


def test_second_deploy_with_nothing_changed_makes_zero_writes(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    assert _deploy(config_path, capsys)[0] == 0
    fake_globus.rsps.calls.reset()

    code, report, _ = _deploy(config_path, capsys)

    assert code == 0
    assert _actions(report, "functions") == {n: "unchanged" for n in FUNCTION_NAMES}
    assert _actions(report, "flows") == {n: "unchanged" for n in FLOW_TITLES}
    assert fake_globus.writes() == []  # not even a token grant: the tokens were stored
    assert [c.request.method for c in fake_globus.rsps.calls] == ["GET"] * len(FLOW_TITLES)


def test_dry_run_makes_zero_writes(
    fake_globus: FakeGlobus,
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flows_dir = _copy_definitions(tmp_path)
    config_path = write_config(_with_definitions(flows_dir))
    state_file = config_path.parent / "state" / "deploy-state.json"

    code, report, _ = _deploy(config_path, capsys, "--dry-run")
    assert code == 0 and report["dry_run"] is True
    assert _actions(report, "functions") == {n: "registered" for n in FUNCTION_NAMES}
    assert _actions(report, "flows") == {n: "created" for n in FLOW_TITLES}
    assert len(fake_globus.rsps.calls) == 0
    assert not state_file.exists()

    assert _deploy(config_path, capsys)[0] == 0
    before = state_file.read_text()
    _edit_definition(flows_dir, "archive", lambda d: d["definition"].update(Comment="v2"))
    fake_globus.rsps.calls.reset()

    code, out, _ = run_cli(["--config", str(config_path), "deploy", "--dry-run"], capsys)

    assert code == 0
    assert "dry run: nothing was written" in out
    assert "would update" in out and '+    "Comment": "v2"' in out
    assert fake_globus.writes() == []
    assert state_file.read_text() == before


# -- known ids ---------------------------------------------------------------------------
def test_flow_answering_404_is_recreated_and_reported(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    _, first, _ = _deploy(config_path, capsys)
    old_id = next(f["id"] for f in first["flows"] if f["name"] == "archive")
    del fake_globus.flows[old_id]
    fake_globus.rsps.calls.reset()

    code, report, _ = _deploy(config_path, capsys)

    assert code == 0
    archive = next(f for f in report["flows"] if f["name"] == "archive")
    assert archive["action"] == "recreated" and archive["note"] == "was 404"
    assert archive["previous_id"] == old_id and archive["id"] != old_id
    assert archive["id"] in fake_globus.flows
    writes = fake_globus.service_writes()
    assert [(c.request.method, c.request.path_url) for c in writes] == [("POST", "/flows")]
    assert json.loads(writes[0].request.body) == _expected_flow_body(config_path, "archive")
    code, out, _ = run_cli(["--config", str(config_path), "deploy"], capsys)
    assert code == 0 and "recreated" not in out


def test_flow_edited_on_the_service_is_reported_as_drift_and_not_overwritten(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    _, first, _ = _deploy(config_path, capsys)
    flow_id = next(f["id"] for f in first["flows"] if f["name"] == "new_file")
    remote = fake_globus.flows[flow_id]
    remote["title"] = "Edited in the web app"
    remote["definition"] = {**remote["definition"], "Comment": "edited"}
    fake_globus.rsps.calls.reset()

    code, report, err = _deploy(config_path, capsys)

    assert code == 1
    assert err.strip().splitlines()[-1] == "dichroism: error: deploy incomplete: new_file (drift)"
    new_file = next(f for f in report["flows"] if f["name"] == "new_file")
    assert new_file["action"] == "drift"
    assert new_file["drift_fields"] == ["definition", "title"]
    assert '-  "title": "Edited in the web app"' in new_file["diff"]
    assert '+  "title": "Dichroism: new scan"' in new_file["diff"]
    assert _actions(report, "flows")["archive"] == "unchanged"
    assert fake_globus.writes() == []

    code, out, _ = run_cli(["--config", str(config_path), "deploy"], capsys)
    assert code == 1 and "DRIFT (definition, title)" in out

    fake_globus.rsps.calls.reset()
    code, report, _ = _deploy(config_path, capsys, "--force")
    assert code == 0
    new_file = next(f for f in report["flows"] if f["name"] == "new_file")
    assert (new_file["action"], new_file["note"]) == ("updated", "drift overwritten")
    writes = fake_globus.service_writes()
    assert [(c.request.method, c.request.path_url) for c in writes] == [
        ("PUT", f"/flows/{flow_id}")
    ]
    assert json.loads(writes[0].request.body) == _expected_flow_body(config_path, "new_file")
    assert _deploy(config_path, capsys)[1]["ok"] is True


def test_changed_definition_updates_the_flow_and_shows_a_diff(
    fake_globus: FakeGlobus,
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flows_dir = _copy_definitions(tmp_path)
    config_path = write_config(_with_definitions(flows_dir))
    _, first, _ = _deploy(config_path, capsys)
    flow_id = next(f["id"] for f in first["flows"] if f["name"] == "prune")

    def edit(data: dict[str, Any]) -> None:
        data["definition"]["Comment"] = "Prune, version 2"

    _edit_definition(flows_dir, "prune", edit)
    fake_globus.rsps.calls.reset()

    code, report, _ = _deploy(config_path, capsys)

    assert code == 0
    assert _actions(report, "flows") == {
        "new_file": "unchanged",
        "archive": "unchanged",
        "prune": "updated",
        "flight_check": "unchanged",
    }
    prune = next(f for f in report["flows"] if f["name"] == "prune")
    diff = prune["diff"].splitlines()
    assert diff[:2] == ["--- prune (deployed)", "+++ prune (local)"]
    assert '+    "Comment": "Prune, version 2",' in diff
    assert any(line.startswith('-    "Comment": ') for line in diff)
    assert len(diff) <= 41
    writes = fake_globus.service_writes()
    assert [(c.request.method, c.request.path_url) for c in writes] == [
        ("PUT", f"/flows/{flow_id}")
    ]
    body = json.loads(writes[0].request.body)
    assert body == _expected_flow_body(config_path, "prune")
    assert body["definition"]["Comment"] == "Prune, version 2"


def test_changed_metadata_or_roles_updates_the_flow(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    assert _deploy(config_path, capsys)[0] == 0
    data = yaml.safe_load(config_path.read_text())
    data["globus"]["flows"]["archive"]["subtitle"] = "to tape"
    data["globus"]["roles"]["flow_viewers"] = [GROUP]
    config_path.write_text(yaml.safe_dump(data))
    fake_globus.rsps.calls.reset()

    code, report, _ = _deploy(config_path, capsys)

    assert code == 0
    assert _actions(report, "flows") == {n: "updated" for n in FLOW_TITLES}
    archive = next(f for f in report["flows"] if f["name"] == "archive")
    assert '+  "subtitle": "to tape"' in archive["diff"]
    assert len(fake_globus.service_writes()) == len(FLOW_TITLES)


def test_pinned_ids_are_used_as_they_are(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pinned_flow = fake_globus.new_id("9a9a9a9a")
    pinned_function = "7f7f7f7f-0000-4000-8000-000000000001"
    # A flow published from another host, still with an older description.
    stale = {"id": pinned_flow, **_expected_flow_body(write_config(), "new_file")}
    stale["description"] = "older"
    fake_globus.flows[pinned_flow] = stale

    def pin(data: dict[str, Any]) -> None:
        data["globus"]["flows"]["new_file"]["id"] = pinned_flow
        data["globus"]["functions"] = {"scicat_ingest": pinned_function}

    config_path = write_config(pin)
    code, report, _ = _deploy(config_path, capsys)

    assert code == 0
    functions = {f["name"]: f for f in report["functions"]}
    assert (functions["scicat_ingest"]["action"], functions["scicat_ingest"]["id"]) == (
        "pinned",
        pinned_function,
    )
    registered = [
        json.loads(c.request.body)["function_name"]
        for c in fake_globus.calls("POST", "/v3/functions")
    ]
    assert "scicat_ingest" not in registered and len(registered) == len(FUNCTION_NAMES) - 1
    new_file = next(f for f in report["flows"] if f["name"] == "new_file")
    assert (new_file["action"], new_file["id"]) == ("updated", pinned_flow)
    assert [json.loads(c.request.body)["title"] for c in fake_globus.calls("POST", "/flows")] == [
        FLOW_TITLES["archive"],
        FLOW_TITLES["prune"],
        FLOW_TITLES["flight_check"],
    ]
    assert len(fake_globus.calls("PUT", f"/flows/{pinned_flow}")) == 1

    fake_globus.rsps.calls.reset()
    assert _actions(_deploy(config_path, capsys)[1], "flows")["new_file"] == "unchanged"
    assert fake_globus.writes() == []


def test_pinned_flow_answering_404_is_an_error_not_a_silent_new_id(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "9b9b9b9b-0000-4000-8000-000000000404"

    def pin(data: dict[str, Any]) -> None:
        data["globus"]["flows"]["archive"]["id"] = missing

    code, report, err = _deploy(write_config(pin), capsys)

    assert code == 1
    archive = next(f for f in report["flows"] if f["name"] == "archive")
    assert archive["action"] == "error"
    assert archive["note"] == "pinned id answers 404: fix or remove globus.flows.archive.id"
    assert "deploy incomplete: archive (error)" in err
    assert not fake_globus.calls("PUT")


# -- refusals: exit 2, nothing written ----------------------------------------------------
def test_shipped_config_with_placeholder_ids_is_refused(
    mocked: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DICHROISM_STATE_DIR", str(tmp_path / "state"))
    code, out, err = run_cli(["--config", str(REPO / "config.yml"), "deploy"], capsys)

    assert code == 2
    assert out == ""
    assert err == NO_SUBSCRIPTION_WARNING + (
        "dichroism: error: globus.endpoints.bl402-compute-dtn.uuid: placeholder UUID; set the "
        "real id before talking to Globus (5 more placeholder(s))\n"
    )
    assert len(mocked.calls) == 0


def test_public_starters_are_refused_unless_allowed(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def public(data: dict[str, Any]) -> None:
        data["globus"]["roles"]["flow_starters"] = [GROUP, "all_authenticated_users"]

    config_path = write_config(public)
    code, out, err = run_cli(["--config", str(config_path), "deploy"], capsys)

    assert code == 2 and out == ""
    assert err == NO_SUBSCRIPTION_WARNING + (
        "dichroism: error: globus.roles.flow_starters: all_authenticated_users would let anyone "
        "start the flows; set globus.allow_public_starters or pass --allow-public-starters\n"
    )
    assert len(fake_globus.rsps.calls) == 0

    code, report, _ = _deploy(config_path, capsys, "--allow-public-starters", "--dry-run")
    assert code == 0 and report["ok"] is True

    def allowed(data: dict[str, Any]) -> None:
        public(data)
        data["globus"]["allow_public_starters"] = True

    code, report, _ = _deploy(write_config(allowed), capsys)
    assert code == 0
    body = json.loads(fake_globus.calls("POST", "/flows")[0].request.body)
    assert body["flow_starters"] == [GROUP, "all_authenticated_users"]


def test_invalid_definition_is_refused_before_any_write(
    fake_globus: FakeGlobus,
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flows_dir = _copy_definitions(tmp_path)

    def dangle(data: dict[str, Any]) -> None:
        data["definition"]["States"]["StatDestination"]["Next"] = "Nowhere"

    _edit_definition(flows_dir, "new_file", dangle)
    code, out, err = run_cli(
        ["--config", str(write_config(_with_definitions(flows_dir))), "deploy"], capsys
    )

    assert code == 2 and out == ""
    assert err == NO_SUBSCRIPTION_WARNING + (
        "dichroism: error: refusing to deploy: new_file: States.StatDestination.Next: "
        "'Nowhere' is not a state\n"
    )
    assert len(fake_globus.rsps.calls) == 0


def test_text_output_lists_each_item(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    code, out, _ = run_cli(["--config", str(config_path), "deploy"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(FUNCTION_NAMES) + len(FLOW_TITLES)
    assert (
        lines[0].startswith("function scicat_ingest") and " registered (new)  fc000000-" in lines[0]
    )
    first_flow = len(FUNCTION_NAMES)
    assert lines[first_flow].startswith("flow     new_file")
    assert " created  f10a0000-" in lines[first_flow]


def test_only_limits_the_deploy(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    code, report, _ = _deploy(config_path, capsys, "--only", "prune", "--only", "cfs_verify")
    assert code == 0
    assert _actions(report, "flows") == {"prune": "created"}
    assert _actions(report, "functions") == {"cfs_verify": "registered"}
    code, _, err = run_cli(["--config", str(config_path), "deploy", "--only", "nope"], capsys)
    assert code == 2 and "--only: unknown flow or function 'nope'" in err


def test_state_file_keeps_ids_and_checksums(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config()
    _deploy(config_path, capsys)
    state = json.loads((config_path.parent / "state" / "deploy-state.json").read_text())
    entry = state["globus"]["flows"]["new_file"]
    assert set(entry) == {"id", "checksum", "fields", "remote_checksum", "remote_fields"}
    assert set(entry["fields"]) == {
        "definition",
        "input_schema",
        "title",
        "subtitle",
        "description",
        "keywords",
        "subscription_id",
        "flow_administrators",
        "flow_starters",
        "flow_viewers",
        "run_managers",
        "run_monitors",
    }
    function = state["globus"]["functions"]["cfs_verify"]
    assert set(function) == {"id", "checksum"}
    copy.deepcopy(state)  # plain JSON


# -- subscription -------------------------------------------------------------------------
def test_subscription_id_is_sent_on_create_and_on_update(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Flows without a subscription expire after 30 days and an identity may own only one
    (docs.globus.org/api/flows/limits): `subscription_id` goes on `POST /flows` and on
    `PUT /flows/{id}` (globus_sdk FlowsClient.create_flow / update_flow `subscription_id`,
    services/flows/client.py:72 and :371)."""

    def with_subscription(data: dict[str, Any]) -> None:
        data["globus"]["subscription_id"] = SUBSCRIPTION

    config_path = write_config(with_subscription)
    code, report, err = _deploy(config_path, capsys)
    assert code == 0 and report["warnings"] == [] and "warning" not in err
    creates = [json.loads(c.request.body) for c in fake_globus.calls("POST", "/flows")]
    assert creates == [
        {**_expected_flow_body(config_path, name), "subscription_id": SUBSCRIPTION}
        for name in FLOW_TITLES
    ]

    def retitled(data: dict[str, Any]) -> None:
        with_subscription(data)
        data["globus"]["flows"]["archive"]["title"] = "Dichroism: archive v2"

    config_path = write_config(retitled)
    code, report, _ = _deploy(config_path, capsys)
    assert code == 0 and _actions(report, "flows")["archive"] == "updated"
    (update,) = fake_globus.calls("PUT")
    expected = {**_expected_flow_body(config_path, "archive"), "subscription_id": SUBSCRIPTION}
    assert json.loads(update.request.body) == {**expected, "title": "Dichroism: archive v2"}


def test_deploy_on_globus_without_a_subscription_warns_loudly(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """docs.globus.org/api/flows/limits: a flow without a subscription expires after 30 days
    and an identity may own only one. The deploy goes ahead, but says so on stderr and in the
    JSON document."""
    code, report, err = _deploy(write_config(), capsys)
    assert code == 0 and _actions(report, "flows") == {n: "created" for n in FLOW_TITLES}
    assert err == NO_SUBSCRIPTION_WARNING
    assert report["warnings"] == [NO_SUBSCRIPTION_WARNING.removeprefix("dichroism: warning: ")[:-1]]
    assert "subscription_id" not in json.loads(fake_globus.calls("POST", "/flows")[0].request.body)
