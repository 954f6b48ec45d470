"""`dichroism doctor`: config, credentials, deployment ids, tokens, service reachability.

Each check is one row: ok | warn | fail | skip, with a one-line detail. Secrets and tokens
are never shown (only whether they exist). Reachability is an unauthenticated GET of each
service's base URL (taken from the SDK, so `GLOBUS_SDK_*` overrides apply) with a short
timeout; any HTTP answer counts as reachable. Exit 0 when nothing failed, 1 otherwise, 2 when
the config itself is invalid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context
    from dichroism_control.config import Config

# Services reached by the Globus backend (SDK service names; TIMER, not TIMERS).
SERVICES = ("auth", "flows", "timer", "compute")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    ctx: typer.Context,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds per reachability check.")
    ] = 3.0,
    offline: Annotated[bool, typer.Option("--offline", help="Skip the network checks.")] = False,
) -> None:
    """Check config, credentials, deployment ids, tokens and service reachability."""
    from dichroism_control.errors import ConfigError, DichroismError

    state: Context = ctx.obj
    checks: list[dict[str, str]] = []

    def add(name: str, status: str, detail: str) -> None:
        checks.append({"check": name, "status": status, "detail": detail})

    try:
        config = state.config()
    except ConfigError as exc:
        add("config", "fail", str(exc))
        state.emit({"checks": checks, "ok": False}, text=_text)
        raise ConfigError(f"doctor: {exc}") from None
    add("config", "ok", f"{state.config_path or 'config.yml'} (backend: {config.backend})")
    _definitions(config, add)
    if config.backend == "local":
        add("globus", "skip", "local backend: no Globus credentials or services needed")
    else:
        placeholders = config.placeholders()
        if placeholders:
            add(
                "placeholder ids",
                "fail",
                f"{placeholders[0]} (+{len(placeholders) - 1} more): commands that talk to "
                "Globus refuse them",
            )
        else:
            add("placeholder ids", "ok", "none")
        _credentials_and_tokens(state, config, add, offline=offline)
        if offline:
            add("reachability", "skip", "--offline")
        else:
            for name, status, detail in _reachability(timeout):
                add(f"reach {name}", status, detail)
    _deployment(state, config, add)
    _notify(config, add)
    _health(state, config, add)
    ok = not any(c["status"] == "fail" for c in checks)
    state.emit({"checks": checks, "ok": ok}, text=_text)
    if not ok:
        failed = [c["check"] for c in checks if c["status"] == "fail"]
        raise DichroismError(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")


def _definitions(config: Config, add: Any) -> None:
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import load_all, validate_document
    from dichroism_control.errors import DefinitionError

    try:
        documents = load_all(config.definitions_path)
    except DefinitionError as exc:
        add("flow definitions", "fail", str(exc))
        return
    problems = [e for d in documents.values() for e in validate_document(specialise(d, config))]
    if problems:
        add("flow definitions", "fail", f"{len(problems)} problem(s), first: {problems[0]}")
    else:
        add("flow definitions", "ok", f"{', '.join(documents)} valid")


def _credentials_and_tokens(state: Context, config: Config, add: Any, *, offline: bool) -> None:
    import time

    from dichroism_control.auth import credentials_from_env, scope_requirements, token_path
    from dichroism_control.errors import ConfigError

    try:
        credentials = credentials_from_env()
    except ConfigError as exc:
        add("credentials", "fail", str(exc))
        return
    if credentials.is_service:
        add("credentials", "ok", f"confidential client {credentials.client_id} (secret set)")
    else:
        add("credentials", "ok", f"native app {credentials.client_id} (interactive login)")

    path = token_path(credentials, config.state_path / "tokens")
    stored: dict[str, Any] = {}
    if path.exists():
        from globus_sdk.token_storage import JSONTokenStorage

        try:
            storage = JSONTokenStorage(path, namespace=credentials.client_id)
            stored = dict(storage.get_token_data_by_resource_server())
        except Exception as exc:  # a corrupt file must not stop the other checks
            add("tokens", "fail", f"{path}: unreadable ({type(exc).__name__})")
            return
    plan = scope_requirements(
        None, flow_ids=state.deployment().flows, data_access=config.data_access_collections()
    )
    now = time.time()
    missing = [rs for rs in plan.requirements if rs not in stored]
    expired = [
        rs
        for rs, data in stored.items()
        if data.expires_at_seconds < now and not data.refresh_token
    ]
    if credentials.is_service:
        detail = f"{len(stored)} stored; others are fetched on demand (client credentials)"
        add("tokens", "ok", detail)
        _client_consents(credentials, config, plan.requirements, stored, add)
        return
    if missing or expired:
        parts = []
        if missing:
            parts.append(f"no consent for {', '.join(sorted(missing))}")
        if expired:
            parts.append(f"expired without refresh: {', '.join(sorted(expired))}")
        add("tokens", "fail", "; ".join(parts) + ": run `dichroism login`")
    else:
        add("tokens", "ok", f"{len(stored)} resource server(s) consented, refreshable")
    if plan.unresolved:
        add(
            "consents",
            "warn",
            f"{', '.join(plan.unresolved)} need deployed flows; log in again after deploy",
        )
    _user_consents(state, config, credentials, plan.requirements, stored, add, offline=offline)


def _names(state: Context, config: Config) -> dict[str, str]:
    """Readable names for the ids in scope strings: flows, collections, Timers."""
    from globus_sdk.scopes import TimersScopes

    names = {flow_id: f"flow {name}" for name, flow_id in state.deployment().flows.items()}
    names.update({e.uuid: e.name for e in config.globus.endpoints.values()})
    names[TimersScopes.resource_server] = "timer"
    return names


def _describe(chain: list[Any], names: dict[str, str]) -> str:
    """`timer > flow prune > transfer > data_access bl402-compute-dtn` for a scope chain."""
    import re

    parts = []
    for scope in chain:
        text = scope.scope_string
        match = re.match(r"https://auth\.globus\.org/scopes/([0-9a-f-]{36})/(\w+)", text)
        if match and match.group(2) == "data_access":
            parts.append(f"data_access {names.get(match.group(1), match.group(1))}")
        elif match:
            parts.append(names.get(match.group(1), text))
        elif "transfer.api.globus.org" in text:
            parts.append("transfer")
        else:
            parts.append(text)
    return " > ".join(parts)


def _user_consents(
    state: Context,
    config: Config,
    credentials: Any,
    requirements: dict[str, list[Any]],
    stored: dict[str, Any],
    add: Any,
    *,
    offline: bool,
) -> None:
    """Root scopes from the stored tokens; dependent ones from Globus Auth's consent records.

    A stored token lists only root scopes, so the dependencies (data_access under a flow,
    a flow under `timer`) are read from `GET /v2/api/identities/{id}/consents`, the call
    the SDK's own validator makes (validators.py:281-284); the identity id comes from the
    stored tokens (the id_token's `sub` at login), so no userinfo call is needed.
    """
    short = [
        f"{rs}: {scope.scope_string}"
        for rs, scopes in requirements.items()
        if rs in stored
        for scope in scopes
        if scope.scope_string not in stored[rs].scope.split()
    ]
    if short:
        add("consents", "fail", f"tokens lack {'; '.join(short)}: run `dichroism login`")
        return
    with_dependencies = [s for scopes in requirements.values() for s in scopes if s.dependencies]
    if not with_dependencies:
        add("consents", "ok", "no dependent scopes needed")
        return
    if offline:
        add("consents", "skip", "--offline: dependent consents (data_access, timer) not checked")
        return
    identity = next((d.identity_id for d in stored.values() if d.identity_id), None)
    if identity is None:
        add("consents", "fail", "no identity in the stored tokens: run `dichroism login`")
        return
    import globus_sdk

    from dichroism_control.auth import build_app, unmet_chains
    from dichroism_control.errors import DichroismError

    app = build_app(credentials, token_dir=config.state_path / "tokens", interactive=False)
    try:
        forest = globus_sdk.AuthClient(app=app).get_consents(identity).to_forest()
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError, DichroismError) as exc:
        add("consents", "fail", f"cannot read the consents from Globus Auth: {exc}")
        return
    names = _names(state, config)
    missing = [
        _describe(chain, names)
        for scope in with_dependencies
        for chain in unmet_chains(forest, scope)
    ]
    if missing:
        add("consents", "fail", f"not consented: {'; '.join(missing)}: run `dichroism login`")
    else:
        add("consents", "ok", f"{len(with_dependencies)} dependent scope tree(s) consented")


def _client_consents(
    credentials: Any,
    config: Config,
    requirements: dict[str, list[Any]],
    stored: dict[str, Any],
    add: Any,
) -> None:
    """A client's dependent consents are granted with each client-credentials grant and are
    not stored in its tokens: doctor can only tell whether a stored token was fetched for
    the current scope plan (the record `auth.build_app` keeps beside the tokens)."""
    from dichroism_control.auth import (
        granted_plan_path,
        read_granted_plan,
        stale_resource_servers,
    )

    granted = read_granted_plan(granted_plan_path(credentials, config.state_path / "tokens"))
    stale = [rs for rs in stale_resource_servers(granted, requirements) if rs in stored]
    if stale:
        add(
            "consents",
            "warn",
            f"tokens for {', '.join(stale)} were fetched for an older scope plan; the next"
            " command drops them and fetches new ones (or run `dichroism login --force`)",
        )
    else:
        add("consents", "ok", "stored client tokens match the scope plan")


def _reachability(timeout: float) -> list[tuple[str, str, str]]:
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from globus_sdk.config import get_service_url

    def probe(service: str) -> tuple[str, str, str]:
        url = get_service_url(service)
        try:
            response = requests.get(url, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return service, "fail", f"{url}: {type(exc).__name__}"
        seconds = response.elapsed.total_seconds()
        return service, "ok", f"{url} answered {response.status_code} in {seconds:.2f}s"

    with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
        return list(pool.map(probe, SERVICES))


def _deployment(state: Context, config: Config, add: Any) -> None:
    from dichroism_control.config import FLOW_NAMES, FUNCTION_NAMES

    deployment = state.deployment()
    flows_missing = [n for n in FLOW_NAMES if n not in deployment.flows]
    functions_missing = [n for n in FUNCTION_NAMES if n not in deployment.functions]
    if flows_missing or functions_missing:
        add(
            "deployment",
            "warn",
            f"not deployed: {', '.join(flows_missing + functions_missing)} "
            "(run `dichroism deploy` or pin the ids in config.yml)",
        )
    else:
        add(
            "deployment",
            "ok",
            ", ".join(f"{n}={deployment.flows[n]}" for n in FLOW_NAMES),
        )


def _notify(config: Config, add: Any) -> None:
    """Alert targets parse (offline); shown masked: their URLs hold secrets."""
    from dichroism_control.notify import mask_url

    urls = config.notify.urls
    if not urls:
        add("notify", "warn", "no notify.urls: alerts reach nobody (see README: Operating)")
        return
    import apprise

    logging_off = __import__("logging").getLogger("apprise")
    logging_off.setLevel(100)
    bad = [f"#{i + 1} {mask_url(u)}" for i, u in enumerate(urls) if not apprise.Apprise().add(u)]
    masked = ", ".join(mask_url(u) for u in urls)
    if bad:
        add("notify", "fail", f"not understood by Apprise: {', '.join(bad)}")
    else:
        add("notify", "ok", f"{len(urls)} target(s): {masked}")


def _health(state: Context, config: Config, add: Any) -> None:
    """The problems `status --check` reports (heartbeat, backlog, failures, ...), as warnings:
    doctor's verdict stays about setup; `status --check` is the health verdict."""
    if not config.ledger_path.exists():
        add("health", "skip", f"no ledger yet at {config.ledger_path} (nothing has run here)")
        return
    from dichroism_control.health import assess

    report = assess(config, state.ledger())
    if report.healthy:
        add("health", "ok", "no problems (see `dichroism status`)")
    for problem in report.problems:
        add("health", "warn", problem.message)


def _text(report: dict[str, Any]) -> str:
    from dichroism_control.output import table

    rows = [(c["status"].upper(), c["check"], c["detail"]) for c in report["checks"]]
    return table(rows, ("Status", "Check", "Detail"))
