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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dichroism_control.errors import ConfigError

if TYPE_CHECKING:
    import globus_sdk

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


def build_app(credentials: Credentials, *, token_dir: Path) -> globus_sdk.GlobusApp:
    """The app every client is built with. Makes no HTTP call until a token is needed."""
    import globus_sdk
    from globus_sdk.token_storage import JSONTokenStorage

    token_dir.mkdir(parents=True, exist_ok=True)
    storage = JSONTokenStorage(
        token_dir / f"tokens-{credentials.client_id}.json", namespace=credentials.client_id
    )
    # auto_redrive_gares: a Timers token fetched before a flow's dependent scope was added
    # answers 403 ConsentRequired; redriving re-consents instead of failing (GLOBUS_NOTES).
    app_config = globus_sdk.GlobusAppConfig(
        token_storage=storage,
        auto_redrive_gares=True,
        request_refresh_tokens=not credentials.is_service,
    )
    if credentials.is_service:
        return globus_sdk.ClientApp(
            APP_NAME,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            config=app_config,
        )
    return globus_sdk.UserApp(APP_NAME, client_id=credentials.client_id, config=app_config)
