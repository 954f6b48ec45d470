"""auth scopes table, `login` / `logout` / `whoami`, and `doctor`. Secrets are never printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import responses

from dichroism_control.auth import COMMAND_SCOPES, scope_requirements
from tests.deploy.helpers import CLIENT_ID, CLIENT_SECRET, FakeGlobus, run_cli

NEW_FILE = "11111111-0000-4000-8000-000000000001"
ARCHIVE = "22222222-0000-4000-8000-000000000002"
PRUNE = "33333333-0000-4000-8000-000000000003"
FLIGHT = "44444444-0000-4000-8000-000000000004"
TIMERS_RS = "524230d7-ea86-4a52-8312-86065a9e0417"


def _user_scope(flow_id: str) -> str:
    return f"https://auth.globus.org/scopes/{flow_id}/flow_{flow_id.replace('-', '_')}_user"


def test_scope_table_resolves_flow_scopes_and_the_timers_dependency() -> None:
    ids = {"new_file": NEW_FILE, "archive": ARCHIVE, "prune": PRUNE, "flight_check": FLIGHT}
    plan = scope_requirements(["watch"], flow_ids=ids)
    assert plan.unresolved == []
    assert set(plan.requirements) == {"flows.globus.org", NEW_FILE, ARCHIVE, TIMERS_RS}
    assert [str(s) for s in plan.requirements[NEW_FILE]] == [_user_scope(NEW_FILE)]
    timers = [str(s) for s in plan.requirements[TIMERS_RS]]
    both = f"{_user_scope(PRUNE)} {_user_scope(FLIGHT)}"
    assert timers == [f"https://auth.globus.org/scopes/{TIMERS_RS}/timer[{both}]"]
    # `dichroism check` starts the flight check itself.
    check = scope_requirements(["check"], flow_ids=ids)
    assert [str(s) for s in check.requirements[FLIGHT]] == [_user_scope(FLIGHT)]

    everything = scope_requirements(None, flow_ids={})
    assert everything.unresolved == [
        "run:new_file",
        "run:archive",
        "timers[prune]",
        "timers[flight_check]",
        "run:flight_check",
    ]
    assert set(everything.requirements) == {
        "flows.globus.org",
        "funcx_service",
        TIMERS_RS,
        "transfer.api.globus.org",
        "auth.globus.org",
    }
    assert set(COMMAND_SCOPES) >= {"deploy", "watch", "submit", "runs", "timers", "validate"}
    with pytest.raises(ValueError, match="no scopes declared"):
        scope_requirements(["nope"])


def test_login_with_a_client_identity_needs_no_login(
    mocked: responses.RequestsMock,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(["--config", str(write_config()), "login"], capsys)
    assert code == 0
    assert out == (
        f"GLOBUS_CLIENT_ID/GLOBUS_CLIENT_SECRET are set: the confidential client {CLIENT_ID} "
        "gets its own tokens; no login is needed.\n"
    )
    assert CLIENT_SECRET not in out + err
    assert len(mocked.calls) == 0


def test_user_login_requests_every_declared_scope(
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import globus_sdk

    monkeypatch.delenv("GLOBUS_CLIENT_SECRET")
    monkeypatch.delenv("GLOBUS_CLIENT_ID")
    monkeypatch.setenv("DICHROISM_NATIVE_CLIENT_ID", CLIENT_ID)
    seen: dict[str, Any] = {}

    def fake_login(self: globus_sdk.UserApp, *, force: bool = False, **_: Any) -> None:
        seen["force"] = force
        seen["requirements"] = {
            rs: [str(s) for s in v] for rs, v in self.scope_requirements.items()
        }

    monkeypatch.setattr(globus_sdk.UserApp, "login", fake_login)

    def pin(data: dict[str, Any]) -> None:
        data["globus"]["flows"]["new_file"]["id"] = NEW_FILE
        data["globus"]["flows"]["archive"]["id"] = ARCHIVE
        data["globus"]["flows"]["prune"]["id"] = PRUNE
        data["globus"]["flows"]["flight_check"] = {"title": "flight check", "id": FLIGHT}

    code, out, _ = run_cli(
        ["--config", str(write_config(pin)), "--format", "json", "login"], capsys
    )

    assert code == 0
    doc = json.loads(out)
    assert doc["identity"] == "user" and doc["unresolved"] == []
    requirements = seen["requirements"]
    assert {NEW_FILE, ARCHIVE, "flows.globus.org", "funcx_service", TIMERS_RS} <= set(requirements)
    assert any(_user_scope(PRUNE) in s for s in requirements[TIMERS_RS])
    assert "openid" in requirements["auth.globus.org"]
    assert len(mocked.calls) == 0


def test_whoami_and_logout_with_a_client_identity(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    auth = fake_globus.auth
    fake_globus.rsps.add(
        "GET",
        f"{auth}/v2/oauth2/userinfo",
        json={
            "sub": CLIENT_ID,
            "preferred_username": f"{CLIENT_ID}@clients.auth.globus.org",
            "name": "dichroism service",
            "email": None,
            "identity_set": [{"username": f"{CLIENT_ID}@clients.auth.globus.org"}],
        },
    )
    fake_globus.rsps.add("POST", f"{auth}/v2/oauth2/token/revoke", json={"active": False})
    config_path = write_config()

    code, out, err = run_cli(["--config", str(config_path), "whoami"], capsys)
    assert code == 0
    assert out == (
        f"{CLIENT_ID}@clients.auth.globus.org ({CLIENT_ID}) — client, app client {CLIENT_ID}\n"
    )
    token_file = config_path.parent / "state" / "tokens" / f"tokens-{CLIENT_ID}.json"
    assert token_file.exists()
    assert "token-for-auth.globus.org" not in out + err

    code, out, err = run_cli(["--config", str(config_path), "logout"], capsys)
    assert code == 0
    assert out == f"tokens revoked and removed: {token_file}\n"
    assert not token_file.exists()
    assert len(fake_globus.calls("POST", "/v2/oauth2/token/revoke")) == 1

    code, out, _ = run_cli(["--config", str(config_path), "logout"], capsys)
    assert code == 0 and out == f"nothing to do: no stored tokens ({token_file})\n"


def test_whoami_without_login_says_so_and_does_not_prompt(
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GLOBUS_CLIENT_SECRET")
    code, out, err = run_cli(["--config", str(write_config()), "whoami"], capsys)
    assert code == 1 and out == ""
    assert err == "dichroism: error: not logged in: run `dichroism login`\n"
    assert len(mocked.calls) == 0


def test_doctor_reports_each_check_without_secrets(
    mocked: responses.RequestsMock,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from globus_sdk.config import get_service_url

    for service in ("auth", "flows", "timer"):
        mocked.add("GET", get_service_url(service), status=404, json={})
    # compute does not answer: a connection error within the timeout
    code, out, err = run_cli(
        ["--config", str(write_config()), "--format", "json", "doctor", "--timeout", "1"], capsys
    )

    assert code == 1
    report = json.loads(out)
    status = {c["check"]: c["status"] for c in report["checks"]}
    assert status == {
        "config": "ok",
        "flow definitions": "ok",
        "placeholder ids": "ok",
        "credentials": "ok",
        "tokens": "ok",
        "consents": "ok",
        "reach auth": "ok",
        "reach flows": "ok",
        "reach timer": "ok",
        "reach compute": "fail",
        "deployment": "warn",
        "notify": "warn",  # no alert targets configured
        "health": "skip",  # nothing has run here: no ledger
    }
    details = {c["check"]: c["detail"] for c in report["checks"]}
    assert details["credentials"] == f"confidential client {CLIENT_ID} (secret set)"
    assert err.endswith("dichroism: error: doctor: 1 check(s) failed: reach compute\n")
    assert CLIENT_SECRET not in out + err


def test_doctor_on_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], globus_env: None
) -> None:
    bad = tmp_path / "config.yml"
    bad.write_text("backend: globus\nglobus: [\n")
    code, out, err = run_cli(["--config", str(bad), "doctor", "--offline"], capsys)
    assert code == 2
    assert "FAIL   | config" in out
    assert err == f"dichroism: error: doctor: {bad}: line 3 not valid YAML\n"


def test_doctor_offline_with_placeholders(
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo_config = Path(__file__).resolve().parents[2] / "config.yml"
    monkeypatch.setenv("DICHROISM_STATE_DIR", str(tmp_path / "state"))
    code, out, err = run_cli(["--config", str(repo_config), "doctor", "--offline"], capsys)
    assert code == 1
    assert "FAIL   | placeholder ids" in out and "SKIP   | reachability" in out
    assert len(mocked.calls) == 0
    assert CLIENT_SECRET not in out + err
