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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.errors import ConfigError

if TYPE_CHECKING:
    import globus_sdk
    from globus_sdk.scopes import Scope

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
COMMAND_SCOPES: dict[str, tuple[str, ...]] = {
    "validate": ("flows",),
    "deploy": ("flows", "compute"),
    "watch": ("flows", "run:new_file", "run:archive", "timers"),
    "submit": ("flows", "run:new_file"),
    "lifecycle": ("flows", "run:archive", "timers"),
    "status": ("flows",),
    "runs": ("flows",),
    "timers": ("timers",),
    "doctor": ("auth", "transfer"),
    "whoami": ("auth",),
}
TIMER_FLOWS = ("prune",)


@dataclass(frozen=True)
class ScopePlan:
    """Scope requirements by resource server, plus the needs that could not be resolved."""

    requirements: dict[str, list[Scope]]
    unresolved: list[str]


def scope_requirements(
    commands: Iterable[str] | None = None, *, flow_ids: Mapping[str, str] | None = None
) -> ScopePlan:
    """The scopes `commands` need (all commands when None). Flow scopes need deployed ids."""
    from globus_sdk.scopes import (
        AuthScopes,
        ComputeScopes,
        FlowsScopes,
        SpecificFlowScopes,
        TimersScopes,
        TransferScopes,
    )

    ids = dict(flow_ids or {})
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
            dependencies = [SpecificFlowScopes(ids[f]).user for f in TIMER_FLOWS if ids.get(f)]
            add(TimersScopes.resource_server, TimersScopes.timer.with_dependencies(dependencies))
        elif need.startswith("run:"):
            flow = need.removeprefix("run:")
            if ids.get(flow):
                add(ids[flow], SpecificFlowScopes(ids[flow]).user)
            else:
                unresolved.append(need)
    return ScopePlan(requirements, unresolved)


def token_path(credentials: Credentials, token_dir: Path) -> Path:
    return token_dir / f"tokens-{credentials.client_id}.json"


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
) -> globus_sdk.GlobusApp:
    """The app every client is built with. Makes no HTTP call until a token is needed."""
    import globus_sdk
    from globus_sdk.token_storage import JSONTokenStorage

    token_dir.mkdir(parents=True, exist_ok=True)
    storage = JSONTokenStorage(token_path(credentials, token_dir), namespace=credentials.client_id)
    # auto_redrive_gares: a Timers token fetched before a flow's dependent scope was added
    # answers 403 ConsentRequired; redriving re-consents instead of failing (GLOBUS_NOTES).
    app_config = globus_sdk.GlobusAppConfig(
        token_storage=storage,
        auto_redrive_gares=True,
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
