"""data_access consent for GCSv5 mapped collections: config, the scope plan, the tokens a
ClientApp fetches before it starts runs and timers, `login` and `doctor`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
from globus_sdk.testing import get_last_request, load_response

from dichroism_control.auth import TRANSFER_FLOWS, scope_requirements
from dichroism_control.backend import RunRequest
from dichroism_control.config import load_config
from dichroism_control.definitions import load_all
from tests.conftest import IDS
from tests.deploy.helpers import CLIENT_ID, FakeGlobus, run_cli

# The SDK fixtures' flow ids: `flows.run_flow` answers only for its own flow.
NEW_FILE = "24bc4997-b483-4c25-a19c-64b0afc00743"
ARCHIVE = "22222222-0000-4000-8000-000000000002"
PRUNE = "33333333-0000-4000-8000-000000000003"
FLIGHT = "44444444-0000-4000-8000-000000000004"
TIMERS_RS = "524230d7-ea86-4a52-8312-86065a9e0417"
USER_ID = "8ca28797-3541-4a5d-a264-05b00f91e608"  # the `auth.get_consents` fixture's identity
TRANSFER_ALL = "urn:globus:auth:scope:transfer.api.globus.org:all"
# Every collection a beamline uses, sorted by endpoint name.
COLLECTIONS = [IDS["bl402_dtn"], IDS["bl402_cfs"], IDS["bl631_dtn"], IDS["bl631_cfs"]]


def _user(flow_id: str) -> str:
    return f"https://auth.globus.org/scopes/{flow_id}/flow_{flow_id.replace('-', '_')}_user"


def _data_access(collection: str) -> str:
    return f"https://auth.globus.org/scopes/{collection}/data_access"


def _chain(flow_id: str, collections: list[str]) -> str:
    """What globus-sdk's SpecificFlowClient.add_app_transfer_data_access_scope builds
    (services/flows/client.py:1255-1262): `flow_user[*transfer:all[*<c>/data_access ...]]`."""
    inner = " ".join(f"*{_data_access(c)}" for c in collections)
    return f"{_user(flow_id)}[*{TRANSFER_ALL}[{inner}]]"


def _pin(data: dict[str, Any]) -> None:
    data["globus"]["flows"]["new_file"]["id"] = NEW_FILE
    data["globus"]["flows"]["archive"]["id"] = ARCHIVE
    data["globus"]["flows"]["prune"]["id"] = PRUNE


def _pin_all(data: dict[str, Any]) -> None:
    _pin(data)
    data["globus"]["flows"]["flight_check"] = {"title": "flight check", "id": FLIGHT}


# -- config and plan ------------------------------------------------------------------------
def test_data_access_config_defaults_to_every_collection_a_beamline_uses(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`globus.data_access`: endpoint names or `all` (default); unknown names are refused."""
    config = load_config(write_config())
    assert config.globus.data_access == "all"
    assert config.data_access_collections() == COLLECTIONS

    def some(data: dict[str, Any]) -> None:
        data["globus"]["data_access"] = ["bl631-nersc_alsdev_raw"]

    assert load_config(write_config(some)).data_access_collections() == [IDS["bl631_cfs"]]

    def unknown(data: dict[str, Any]) -> None:
        data["globus"]["data_access"] = ["bl631-nersc_alsdev_raw", "nersc-cfs"]

    code, out, err = run_cli(["--config", str(write_config(unknown)), "validate"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "dichroism: error: globus.data_access: unknown endpoint 'nersc-cfs' (known: "
        "bl402-compute-dtn, bl402-nersc_alsdev_raw, bl631-compute-dtn, bl631-nersc_alsdev_raw)\n"
    )

    def word(data: dict[str, Any]) -> None:
        data["globus"]["data_access"] = "none"

    code, _, err = run_cli(["--config", str(write_config(word)), "validate"], capsys)
    assert code == 2
    assert err == (
        "dichroism: error: globus.data_access: must be `all` or a list of endpoint names,"
        " not 'none'\n"
    )


def test_scope_plan_puts_data_access_under_the_transfer_flows() -> None:
    """A run whose Transfer steps touch a GCSv5 mapped collection needs
    `flow_<id>_user[transfer:all[*<collection>/data_access]]`, as globus-sdk builds it in
    `SpecificFlowClient.add_app_transfer_data_access_scope` (services/flows/client.py:
    1213-1262); a flow timer needs the same chain under `timer` (the SDK's
    `TimersClient.add_app_flow_user_scope`, services/timers/client.py:106-154, puts the flow
    scope under `timer`). Archive runs have no Transfer step: no data_access."""
    ids = {"new_file": NEW_FILE, "archive": ARCHIVE, "prune": PRUNE, "flight_check": FLIGHT}
    plan = scope_requirements(["watch"], flow_ids=ids, data_access=COLLECTIONS)
    assert plan.unresolved == []
    assert [str(s) for s in plan.requirements[NEW_FILE]] == [_chain(NEW_FILE, COLLECTIONS)]
    assert [str(s) for s in plan.requirements[ARCHIVE]] == [_user(ARCHIVE)]
    # Both timer flows (prune, and the recurring flight check) move files: both chains.
    timers = f"{_chain(PRUNE, COLLECTIONS)} {_chain(FLIGHT, COLLECTIONS)}"
    assert [str(s) for s in plan.requirements[TIMERS_RS]] == [
        f"https://auth.globus.org/scopes/{TIMERS_RS}/timer[{timers}]"
    ]
    # A deployment from before the flight check: its timer consent is named as missing.
    older = {k: v for k, v in ids.items() if k != "flight_check"}
    assert scope_requirements(["watch"], flow_ids=older).unresolved == ["timers[flight_check]"]
    # Without mapped collections the scopes are the plain ones.
    bare = scope_requirements(["watch"], flow_ids=ids)
    assert [str(s) for s in bare.requirements[NEW_FILE]] == [_user(NEW_FILE)]


def test_transfer_flows_are_the_definitions_with_transfer_states() -> None:
    """TRANSFER_FLOWS must follow flow_definitions/: every flow with a Transfer action
    provider state (https://transfer.actions.globus.org/..., docs.globus.org/api/flows/
    hosted-action-providers) needs the data_access chain."""
    repo = Path(__file__).resolve().parents[2]
    with_transfer = {
        name
        for name, document in load_all(repo / "flow_definitions").items()
        if any(
            str(state.get("ActionUrl", "")).startswith("https://transfer.actions.globus.org/")
            for state in document.definition["States"].values()
        )
    }
    assert with_transfer == set(TRANSFER_FLOWS)


# -- what a ClientApp asks Globus Auth for --------------------------------------------------
def _canon(scope: Any) -> str:
    """A scope string with its dependencies sorted (their order carries no meaning)."""
    head = ("*" if scope.optional else "") + scope.scope_string
    if not scope.dependencies:
        return head
    return f"{head}[{' '.join(sorted(_canon(d) for d in scope.dependencies))}]"


def _grants(rsps: responses.RequestsMock) -> list[set[str]]:
    """The scopes of each token grant, split as Globus Auth splits them (not inside `[]`)."""
    from globus_sdk.scopes import ScopeParser

    grants = []
    for call in rsps.calls:
        if call.request.url.endswith("/v2/oauth2/token"):
            body = call.request.body
            form = parse_qs(body if isinstance(body, str) else body.decode())
            grants.append({_canon(s) for s in ScopeParser.parse(form["scope"][0])})
    return grants


def _parsed(text: str) -> str:
    from globus_sdk.scopes import Scope

    return _canon(Scope.parse(text))


def test_client_tokens_for_runs_and_timers_carry_the_data_access_chain(
    fake_globus: FakeGlobus, write_config: Callable[..., Path]
) -> None:
    """The client-credentials grant made before `run_flow` (new_file) and before
    `create_timer` (prune) asks for the data_access chain; without it the run goes INACTIVE
    with ConsentRequired. Payload shapes: SDK fixtures `flows.run_flow`,
    `timer.create_timer:flow_timer_success`; grant: RFC 6749 client_credentials as the
    SDK's ClientCredentialsAuthorizer sends it (authorizers/client_credentials.py:79-85)."""
    from dichroism_control.backends import build_backend

    config = load_config(write_config(_pin))
    load_response("flows.run_flow")
    load_response("timer.create_timer", case="flow_timer_success")
    backend = build_backend(config, timer_flow_ids=[PRUNE])

    backend.run_flow(RunRequest(flow_id=NEW_FILE, body={"input": {}}, label="l", tags=["t"]))
    (flow_grant,) = _grants(fake_globus.rsps)
    assert _parsed(_chain(NEW_FILE, COLLECTIONS)) in flow_grant

    request = RunRequest(flow_id=PRUNE, body={"input": {}}, label="p", tags=["t"])
    backend.create_flow_timer(name="p", run_at=_tomorrow(), request=request)
    timer_grant = _grants(fake_globus.rsps)[1]
    timer = f"https://auth.globus.org/scopes/{TIMERS_RS}/timer[{_chain(PRUNE, COLLECTIONS)}]"
    assert _parsed(timer) in timer_grant
    assert json.loads(get_last_request().body)["timer"]["flow_id"] == PRUNE


def _tomorrow() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(days=1)


def test_a_client_token_fetched_for_an_older_scope_plan_is_not_reused(
    fake_globus: FakeGlobus, write_config: Callable[..., Path]
) -> None:
    """A stored token records only its root scopes, and a client-credentials grant has no
    id_token, so the SDK's ScopeRequirementsValidator skips the dependent scopes of a client
    token (token_storage/validating_token_storage/validators.py:171-175, 266-269). A flow
    token stored before data_access joined the plan must be dropped and fetched again,
    otherwise the runs it starts go INACTIVE (GLOBUS_NOTES: the Timers consent trap, the same
    way)."""
    from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

    from dichroism_control.backends import build_backend

    config = load_config(write_config(_pin))
    token_dir = config.state_path / "tokens"
    token_dir.mkdir(parents=True)
    storage = JSONTokenStorage(token_dir / f"tokens-{CLIENT_ID}.json", namespace=CLIENT_ID)
    storage.store_token_data_by_resource_server(
        {
            NEW_FILE: TokenStorageData(
                resource_server=NEW_FILE,
                identity_id=None,
                scope=_user(NEW_FILE),
                access_token="stale-token-without-data-access",
                refresh_token=None,
                expires_at_seconds=int(time.time()) + 86400,
                token_type="Bearer",
            )
        }
    )
    load_response("flows.run_flow")
    backend = build_backend(config)
    backend.run_flow(RunRequest(flow_id=NEW_FILE, body={"input": {}}, label="l", tags=["t"]))

    (grant,) = _grants(fake_globus.rsps)
    assert _parsed(_chain(NEW_FILE, COLLECTIONS)) in grant
    run_call = fake_globus.calls("POST", f"/flows/{NEW_FILE}/run")[0]
    assert run_call.request.headers["Authorization"] == f"Bearer token-for-{NEW_FILE}"

    # The next process finds a token fetched for this plan and reuses it: no new grant.
    again = build_backend(config)
    again.run_flow(RunRequest(flow_id=NEW_FILE, body={"input": {}}, label="l", tags=["t"]))
    assert len(_grants(fake_globus.rsps)) == 1


# -- login and doctor ---------------------------------------------------------------------
def test_user_login_consents_to_the_data_access_chains(
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`dichroism login` asks for the whole plan, data_access chains included (source as in
    test_scope_plan_puts_data_access_under_the_transfer_flows)."""
    import globus_sdk

    monkeypatch.delenv("GLOBUS_CLIENT_SECRET")
    monkeypatch.delenv("GLOBUS_CLIENT_ID")
    monkeypatch.setenv("DICHROISM_NATIVE_CLIENT_ID", CLIENT_ID)
    seen: dict[str, Any] = {}

    def fake_login(self: globus_sdk.UserApp, *, force: bool = False, **_: Any) -> None:
        seen["requirements"] = {
            rs: [str(s) for s in v] for rs, v in self.scope_requirements.items()
        }

    monkeypatch.setattr(globus_sdk.UserApp, "login", fake_login)
    code, _, err = run_cli(["--config", str(write_config(_pin)), "login"], capsys)
    assert code == 0, err
    assert _chain(NEW_FILE, COLLECTIONS) in seen["requirements"][NEW_FILE]
    assert (
        f"https://auth.globus.org/scopes/{TIMERS_RS}/timer[{_chain(PRUNE, COLLECTIONS)}]"
        in seen["requirements"][TIMERS_RS]
    )
    assert len(mocked.calls) == 0


def _consent(consent_id: int, path: list[int], scope_name: str) -> dict[str, Any]:
    """One consent document, shaped as the SDK's `auth.get_consents` fixture's."""
    return {
        "created": "2024-03-18T17:32:51.496893+00:00",
        "id": consent_id,
        "status": "approved",
        "updated": "2024-03-18T17:32:51.496893+00:00",
        "allows_refresh": True,
        "dependency_path": path,
        "scope_name": scope_name,
        "atomically_revocable": False,
        "effective_identity": USER_ID,
        "auto_approved": False,
        "last_used": "2024-03-18T17:33:05.178254+00:00",
        "scope": f"00000000-0000-4000-8000-{consent_id:012d}",
        "client": CLIENT_ID,
    }


def test_doctor_names_the_missing_data_access_consents(
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """doctor compares the plan with the user's consents rooted at our client, read from
    `GET /v2/api/identities/{id}/consents` (globus-sdk AuthClient.get_consents, shape: the
    SDK fixture `auth.get_consents`), and names each missing chain. The identity id is the
    stored tokens' (decoded from the id_token at login, token_storage/base.py:99-124)."""
    from globus_sdk.config import get_service_url
    from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

    monkeypatch.delenv("GLOBUS_CLIENT_SECRET")
    monkeypatch.delenv("GLOBUS_CLIENT_ID")
    monkeypatch.setenv("DICHROISM_NATIVE_CLIENT_ID", CLIENT_ID)
    config_path = write_config(_pin)
    config = load_config(config_path)
    plan = scope_requirements(
        None,
        flow_ids={"new_file": NEW_FILE, "archive": ARCHIVE, "prune": PRUNE},
        data_access=COLLECTIONS,
    )
    token_dir = config.state_path / "tokens"
    token_dir.mkdir(parents=True)
    storage = JSONTokenStorage(token_dir / f"tokens-{CLIENT_ID}.json", namespace=CLIENT_ID)
    storage.store_token_data_by_resource_server(
        {
            rs: TokenStorageData(
                resource_server=rs,
                identity_id=USER_ID,
                scope=" ".join(
                    [s.scope_string for s in scopes]
                    + (["openid"] if rs == "auth.globus.org" else [])
                ),
                access_token=f"token-{rs}",
                refresh_token=f"refresh-{rs}",
                expires_at_seconds=int(time.time()) + 86400,
                token_type="Bearer",
            )
            for rs, scopes in plan.requirements.items()
        }
    )
    # Consented: new_file with three of the four collections; the timer with the prune flow
    # but without its transfer dependency at all.
    consents = [
        _consent(1, [1], _user(NEW_FILE)),
        _consent(2, [1, 2], TRANSFER_ALL),
        *[_consent(3 + i, [1, 2, 3 + i], _data_access(c)) for i, c in enumerate(COLLECTIONS[:3])],
        _consent(10, [10], f"https://auth.globus.org/scopes/{TIMERS_RS}/timer"),
        _consent(11, [10, 11], _user(PRUNE)),
    ]
    mocked.add(
        "GET",
        f"{get_service_url('auth')}v2/api/identities/{USER_ID}/consents",
        json={"consents": consents},
    )
    for service in ("auth", "flows", "timer", "compute"):
        mocked.add("GET", get_service_url(service), status=404, json={})

    code, out, _ = run_cli(
        ["--config", str(config_path), "--format", "json", "doctor", "--timeout", "1"], capsys
    )
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert checks["tokens"]["status"] == "ok"
    assert checks["consents"] == {
        "check": "consents",
        "status": "fail",
        "detail": (
            "not consented: flow new_file > transfer > data_access bl631-nersc_alsdev_raw; "
            + "; ".join(
                f"timer > flow prune > transfer > data_access {name}"
                for name in (
                    "bl402-compute-dtn",
                    "bl402-nersc_alsdev_raw",
                    "bl631-compute-dtn",
                    "bl631-nersc_alsdev_raw",
                )
            )
            + ": run `dichroism login`"
        ),
    }
    assert code == 1
    consent_calls = [c for c in mocked.calls if c.request.url.endswith("/consents?all=False")]
    assert len(consent_calls) == 1


def test_client_login_force_fetches_tokens_for_the_whole_plan(
    fake_globus: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """For a service client, `dichroism login --force` (the command an auth error names) is
    one client-credentials grant for every scope of the plan, data_access chains included;
    a client's dependent consents are granted with the grant (GLOBUS_NOTES, ClientApp)."""
    code, out, err = run_cli(
        ["--config", str(write_config(_pin_all)), "--format", "json", "login", "--force"],
        capsys,
    )
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["identity"], doc["login"], doc["unresolved"]) == ("client", "tokens fetched", [])
    (grant,) = _grants(fake_globus.rsps)
    chains = f"{_chain(PRUNE, COLLECTIONS)} {_chain(FLIGHT, COLLECTIONS)}"
    timer = f"https://auth.globus.org/scopes/{TIMERS_RS}/timer[{chains}]"
    assert {
        _parsed(_chain(NEW_FILE, COLLECTIONS)),
        _parsed(_chain(FLIGHT, COLLECTIONS)),
        _parsed(timer),
        _parsed(_user(ARCHIVE)),
    } <= grant
    assert "s3cret" not in out + err
