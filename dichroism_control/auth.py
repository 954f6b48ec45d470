"""Globus identity for the CLI and the watcher.

A confidential client (`GLOBUS_CLIENT_ID` + `GLOBUS_CLIENT_SECRET`) gives a `ClientApp`: the
service identity the watcher runs as, with dependent consents granted automatically. Without
them, a `UserApp` logs a person in interactively (`dichroism login`). Tokens live under the
config's `state_dir`, namespaced by client id, so two deployments on one host never share them.

No API host appears here: the SDK reads `GLOBUS_SDK_ENVIRONMENT` and
`GLOBUS_SDK_SERVICE_URL_*` when each client is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.errors import AuthRequiredError, ConfigError

if TYPE_CHECKING:
    import globus_sdk
    from globus_sdk.scopes import Scope
    from globus_sdk.scopes.consents import ConsentForest

APP_NAME = "dichroism-flows"
CLIENT_ID_ENV = "GLOBUS_CLIENT_ID"
CLIENT_SECRET_ENV = "GLOBUS_CLIENT_SECRET"
NATIVE_CLIENT_ID_ENV = "DICHROISM_NATIVE_CLIENT_ID"


@dataclass(frozen=True)
class Credentials:
    client_id: str
    # Kept out of repr so a stray log of this object never prints the secret.
    client_secret: str | None

    def __repr__(self) -> str:
        kind = "confidential" if self.client_secret else "native"
        return f"Credentials(client_id={self.client_id!r}, kind={kind})"

    @property
    def is_service(self) -> bool:
        return self.client_secret is not None


def credentials_from_env(native_client_id: str | None = None) -> Credentials:
    client_id = os.environ.get(CLIENT_ID_ENV, "").strip()
    secret = os.environ.get(CLIENT_SECRET_ENV, "").strip()
    if client_id and secret:
        return Credentials(client_id, secret)
    if secret and not client_id:
        raise ConfigError(f"{CLIENT_SECRET_ENV} is set but {CLIENT_ID_ENV} is not")
    native = client_id or native_client_id or os.environ.get(NATIVE_CLIENT_ID_ENV, "").strip()
    if not native:
        raise ConfigError(
            f"no Globus credentials: set {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV} for a service "
            f"identity, or {NATIVE_CLIENT_ID_ENV} (a native app client id) for `dichroism login`"
        )
    return Credentials(native, None)


# -- scopes: declared once ----------------------------------------------------------------
# What each command needs, as abstract needs resolved by `scope_requirements`:
#   flows        Flows service `all` (what FlowsClient asks for; covers manage_flows,
#                view_flows, run_status and run_manage)
#   compute      Compute `all` (function registration)
#   run:<flow>   the specific-flow user scope of a deployed flow (starting runs)
#   timers       Timers `timer`, with the prune flow's user scope as a dependency
#                (GLOBUS_NOTES: the Timers consent trap)
#   transfer     Transfer `all` (doctor: can the identity see the collections)
#   auth         openid profile email (whoami)
# `dichroism login` requests the union, so the watcher never meets a consent prompt.
#
# GCSv5 mapped collections: a run whose Transfer steps touch one needs the collection's
# `data_access` scope under Transfer under the flow's user scope, or the run goes INACTIVE
# (ConsentRequired). The chain is built as globus-sdk's own
# `SpecificFlowClient.add_app_transfer_data_access_scope` builds it (services/flows/
# client.py:1213-1262: `flow_user[*transfer:all[*<collection>/data_access ...]]`); a flow
# timer carries the same chain under `timer` (the SDK has no helper for a flow timer:
# `TimersClient.add_app_transfer_data_access_scope` is for Transfer timers).
COMMAND_SCOPES: dict[str, tuple[str, ...]] = {
    "validate": ("flows",),
    "deploy": ("flows", "compute"),
    "watch": ("flows", "run:new_file", "run:archive", "timers"),
    "submit": ("flows", "run:new_file"),
    "lifecycle": ("flows", "run:archive", "timers"),
    "status": ("flows",),
    "runs": ("flows",),
    "timers": ("timers",),
    "check": ("flows", "run:flight_check"),
    "doctor": ("auth", "transfer"),
    "whoami": ("auth",),
}
TIMER_FLOWS = ("prune", "flight_check")
# Flows with Transfer action states (transfer, stat, delete): their scope carries the
# collections' data_access (tests check this against flow_definitions/).
TRANSFER_FLOWS = frozenset({"new_file", "prune", "flight_check"})


@dataclass(frozen=True)
class ScopePlan:
    """Scope requirements by resource server, plus the needs that could not be resolved."""

    requirements: dict[str, list[Scope]]
    unresolved: list[str]


def flow_user_scope(flow_id: str, collections: Sequence[str] = ()) -> Scope:
    """A flow's user scope; with `collections`, their data_access under Transfer `all`."""
    from globus_sdk.scopes import GCSCollectionScopes, SpecificFlowScopes, TransferScopes

    user = SpecificFlowScopes(flow_id).user
    if not collections:
        return user
    transfer = TransferScopes.all.with_optional(True).with_dependencies(
        [GCSCollectionScopes(c).data_access.with_optional(True) for c in collections]
    )
    return user.with_dependency(transfer)


