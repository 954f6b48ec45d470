"""Which backend runs the flows: the factory above both implementations.

It lives here, not in `backend.py`, so that the seam imports neither implementation and
neither implementation imports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.config import Config


def build_backend(config: Config, *, timer_flow_ids: list[str] | None = None) -> Backend:
    """The backend the config asks for. Refuses placeholder ids before any network call."""
    if config.backend == "local":
        from dichroism_control.local.backend import LocalBackend

        local: Backend = LocalBackend(config)
        return local
    config.require_real_ids()
    from dichroism_control.auth import build_app, credentials_from_env
    from dichroism_control.globus_backend import GlobusBackend

    app = build_app(credentials_from_env(), token_dir=config.state_path / "tokens")
    return GlobusBackend(app, timer_flow_ids=timer_flow_ids)
