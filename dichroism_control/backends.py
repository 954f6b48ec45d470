"""Which backend runs the flows: the factory above both implementations.

It lives here, not in `backend.py`, so that the seam imports neither implementation and
neither implementation imports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.config import Config


def build_backend(
    config: Config, *, timer_flow_ids: list[str] | None = None, interactive: bool = True
) -> Backend:
    """The backend the config asks for. Refuses placeholder ids before any network call.

    `interactive=False` (the watcher, the lifecycle loop, no terminal): the Globus app never
    starts a login itself; an auth requirement is an `AuthRequiredError` (auth.build_app).
    """
    if config.backend == "local":
        from dichroism_control.local.backend import LocalBackend

        local: Backend = LocalBackend(config)
        return local
    config.require_real_ids()
    from dichroism_control.auth import build_app, credentials_from_env, scope_requirements
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.globus_backend import GlobusBackend
    from dichroism_control.ratelimit import RateLimiter

    # The whole scope plan (auth.scope_requirements), not only what each client asks for by
    # default: the flows' user scopes must carry the mapped collections' data_access, and
    # the Timers scope the prune flow's, before the first token is fetched.
    plan = scope_requirements(
        None,
        flow_ids=Deployment.resolve(config).flows,
        data_access=config.data_access_collections(),
    )
    app = build_app(
        credentials_from_env(),
        token_dir=config.state_path / "tokens",
        scopes=plan.requirements,
        interactive=interactive,
    )
    return GlobusBackend(
        app,
        timer_flow_ids=timer_flow_ids,
        run_limiter=RateLimiter(config.submit.max_run_starts_per_second),
    )