def scope_requirements(
    commands: Iterable[str] | None = None,
    *,
    flow_ids: Mapping[str, str] | None = None,
    data_access: Sequence[str] = (),
) -> ScopePlan:
    """The scopes `commands` need (all commands when None). Flow scopes need deployed ids;
    `data_access` lists the mapped collections the Transfer flows' runs touch."""
    from globus_sdk.scopes import (
        AuthScopes,
        ComputeScopes,
        FlowsScopes,
        TimersScopes,
        TransferScopes,
    )

    ids = dict(flow_ids or {})

    def flow_scope(flow: str) -> Scope:
        return flow_user_scope(ids[flow], data_access if flow in TRANSFER_FLOWS else ())

    names = list(COMMAND_SCOPES) if commands is None else list(commands)
    needs: list[str] = []
    for command in names:
        if command not in COMMAND_SCOPES:
            raise ValueError(f"no scopes declared for command {command!r}")
        needs.extend(n for n in COMMAND_SCOPES[command] if n not in needs)

    requirements: dict[str, list[Scope]] = {}
    unresolved: list[str] = []

    def add(resource_server: str, *scopes: Scope) -> None:
        requirements.setdefault(resource_server, []).extend(scopes)

    for need in needs:
        if need == "flows":
            add(FlowsScopes.resource_server, FlowsScopes.all)
        elif need == "compute":
            add(ComputeScopes.resource_server, ComputeScopes.all)
        elif need == "transfer":
            add(TransferScopes.resource_server, TransferScopes.all)
        elif need == "auth":
            add(AuthScopes.resource_server, AuthScopes.openid, AuthScopes.profile, AuthScopes.email)
        elif need == "timers":
            missing = [f for f in TIMER_FLOWS if not ids.get(f)]
            unresolved.extend(f"timers[{f}]" for f in missing)
            dependencies = [flow_scope(f) for f in TIMER_FLOWS if ids.get(f)]
            add(TimersScopes.resource_server, TimersScopes.timer.with_dependencies(dependencies))
        elif need.startswith("run:"):
            flow = need.removeprefix("run:")
            if ids.get(flow):
                add(ids[flow], flow_scope(flow))
            else:
                unresolved.append(need)
    return ScopePlan(requirements, unresolved)


def unmet_chains(forest: ConsentForest, scope: Scope) -> list[list[Scope]]:
    """The root-to-leaf dependency chains of `scope` that `forest` does not cover.

    `ConsentForest.meets_scope_requirements` answers yes or no for the whole tree
    (scopes/consents/_model.py:200-216); checking each chain on its own names exactly
    which consent is missing (say, one collection's data_access under one flow).
    """
    from globus_sdk.scopes import Scope as ScopeClass

    def chains(node: Scope) -> list[list[Scope]]:
        if not node.dependencies:
            return [[node]]
        return [[node, *rest] for child in node.dependencies for rest in chains(child)]

    missing: list[list[Scope]] = []
    for chain in chains(scope):
        built = ScopeClass(chain[-1].scope_string)
        for outer in reversed(chain[:-1]):
            built = ScopeClass(outer.scope_string).with_dependency(built)
        if not forest.meets_scope_requirements(built):
            missing.append(chain)
    return missing


def token_path(credentials: Credentials, token_dir: Path) -> Path:
    return token_dir / f"tokens-{credentials.client_id}.json"


def granted_plan_path(credentials: Credentials, token_dir: Path) -> Path:
    """Beside the tokens: the scope strings each stored client token was fetched for."""
    return token_dir / f"tokens-{credentials.client_id}.scopes.json"


def _scope_strings(scopes: Mapping[str, list[Scope]]) -> dict[str, list[str]]:
    return {rs: sorted({str(s) for s in values}) for rs, values in scopes.items()}


def read_granted_plan(path: Path) -> dict[str, list[str]]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): list(v) for k, v in data.items()} if isinstance(data, dict) else {}


