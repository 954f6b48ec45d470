"""`dichroism login`, `logout`, `whoami`: the Globus identity the commands act as.

With `GLOBUS_CLIENT_ID` + `GLOBUS_CLIENT_SECRET` set the identity is a confidential client
(ClientApp): it fetches its own tokens and needs no login. Otherwise a person logs in once
with `dichroism login`, which asks for every scope any command declares (auth.COMMAND_SCOPES)
so that the watcher never meets a consent prompt. Tokens live under `state_dir/tokens`.
Tokens and secrets are never printed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pathlib import Path

    import globus_sdk

    from dichroism_control.auth import Credentials
    from dichroism_control.cli.context import Context


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)


def _identity(state: Context) -> tuple[Credentials, Path]:
    from dichroism_control.auth import credentials_from_env

    config = state.config()
    return credentials_from_env(), config.state_path / "tokens"


def login(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="Log in again even if the stored tokens suffice.")
    ] = False,
) -> None:
    """Log in interactively and consent to every scope the commands need."""
    from dichroism_control.auth import build_app, scope_requirements

    state: Context = ctx.obj
    credentials, token_dir = _identity(state)
    plan = scope_requirements(
        None,
        flow_ids=state.deployment().flows,
        data_access=state.config().data_access_collections(),
    )
    if credentials.is_service and force:
        # A client's "login" is a client-credentials grant for the whole plan: fresh tokens
        # whose dependent consents (data_access, the flows under timer) are granted with it.
        app = build_app(credentials, token_dir=token_dir, scopes=plan.requirements)
        app.login(force=True)
        state.emit(
            {
                "identity": "client",
                "client_id": credentials.client_id,
                "login": "tokens fetched",
                "resource_servers": sorted(plan.requirements),
                "unresolved": plan.unresolved,
            },
            text=_login_text,
        )
        return
    if credentials.is_service:
        state.emit(
            {
                "identity": "client",
                "client_id": credentials.client_id,
                "login": "not needed",
                "unresolved": [],
            },
            text=lambda d: (
                f"GLOBUS_CLIENT_ID/GLOBUS_CLIENT_SECRET are set: the confidential client "
                f"{d['client_id']} gets its own tokens; no login is needed."
            ),
        )
        return
    app = build_app(credentials, token_dir=token_dir, scopes=plan.requirements)
    needed = force or app.login_required()
    app.login(force=force)
    state.emit(
        {
            "identity": "user",
            "client_id": credentials.client_id,
            "login": "done" if needed else "already logged in",
            "resource_servers": sorted(plan.requirements),
            "unresolved": plan.unresolved,
        },
        text=_login_text,
    )


def _login_text(doc: dict[str, Any]) -> str:
    heads = {
        "done": "logged in",
        "tokens fetched": "client credentials: new tokens fetched",
        "already logged in": "already logged in (use --force to redo)",
    }
    lines = [heads[doc["login"]], f"consented for: {', '.join(doc['resource_servers'])}"]
    if doc["unresolved"]:
        lines.append(
            f"not yet deployed, so not consented: {', '.join(doc['unresolved'])}; "
            "run `dichroism login` again after `dichroism deploy`"
        )
    return "\n".join(lines)


def logout(ctx: typer.Context) -> None:
    """Revoke and remove the tokens stored under state_dir/tokens."""
    import globus_sdk

    from dichroism_control.auth import build_app, token_path

    state: Context = ctx.obj
    credentials, token_dir = _identity(state)
    path = token_path(credentials, token_dir)
    result: dict[str, Any] = {"client_id": credentials.client_id, "token_file": str(path)}
    if not path.exists():
        result.update(removed=False, revoked=False, note="no stored tokens")
    else:
        app = build_app(credentials, token_dir=token_dir)
        try:
            app.logout(sweep=True)
            result.update(revoked=True, note=None)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            # Removing them locally is still worth doing; say that the revoke failed.
            result.update(revoked=False, note=f"could not revoke: {type(exc).__name__}")
        path.unlink(missing_ok=True)
        result["removed"] = True
    state.emit(result, text=_logout_text)


def _logout_text(doc: dict[str, Any]) -> str:
    if not doc["removed"]:
        return f"nothing to do: {doc['note']} ({doc['token_file']})"
    revoked = "revoked and removed" if doc["revoked"] else f"removed ({doc['note']})"
    return f"tokens {revoked}: {doc['token_file']}"


def whoami(ctx: typer.Context) -> None:
    """Show the Globus identity the commands act as (asks Globus Auth; never prompts)."""
    from dichroism_control.auth import build_app, scope_requirements
    from dichroism_control.errors import DichroismError
    from dichroism_control.globus_backend import translate_errors

    state: Context = ctx.obj
    credentials, token_dir = _identity(state)
    app = build_app(
        credentials, token_dir=token_dir, scopes=scope_requirements(["whoami"]).requirements
    )
    if not credentials.is_service and app.login_required():
        raise DichroismError("not logged in: run `dichroism login`")

    @translate_errors
    def userinfo(app: globus_sdk.GlobusApp) -> dict[str, Any]:
        import globus_sdk

        return dict(globus_sdk.AuthClient(app=app).userinfo().data)

    info = userinfo(app)
    doc = {
        "kind": "client" if credentials.is_service else "user",
        "client_id": credentials.client_id,
        "username": info.get("preferred_username"),
        "id": info.get("sub"),
        "name": info.get("name"),
        "email": info.get("email"),
        "identity_set": [
            i.get("username") for i in info.get("identity_set", []) if isinstance(i, dict)
        ],
    }
    state.emit(
        doc,
        text=lambda d: f"{d['username']} ({d['id']}) — {d['kind']}, app client {d['client_id']}",
    )
