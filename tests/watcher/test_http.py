"""The launcher through the real GlobusBackend, HTTP mocked with the SDK's fixtures."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_sdk.testing import RegisteredResponse, get_last_request, load_response

from dichroism_control.config import Config
from dichroism_control.globus_backend import GlobusBackend
from dichroism_control.launcher import Launcher, run_label
from dichroism_control.ledger import Ledger
from tests.conftest import GROUP
from tests.watcher.conftest import FLOW_ID, Clock, write_file

FLOW_SCOPE = f"https://auth.globus.org/scopes/{FLOW_ID}/flow_{FLOW_ID.replace('-', '_')}_user"


def _token(resource_server: str, scope: str) -> None:
    RegisteredResponse(
        service="auth",
        path="/v2/oauth2/token",
        method="POST",
        json={
            "access_token": f"token-{resource_server}",
            "scope": scope,
            "expires_in": 172800,
            "token_type": "Bearer",
            "resource_server": resource_server,
            "other_tokens": [],
        },
    ).add()


@pytest.fixture
def backend(mocked_http: None, tmp_path: Path) -> GlobusBackend:
    del mocked_http
    app = globus_sdk.ClientApp(
        "dichroism-tests",
        client_id="7d7d7d7d-0000-4000-8000-000000000001",
        client_secret="not-a-secret",
        config=globus_sdk.GlobusAppConfig(token_storage="memory"),
    )
    return GlobusBackend(app, max_retries=0)


def _posts() -> list[Any]:
    return [c.request for c in responses.calls if c.request.url.endswith(f"/flows/{FLOW_ID}/run")]


def test_exact_run_request_on_the_wire(
    cfg: Config, ledger: Ledger, backend: GlobusBackend, make_launcher: Callable[..., Launcher]
) -> None:
    _token(FLOW_ID, FLOW_SCOPE)
    meta = load_response("flows.run_flow").metadata
    assert meta["flow_id"] == FLOW_ID
    path = write_file(Path(cfg.beamlines["bl631"].watch.root) / "P9" / "scan 1.h5", b"abc")
    os.utime(path, ns=(1_790_000_000_123_456_789, 1_790_000_000_123_456_789))
    launcher = make_launcher(backend)
    launcher.detect(str(path))
    before = time.time()
    [outcome] = launcher.drain()
    assert outcome.state == "submitted"
    sent = json.loads(get_last_request().body)
    assert sent["label"] == "bl631 P9/scan 1.h5"
    assert sent["tags"] == ["dichroism", "bl631", "new_file"]
    assert sent["run_monitors"] == [GROUP] and sent["run_managers"] == [GROUP]
    assert sent["activity_notification_policy"] == {"status": ["INACTIVE", "FAILED"]}
    assert sent["body"]["input"]["source"] == {
        "collection_id": cfg.globus.endpoints["bl631-compute-dtn"].uuid,
        "path": str(path),
        "size": 3,
        # md5(b"abc") (RFC 1321 test suite); the mtime as Transfer prints `last_modified`.
        "checksum": "900150983cd24fb0d6963f7d28e17f72",
        "mtime": "2026-09-21 14:13:20+00:00",
        "version": 1,
    }
    # The Transfer task may run as long as the flow waits for it (TransferToCFS WaitTime).
    deadline = datetime.fromisoformat(sent["body"]["input"]["deadline"]).timestamp()
    assert before + 172800 - 2 <= deadline <= time.time() + 172800
    assert sent["body"]["input"]["scicat"]["proposal"] == "P9"
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.run_id == outcome.run_id


def test_503_with_retry_after_then_recovery(
    cfg: Config,
    ledger: Ledger,
    backend: GlobusBackend,
    clock: Clock,
    make_launcher: Callable[..., Launcher],
) -> None:
    _token(FLOW_ID, FLOW_SCOPE)
    for _ in range(3):
        RegisteredResponse(
            service="flows",
            method="POST",
            path=f"/flows/{FLOW_ID}/run",
            status=503,
            headers={"Retry-After": "11"},
            json={"code": "UNAVAILABLE", "error": "down"},
        ).add()
    load_response("flows.run_flow")
    paths = [write_file(Path(cfg.beamlines["bl402"].watch.root) / "P1" / f"f{i}") for i in range(4)]
    launcher = make_launcher(backend, clock=clock, rng=lambda: 0.5)
    for path in paths:
        launcher.detect(str(path))
    outcomes = launcher.drain(sleep=clock.sleep)
    assert [o.state for o in outcomes].count("detected") == 3
    assert all(s >= 11 for s in clock.slept)
    assert len(_posts()) == 4 + 3
    assert {ledger.get_scan(str(p)).state for p in paths} == {"submitted"}  # type: ignore[union-attr]


def test_403_missing_consent_marks_failed(
    cfg: Config, ledger: Ledger, backend: GlobusBackend, make_launcher: Callable[..., Launcher]
) -> None:
    _token(FLOW_ID, FLOW_SCOPE)
    load_response("flows.run_flow", case="missing_scope_error")
    path = write_file(Path(cfg.beamlines["bl402"].watch.root) / "P1" / "x.h5")
    launcher = make_launcher(backend)
    launcher.detect(str(path))
    [outcome] = launcher.drain()
    assert outcome.state == "failed"
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.failed_step == "submit"
    assert "403 MISSING_SCOPE" in (scan.last_error or "")


def test_crash_recovery_finds_the_run_through_list_runs(
    cfg: Config, ledger: Ledger, backend: GlobusBackend, make_launcher: Callable[..., Launcher]
) -> None:
    _token(
        "flows.globus.org",
        "https://auth.globus.org/scopes/eec9b274-0c81-4334-bdc2-54e90e689b9a/all",
    )
    _token(FLOW_ID, FLOW_SCOPE)
    path = write_file(Path(cfg.beamlines["bl402"].watch.root) / "P1" / "crash.h5")
    launcher = make_launcher(backend)
    launcher.detect(str(path))
    [claim] = launcher.claim(limit=1)  # then the process dies before the ledger write
    label = run_label("bl402", "P1/crash.h5")
    other = {
        "run_id": "0" * 8 + "-0000-4000-8000-000000000001",
        "label": "bl402 P1/other.h5",
        "tags": ["dichroism", "bl402", "new_file"],
        "start_time": "2999-01-01T00:00:00+00:00",
    }
    ours = {**other, "run_id": "0" * 8 + "-0000-4000-8000-000000000002", "label": label}
    RegisteredResponse(
        service="flows",
        path="/runs",
        json={"runs": [other], "has_next_page": True, "marker": "page2", "limit": 1},
    ).add()
    RegisteredResponse(
        service="flows",
        path="/runs",
        json={"runs": [ours], "has_next_page": False, "marker": None, "limit": 1},
    ).add()
    restarted = make_launcher(backend)
    assert restarted.recover()["adopted"] == 1
    assert restarted.drain() == []
    assert _posts() == []
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "submitted" and scan.run_id == ours["run_id"]
    del claim
