"""HTTP-level helpers for deploy: a small stateful Globus (Auth, Flows, Compute) on `responses`.

The SDK's recorded fixtures (`globus_sdk.testing.load_response`) are used where they fit
(one flow id, one function id); `FakeGlobus` answers the multi-flow scenarios with callbacks
registered on the base URLs the SDK itself resolves, so `GLOBUS_SDK_SERVICE_URL_*` apply.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses

CLIENT_ID = "5e3c6a4f-0000-4000-8000-00000000c1d0"
CLIENT_SECRET = "s3cret-never-printed"
NATIVE_ID = "6e0d0c0b-0000-4000-8000-0000000000aa"  # a native app client: `dichroism login`
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
JSON = "application/json"


def _resource_server(scope: str) -> str:
    from globus_sdk.scopes import (
        AuthScopes,
        ComputeScopes,
        FlowsScopes,
        TimersScopes,
        TransferScopes,
    )

    known = {
        str(FlowsScopes.all): FlowsScopes.resource_server,
        str(ComputeScopes.all): ComputeScopes.resource_server,
        str(TransferScopes.all): TransferScopes.resource_server,
        str(TimersScopes.timer): TimersScopes.resource_server,
        "openid": AuthScopes.resource_server,
        "profile": AuthScopes.resource_server,
        "email": AuthScopes.resource_server,
    }
    base = scope.split("[", 1)[0]
    if base in known:
        return known[base]
    match = re.match(r"https://auth\.globus\.org/scopes/([0-9a-f-]{36})/", base)
    return match.group(1) if match else "unknown"


def token_callback(request: Any) -> tuple[int, dict[str, str], str]:
    """A client-credentials grant (the recorded fixture's shape) for whatever was asked.

    Scopes are parsed as Globus Auth reads them (a space inside `[...]` separates
    dependencies, not requested scopes), grouped by their root's resource server, and each
    token's `scope` lists root scopes only: what the SDK's validator compares it with
    (token_storage/validating_token_storage/validators.py:244-247).
    """
    from globus_sdk.scopes import ScopeParser

    form = parse_qs(request.body if isinstance(request.body, str) else request.body.decode())
    assert form["grant_type"] == ["client_credentials"]
    roots = [s.scope_string for s in ScopeParser.parse(form.get("scope", [""])[0])]
    groups: dict[str, list[str]] = {}
    for scope in roots:
        if scope not in groups.get(_resource_server(scope), []):
            groups.setdefault(_resource_server(scope), []).append(scope)
    tokens = [
        {
            "access_token": f"token-for-{rs}",
            "scope": " ".join(scs),
            "expires_in": 172800,
            "token_type": "Bearer",
            "resource_server": rs,
        }
        for rs, scs in groups.items()
    ]
    body = {**tokens[0], "other_tokens": tokens[1:]}
    return 200, {}, json.dumps(body)


class FakeGlobus:
    """Auth token grants, Flows create/get/update/validate and Compute registration."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        from globus_sdk.config import get_service_url

        self.rsps = rsps
        self.auth = get_service_url("auth").rstrip("/")
        self.flows_url = get_service_url("flows").rstrip("/")
        self.compute_url = get_service_url("compute").rstrip("/")
        self.flows: dict[str, dict[str, Any]] = {}
        self.functions: dict[str, dict[str, Any]] = {}
        self.validate_errors: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        rsps.add_callback(
            "POST", f"{self.auth}/v2/oauth2/token", callback=token_callback, content_type=JSON
        )
        rsps.add_callback(
            "POST", f"{self.flows_url}/flows/validate", callback=self._validate, content_type=JSON
        )
        rsps.add_callback(
            "POST", f"{self.flows_url}/flows", callback=self._create, content_type=JSON
        )
        flow_re = re.compile(re.escape(self.flows_url) + r"/flows/([0-9a-f-]{36})$")
        rsps.add_callback("GET", flow_re, callback=self._get, content_type=JSON)
        rsps.add_callback("PUT", flow_re, callback=self._update, content_type=JSON)
        rsps.add_callback(
            "POST", f"{self.compute_url}/v3/functions", callback=self._register, content_type=JSON
        )

    # helpers for tests -----------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        return f"{prefix}-0000-4000-8000-{next(self._ids):012d}"

    def calls(self, method: str | None = None, path: str | None = None) -> list[Any]:
        return [
            c
            for c in self.rsps.calls
            if (method is None or c.request.method == method)
            and (path is None or (c.request.path_url.split("?")[0] == path))
        ]

    def writes(self) -> list[Any]:
        return [c for c in self.rsps.calls if c.request.method in WRITE_METHODS]

    def service_writes(self) -> list[Any]:
        """Writes to Flows/Compute (token grants excluded)."""
        return [c for c in self.writes() if not c.request.url.startswith(self.auth)]

    def by_title(self, title: str) -> dict[str, Any]:
        return next(doc for doc in self.flows.values() if doc["title"] == title)

    # callbacks -------------------------------------------------------------------------
    def _create(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        flow_id = self.new_id("f10a0000")
        doc = {
            "id": flow_id,
            "flow_owner": f"{CLIENT_ID}@clients.auth.globus.org",
            "created_at": "2026-01-01T00:00:00+00:00",
            "subscription_id": None,
            **body,
        }
        self.flows[flow_id] = doc
        return 201, {}, json.dumps(doc)

    def _get(self, request: Any) -> tuple[int, dict[str, str], str]:
        flow_id = request.path_url.rsplit("/", 1)[1]
        if flow_id not in self.flows:
            error = {"error": {"code": "NOT_FOUND", "detail": f"No flow {flow_id}"}}
            return 404, {}, json.dumps(error)
        return 200, {}, json.dumps(self.flows[flow_id])

    def _update(self, request: Any) -> tuple[int, dict[str, str], str]:
        flow_id = request.path_url.rsplit("/", 1)[1]
        if flow_id not in self.flows:
            return 404, {}, json.dumps({"error": {"code": "NOT_FOUND", "detail": "gone"}})
        self.flows[flow_id].update(json.loads(request.body))
        return 200, {}, json.dumps(self.flows[flow_id])

    def _validate(self, request: Any) -> tuple[int, dict[str, str], str]:
        if self.validate_errors:
            body = {
                "error": {
                    "code": "UNPROCESSABLE_ENTITY",
                    "detail": self.validate_errors,
                    "message": "validation failed",
                }
            }
            return 422, {}, json.dumps(body)
        return 200, {}, json.dumps({"scopes": {"User": []}})

    def _register(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        function_id = self.new_id("fc000000")
        self.functions[function_id] = body
        return 200, {}, json.dumps({"function_uuid": function_id})


def client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A confidential client (ClientApp) and the production service URLs."""
    import os

    for key in list(os.environ):
        if key.startswith("GLOBUS_SDK_") or key in ("GLOBUS_CLIENT_ID", "GLOBUS_CLIENT_SECRET"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GLOBUS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("GLOBUS_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.delenv("DICHROISM_CONFIG", raising=False)


def person_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A person who logs in (UserApp through the native client), no client secret."""
    client_env(monkeypatch)
    monkeypatch.delenv("GLOBUS_CLIENT_ID")
    monkeypatch.delenv("GLOBUS_CLIENT_SECRET")
    monkeypatch.setenv("DICHROISM_NATIVE_CLIENT_ID", NATIVE_ID)


def store_person_tokens(state_path: Path, identity_id: str, scopes: dict[str, str]) -> None:
    """What `dichroism login` leaves: refreshable tokens per resource server (scope string
    each), with the person's identity id."""
    import time

    from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

    token_dir = state_path / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True)
    JSONTokenStorage(
        token_dir / f"tokens-{NATIVE_ID}.json", namespace=NATIVE_ID
    ).store_token_data_by_resource_server(
        {
            rs: TokenStorageData(
                resource_server=rs,
                identity_id=identity_id,
                scope=scope,
                access_token=f"token-{rs}",
                refresh_token=f"refresh-{rs}",
                expires_at_seconds=int(time.time()) + 86400,
                token_type="Bearer",
            )
            for rs, scope in scopes.items()
        }
    )


@contextlib.contextmanager
def started_mock() -> Iterator[responses.RequestsMock]:
    """The module-level `responses` mock (what globus_sdk.testing.load_response uses)."""
    responses.start()
    try:
        yield responses.mock
    finally:
        responses.stop()
        responses.reset()


def make_functions(directory: Path, version: str = "1", **overrides: str) -> dict[str, Any]:
    """A function table: five tiny functions, each in a module file of its own.

    The registered unit is a function's whole module, so one module per function lets a test
    edit one function without touching the others' source.
    """
    import importlib.util

    from dichroism_control.config import FUNCTION_NAMES

    directory.mkdir(parents=True, exist_ok=True)
    table: dict[str, Any] = {}
    for name in FUNCTION_NAMES:
        body = overrides.get(name, f'return {{"function": "{name}", "version": "{version}"}}')
        module_name = f"sample_{name}_{uuid.uuid4().hex}"
        path = directory / f"{module_name}.py"
        path.write_text(f'def {name}(**kwargs):\n    """Test stand-in for {name}."""\n    {body}\n')
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        table[name] = getattr(module, name)
    return table


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `dichroism ARGS` in-process: (exit code, stdout, stderr)."""
    from dichroism_control.cli.main import main

    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
