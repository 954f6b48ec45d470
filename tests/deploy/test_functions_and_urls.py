"""Function change detection, other backends, and service URLs taken from the environment."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import responses

from dichroism_control.backends import build_backend
from dichroism_control.config import FUNCTION_NAMES, load_config
from dichroism_control.deploy import deploy, function_checksum, function_source
from dichroism_control.deploy_state import DeployState
from tests.deploy.helpers import FakeGlobus, make_functions, run_cli
from tests.fakes import FakeBackend


def _registered(fake: FakeGlobus) -> list[str]:
    return [
        json.loads(c.request.body)["function_name"] for c in fake.calls("POST", "/v3/functions")
    ]


def test_functions_register_only_when_their_source_changes(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = load_config(write_config())
    backend = build_backend(config)
    v1 = make_functions(tmp_path / "a")

    first = deploy(config, backend, functions=v1)
    assert [r.action for r in first.functions] == ["registered"] * 6
    assert _registered(fake_globus) == list(FUNCTION_NAMES)

    # The same source text from another file (another checkout, another Python): unchanged.
    fake_globus.rsps.calls.reset()
    again = deploy(config, backend, functions=make_functions(tmp_path / "b"))
    assert [r.action for r in again.functions] == ["unchanged"] * 6
    assert fake_globus.writes() == []

    edited = make_functions(tmp_path / "c", hpss_verify='return {"all_verified": True}')
    changed = deploy(config, backend, functions=edited)
    actions = {r.name: (r.action, r.note) for r in changed.functions}
    assert actions["hpss_verify"] == ("registered", "source changed")
    assert {n: a for n, (a, _) in actions.items() if n != "hpss_verify"} == {
        n: "unchanged" for n in FUNCTION_NAMES if n != "hpss_verify"
    }
    assert _registered(fake_globus) == ["hpss_verify"]

    state = DeployState.load(config.deploy_state_path, backend="globus")
    source = function_source(edited["hpss_verify"])
    assert state.functions["hpss_verify"]["checksum"] == function_checksum("hpss_verify", source)
    assert function_checksum("x", "src") == hashlib.sha256(b"x\0src").hexdigest()


def test_dry_run_reports_function_registrations_without_writing(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = load_config(write_config())
    report = deploy(config, build_backend(config), functions=make_functions(tmp_path), dry_run=True)
    assert [(r.action, r.id) for r in report.functions] == [("registered", None)] * 6
    assert len(fake_globus.rsps.calls) == 0
    assert not config.deploy_state_path.exists()


def test_deploy_only_uses_the_backend_protocol(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Any Backend works (the local backend is one); ids are kept per backend kind."""
    config = load_config(write_config(backend="local"))
    fake = FakeBackend()
    report = deploy(config, fake, functions=make_functions(tmp_path))  # type: ignore[arg-type]
    assert report.backend == "fake"
    assert [r.action for r in report.flows] == ["created"] * 4
    state = json.loads(config.deploy_state_path.read_text())
    assert set(state) == {"local"}
    assert set(state["local"]["flows"]) == {"new_file", "archive", "prune", "flight_check"}


def test_pins_do_not_apply_to_the_local_backend(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    def pin(data: dict[str, Any]) -> None:
        data["globus"]["functions"] = {"cfs_verify": "7f7f7f7f-0000-4000-8000-000000000001"}

    config = load_config(write_config(pin, backend="local"))
    report = deploy(config, FakeBackend(), functions=make_functions(tmp_path))  # type: ignore[arg-type]
    assert {r.name: r.action for r in report.functions}["cfs_verify"] == "registered"


def test_deploy_works_against_service_urls_from_the_environment(
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", "http://127.0.0.1:8101/")
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_FLOWS", "http://127.0.0.1:8102/")
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_COMPUTE", "http://127.0.0.1:8103/")
    fake = FakeGlobus(mocked)
    config_path = write_config()

    code, out, _ = run_cli(["--config", str(config_path), "--format", "json", "deploy"], capsys)

    assert code == 0, out
    assert json.loads(out)["ok"] is True
    hosts = {c.request.url.split("/")[2] for c in mocked.calls}
    assert hosts == {"127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8103"}
    assert len(fake.flows) == 4 and len(fake.functions) == 6
    assert all("globus.org" not in c.request.url for c in mocked.calls)
