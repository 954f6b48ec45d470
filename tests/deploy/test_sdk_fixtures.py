"""Deploy against the SDK's own recorded responses (`globus_sdk.testing`), ids from `.metadata`."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import responses
from globus_sdk.testing import get_last_request, load_response

from dichroism_control.backends import build_backend
from dichroism_control.config import Config, load_config
from dichroism_control.deploy import deploy
from dichroism_control.deploy_state import DeployState
from dichroism_control.globus_backend import GlobusBackend
from tests.conftest import GROUP
from tests.deploy.helpers import make_functions, token_callback


def _token_endpoint() -> None:
    """Client-credentials grants for whatever scopes are asked."""
    from globus_sdk.config import get_service_url

    auth = get_service_url("auth").rstrip("/")
    responses.add_callback(
        "POST", f"{auth}/v2/oauth2/token", callback=token_callback, content_type="application/json"
    )


@pytest.fixture
def backend(mocked: Any, write_config: Callable[..., Path]) -> GlobusBackend:
    _token_endpoint()
    built = build_backend(load_config(write_config()))
    assert isinstance(built, GlobusBackend)
    return built


def _config(write_config: Callable[..., Path], **flow_ids: str) -> Config:
    def mutate(data: dict[str, Any]) -> None:
        for name, flow_id in flow_ids.items():
            data["globus"]["flows"][name]["id"] = flow_id

    return load_config(write_config(mutate))


def test_create_flow_and_register_function_payloads(
    backend: GlobusBackend, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    import globus_compute_sdk

    created = load_response("flows.create_flow")
    registered = load_response("compute.v3.register_function")
    flow_id = load_response("flows.get_flow").metadata["flow_id"]
    config = _config(write_config)
    table = make_functions(tmp_path / "fns")

    report = deploy(config, backend, functions=table, only=["new_file", "scicat_ingest"])

    assert [(r.name, r.action, r.id) for r in report.functions] == [
        ("scicat_ingest", "registered", registered.metadata["function_id"])
    ]
    assert [(r.name, r.action, r.id) for r in report.flows] == [("new_file", "created", flow_id)]
    register_call = next(c for c in responses.calls if c.request.path_url == "/v3/functions")
    assert json.loads(register_call.request.body) == {
        "function_name": "scicat_ingest",
        "function_code": (
            'def scicat_ingest(**kwargs):\n    """Test stand-in for scicat_ingest."""\n'
            '    return {"function": "scicat_ingest", "version": "1"}\n'
        ),
        "serialized": False,
        "meta": {
            "python_version": platform.python_version(),
            "sdk_version": globus_compute_sdk.__version__,
        },
        "description": "Test stand-in for scicat_ingest.",
    }
    last = get_last_request()
    assert last is not None and (last.method, last.path_url) == ("POST", "/flows")
    body = json.loads(last.body or b"{}")
    assert set(body) == set(created.metadata["params"])  # the same keys the SDK fixture sends
    assert body["title"] == "Dichroism: new scan"
    assert body["flow_starters"] == [GROUP] and body["run_monitors"] == [GROUP]
    assert body["definition"]["StartAt"] == "TransferToCFS"

    # Nothing changed since: the recorded get_flow answers the same document -> no write.
    responses.calls.reset()
    again = deploy(config, backend, functions=table, only=["new_file", "scicat_ingest"])
    assert [r.action for r in again.functions + again.flows] == ["unchanged", "unchanged"]
    assert [c.request.method for c in responses.calls] == ["GET"]


def test_update_flow_payload_for_a_pinned_flow(
    backend: GlobusBackend, write_config: Callable[..., Path]
) -> None:
    load_response("flows.get_flow")
    updated = load_response("flows.update_flow")
    flow_id = updated.metadata["flow_id"]
    config = _config(write_config, archive=flow_id)

    report = deploy(config, backend, only=["archive"])

    assert [(r.name, r.action, r.id) for r in report.flows] == [("archive", "updated", flow_id)]
    # The recorded flow (a two-hop transfer) differs from ours everywhere it matters.
    assert (
        report.flows[0].diff is not None
        and '"title": "Multi Step Transfer"' in report.flows[0].diff
    )
    last = get_last_request()
    assert last is not None and (last.method, last.path_url) == ("PUT", f"/flows/{flow_id}")
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import load_document

    document = specialise(
        load_document(config.definitions_path / "archive.json", name="archive"), config
    )
    assert json.loads(last.body or b"{}") == {
        "title": "Dichroism: archive",
        "definition": document.definition,
        "input_schema": document.input_schema,
        "subtitle": "",
        "description": "",
        "keywords": [],
        "flow_viewers": [],
        "flow_starters": [GROUP],
        "flow_administrators": [],
        "run_managers": [GROUP],
        "run_monitors": [GROUP],
    }
    state = DeployState.load(config.deploy_state_path, backend="globus")
    assert state.flows["archive"]["id"] == flow_id


def test_validate_flow_payload_and_definition_error(backend: GlobusBackend) -> None:
    ok = load_response("flows.validate_flow")
    assert backend.validate_flow(ok.metadata["success"], {}) == []
    last = get_last_request()
    assert last is not None and (last.method, last.path_url) == ("POST", "/flows/validate")
    assert json.loads(last.body or b"{}") == {
        "definition": ok.metadata["success"],
        "input_schema": {},
    }

    bad = load_response("flows.validate_flow", case="definition_error")
    errors = backend.validate_flow(bad.metadata["invalid"], {"type": "object"})
    assert errors == [
        "definition.States.Step1: A state of type 'Action' must be defined as either terminal "
        '("End": true) or transitional ("Next": "NextStateId")'
    ]
    last = get_last_request()
    assert last is not None
    assert json.loads(last.body or b"{}") == {
        "definition": bad.metadata["invalid"],
        "input_schema": {"type": "object"},
    }