def stale_resource_servers(
    granted: Mapping[str, list[str]], scopes: Mapping[str, list[Scope]]
) -> list[str]:
    """Resource servers whose stored client token was fetched for other scope strings."""
    wanted = _scope_strings(scopes)
    return sorted(rs for rs, strings in wanted.items() if granted.get(rs) != strings)


def _forget_stale_client_tokens(
    storage: globus_sdk.token_storage.TokenStorage,
    path: Path,
    scopes: Mapping[str, list[Scope]],
) -> None:
    """Drop stored client tokens fetched for another scope plan, and record this one.

    A stored token records only root scopes, and a client-credentials grant returns no
    id_token, so the SDK's validator cannot check a client token's dependent scopes
    (token_storage/validating_token_storage/validators.py:171-175, 266-269): a token
    fetched before a data_access or flow dependency joined the plan would be reused until
    it expires, and the runs it starts would go INACTIVE. A client re-grants without a
    person, so dropping it is free.
    """
    import json
    import os
    import tempfile

    granted = read_granted_plan(path)
    for resource_server in stale_resource_servers(granted, scopes):
        storage.remove_token_data(resource_server)
    record = {**granted, **_scope_strings(scopes)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".scopes.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def login_command(credentials: Credentials) -> str:
    """The command a person runs to give this identity fresh tokens and consents."""
    return "dichroism login --force" if credentials.is_service else "dichroism login"


def short_retries(max_retries: int = 1) -> Any:
    """One retry, at most 2 s apart: callers have their own backoff (the launcher's queue,
    the next lifecycle pass) or a person waiting at a prompt."""
    from globus_sdk.transport import RetryConfig

    return RetryConfig(max_retries=max_retries, max_sleep=2)


def build_app(
    credentials: Credentials,
    *,
    token_dir: Path,
    scopes: Mapping[str, list[Scope]] | None = None,
    interactive: bool = True,
) -> globus_sdk.GlobusApp:
    """The app every client is built with. Makes no HTTP call until a token is needed.

    `interactive=False` (the watcher, the lifecycle loop, anything without a terminal):
    the app never starts a login itself. The SDK would otherwise prompt on stdin from
    whichever thread met the problem: `auto_redrive_gares` logs in on a 403 auth
    requirements error (globus_app/app.py:582-607), and the default
    `token_validation_error_handler` logs in on missing or insufficient stored tokens
    (globus_app/config.py `resolve_by_login_flow`). Both become an `AuthRequiredError`
    naming the command to run. A client's "login" is a client-credentials grant, no
    prompt, so a ClientApp keeps fetching its own tokens.
    """
    import globus_sdk
    from globus_sdk.globus_app.config import resolve_by_login_flow
    from globus_sdk.token_storage import JSONTokenStorage

    token_dir.mkdir(parents=True, exist_ok=True)
    storage = JSONTokenStorage(token_path(credentials, token_dir), namespace=credentials.client_id)
    if scopes and credentials.is_service:
        _forget_stale_client_tokens(storage, granted_plan_path(credentials, token_dir), scopes)
    command = login_command(credentials)

    def needs_person(app: globus_sdk.GlobusApp, error: Exception) -> None:
        del app
        raise AuthRequiredError(
            f"Globus login needed ({type(error).__name__}: {error}): run `{command}`"
        )

    handler = resolve_by_login_flow if interactive or credentials.is_service else needs_person
    # auto_redrive_gares: a 403 auth requirements error (a Timers token fetched before a
    # flow's dependent scope was added) re-consents and retries, in interactive commands.
    app_config = globus_sdk.GlobusAppConfig(
        token_storage=storage,
        auto_redrive_gares=interactive,
        token_validation_error_handler=handler,
        request_refresh_tokens=not credentials.is_service,
    )
    # The app's own Auth client gets the short retries every other client has (an outage
    # is reported in seconds, not after the SDK's default ~13 s of silent retries).
    app: globus_sdk.GlobusApp
    if credentials.is_service:
        login = globus_sdk.ConfidentialAppAuthClient(
            client_id=credentials.client_id,
            client_secret=str(credentials.client_secret),
            app_name=APP_NAME,
            retry_config=short_retries(),
        )
        app = globus_sdk.ClientApp(APP_NAME, login_client=login, config=app_config)
    else:
        native = globus_sdk.NativeAppAuthClient(
            client_id=credentials.client_id, app_name=APP_NAME, retry_config=short_retries()
        )
        app = globus_sdk.UserApp(APP_NAME, login_client=native, config=app_config)
    if scopes:
        app.add_scope_requirements(scopes)
    return app
