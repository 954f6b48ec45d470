"""`dichroism run-local`: one definition run to completion in this process, with no
ledger of runs, and its final run document (the outcome, the transitions and the log)."""

from __future__ import annotations

import getpass
import uuid
from typing import TYPE_CHECKING, Any

from dichroism_control.local.engine import Engine
from dichroism_control.local.providers import build_providers
from dichroism_control.local.store import LocalStore

if TYPE_CHECKING:
    from dichroism_control.config import Config


def run_document(
    definition: dict[str, Any],
    input_schema: dict[str, Any],
    flow_input: Any,
    *,
    config: Config | None,
    title: str = "run-local",
    label: str | None = None,
) -> dict[str, Any]:
    """Run one definition to completion in this process; the final run document.

    Refuses (DefinitionError / ConfigError, exit 2) a definition the engine cannot run or
    an input its schema rejects, as the service would refuse to create or start it. With a
    config, every local provider is available (collections, Compute functions registered
    by `deploy --backend local`); without one, only providers that need nothing do.
    """
    import jsonschema

    from dichroism_control.errors import ConfigError, DefinitionError
    from dichroism_control.local.engine import ActionContext, ActionProvider, ActionUnableToRun
    from dichroism_control.local.providers import (
        COMPUTE_URL,
        HELLO_WORLD_URL,
        TRANSFER_URLS,
        HelloWorldProvider,
    )

    providers: dict[str, ActionProvider]
    store: LocalStore | None = None
    if config is not None:
        store = LocalStore(config.ledger_path)
        lookup = _StoreFunctions(store)
        providers = build_providers(config, lookup)
    else:

        class Refuse(ActionProvider):
            def __init__(self, url: str) -> None:
                self.url = url

            def run(self, body: dict[str, Any], ctx: ActionContext) -> Any:
                raise ActionUnableToRun(
                    f"{self.url} needs a config (collections and Compute endpoints): pass "
                    "--config, e.g. examples/local.yml",
                    code="NoConfig",
                )

        providers = {url: Refuse(url) for url in (*TRANSFER_URLS.values(), COMPUTE_URL)}
        providers[HELLO_WORLD_URL] = HelloWorldProvider()
    engine = Engine(providers, poll_initial=0.2, poll_max=2.0)
    problems = engine.problems(definition)
    if problems:
        raise DefinitionError("the definition cannot run: " + "; ".join(problems[:5]))
    if input_schema:
        try:
            validator = jsonschema.validators.validator_for(input_schema)(input_schema)
        except jsonschema.SchemaError as exc:
            raise DefinitionError(
                f"input_schema is not a valid JSON Schema: {exc.message}"
            ) from None
        errors = sorted(validator.iter_errors(flow_input), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
            raise ConfigError(
                f"input does not match the input_schema at {where}: {errors[0].message[:500]}"
            )
    run_id = str(uuid.uuid4())
    user = f"{getpass.getuser()}@localhost"
    identity = f"urn:globus:auth:identity:{uuid.uuid5(uuid.NAMESPACE_DNS, user)}"
    try:
        outcome = engine.run(
            definition,
            flow_input,
            context={
                "run_id": run_id,
                "flow_id": None,
                "username": user,
                "user_id": identity,
                "identities": [identity],
            },
        )
    finally:
        if store is not None:
            store.close()
    return {
        **outcome.run_fields(),
        "flow_id": None,
        "flow_title": title,
        "label": label or title,
        "tags": [],
        "user_role": "run_owner",
        "run_owner": identity,
        "transitions": outcome.transitions,
        "log": outcome.log,
    }


class _StoreFunctions:
    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def get_function(self, function_id: str) -> tuple[str, str] | None:
        rows = self.store.query(
            "SELECT name, source FROM local_functions WHERE id = ?", (function_id,)
        )
        return (rows[0]["name"], rows[0]["source"]) if rows else None
