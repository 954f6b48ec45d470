"""Transfer's throughput limits: a bounded number of new_file runs in flight (the backlog
waits in the ledger), run starts paced, and the backlog's drain estimate.

Globus Transfer works on 3 transfer tasks and 3 delete tasks per user at a time and queues
the rest (docs.globus.org/api/transfer/task_behavior, "Queuing"); its API allows about 20
requests per second per authenticated user (docs.globus.org/faq/transfer-sharing, "Are there
any limits on using the file transfer service?").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_sdk.config import get_service_url
from globus_sdk.scopes import SpecificFlowScopes
from globus_sdk.testing import RegisteredResponse, get_response_set

from dichroism_control.backend import RunRequest
from dichroism_control.config import load_config
from dichroism_control.globus_backend import GlobusBackend
from dichroism_control.launcher import Launcher
from dichroism_control.ledger import Backlog
from dichroism_control.ratelimit import RateLimiter
from tests.lifecycle.conftest import T0, World


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"scan")
    return path


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"drain slept {seconds} s instead of leaving the backlog queued")


def test_new_file_runs_in_flight_are_bounded_and_the_backlog_waits_in_the_ledger(
    world: World,
) -> None:
    """A catch-up of 30 scans starts `submit.max_runs_in_flight` (default 12) runs; the rest
    stay `detected` and a slot frees only when the lifecycle's one listing sees a run finish
    (task queueing: docs.globus.org/api/transfer/task_behavior)."""
    assert world.config.submit.max_runs_in_flight == 12
    launcher = Launcher(
        world.config, world.ledger, world.backend, world.deployment, clock=world.clock
    )
    root = Path(world.config.beamlines["bl402"].watch.root)
    for i in range(30):
        launcher.detect(str(_write(root / "P1" / f"scan_{i:02d}.h5")))

    launcher.drain(sleep=_no_sleep)
    assert len(world.backend.requests) == 12
    assert world.ledger.state_counts()["bl402"] == {"submitted": 12, "detected": 18}
    assert launcher.next_due() is None  # the dispatcher idles instead of polling the ledger
    launcher.drain(sleep=_no_sleep)
    assert len(world.backend.requests) == 12

    finished = [r["run_id"] for r in world.runs_of("new_file")[:5]]
    world.finish(finished)
    world.clock.now = T0 + 600
    assert world.lifecycle().run_once()["transferred"] == 5
    launcher.drain(sleep=_no_sleep)
    assert len(world.backend.requests) == 17
    assert world.ledger.state_counts()["bl402"] == {
        "transferred": 5,
        "submitted": 12,
        "detected": 13,
    }

    backlog = world.ledger.submission_backlog(now=T0 + 900, window_seconds=3600)
    assert backlog == Backlog(
        count=13,
        oldest_age_seconds=backlog.oldest_age_seconds,
        in_flight=12,
        completed_in_window=5,
        window_seconds=3600,
        drain_seconds=(13 + 12) / (5 / 3600),
    )
    # Scans are recorded with the wall clock; the oldest waiting one is the first queued.
    oldest = world.ledger.query("SELECT MIN(created_at) AS t FROM scans WHERE state = 'detected'")[
        0
    ]["t"]
    assert backlog.oldest_age_seconds == pytest.approx(T0 + 900 - oldest)
    assert world.ledger.submission_backlog(beamline="bl631", now=T0 + 900) == Backlog(
        count=0,
        oldest_age_seconds=None,
        in_flight=0,
        completed_in_window=0,
        window_seconds=3600.0,
        drain_seconds=None,
    )


def test_submit_leaves_the_scan_queued_when_every_slot_is_taken(world: World) -> None:
    """`dichroism submit` goes through the same bound: with no slot free the scan stays
    `detected` for the watcher, and the command returns instead of waiting."""
    config = world.config.model_copy(
        update={"submit": world.config.submit.model_copy(update={"max_runs_in_flight": 1})}
    )
    launcher = Launcher(config, world.ledger, world.backend, world.deployment, clock=world.clock)
    root = Path(config.beamlines["bl631"].watch.root)
    first = launcher.detect(str(_write(root / "P1" / "a.h5")))
    second = launcher.detect(str(_write(root / "P1" / "b.h5")))
    assert first is not None and second is not None
    assert [o.state for o in launcher.drain(scan_ids=[first.id], sleep=_no_sleep)] == ["submitted"]
    assert launcher.drain(scan_ids=[second.id], sleep=_no_sleep) == []
    scan = world.ledger.get_scan(second.path)
    assert scan is not None and scan.state == "detected" and scan.attempts == 0


# -- run starts are paced -------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_run_starts_never_exceed_the_configured_rate_on_the_wire(mocked_http: None) -> None:
    """45 run_flow calls at once: the POSTs to `/flows/{id}/run` (the SDK's `flows.run_flow`
    fixture answers them) are spaced so that no second holds more than the rate; Transfer
    meters about 20 requests/s per user (docs.globus.org/faq/transfer-sharing)."""
    del mocked_http
    case = get_response_set("flows.run_flow").lookup("default")
    flow_id = (
        case.metadata["flow_id"]
        if case.metadata
        else get_response_set("flows.run_flow").metadata["flow_id"]
    )
    clock = FakeClock()
    sent: list[float] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        sent.append(clock.now)
        return 200, {}, json.dumps(case.json)

    RegisteredResponse(
        service="auth",
        path="/v2/oauth2/token",
        method="POST",
        json={
            "access_token": "t",
            "scope": str(SpecificFlowScopes(flow_id).user),
            "expires_in": 172800,
            "token_type": "Bearer",
            "resource_server": flow_id,
            "other_tokens": [],
        },
    ).add()
    url = f"{get_service_url('flows')}flows/{flow_id}/run"
    responses.add_callback("POST", url, callback=answer, content_type="application/json")
    app = globus_sdk.ClientApp(
        "dichroism-tests",
        client_id="7d7d7d7d-0000-4000-8000-000000000001",
        client_secret="not-a-secret",
        config=globus_sdk.GlobusAppConfig(token_storage="memory"),
    )
    for rate in (20.0, 10.0):
        sent.clear()
        backend = GlobusBackend(
            app, max_retries=0, run_limiter=RateLimiter(rate, clock=clock, sleep=clock.sleep)
        )
        for _ in range(45):
            backend.run_flow(RunRequest(flow_id=flow_id, body={}, label="l", tags=[]))
        assert len(sent) == 45
        per_second = int(rate)
        # Any `rate` + 1 consecutive starts span at least one second.
        assert all(sent[i + per_second] - sent[i] >= 1.0 - 1e-9 for i in range(45 - per_second))
        assert sent[-1] - sent[0] == pytest.approx(44 / rate)


def test_the_run_start_rate_comes_from_the_config(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`submit.max_run_starts_per_second` (default 10: half of Transfer's ~20 requests/s per
    user, docs.globus.org/faq/transfer-sharing) paces the Globus backend's run_flow."""
    from dichroism_control.backends import build_backend
    from tests.deploy.helpers import client_env

    client_env(monkeypatch)
    backend = build_backend(load_config(write_config()))
    assert isinstance(backend, GlobusBackend) and backend.run_limiter is not None
    assert backend.run_limiter.rate == 10.0

    def faster(data: dict[str, Any]) -> None:
        data["submit"] = {"max_run_starts_per_second": 20, "max_runs_in_flight": 30}

    config = load_config(write_config(faster))
    assert config.submit.max_runs_in_flight == 30
    backend = build_backend(config)
    assert isinstance(backend, GlobusBackend) and backend.run_limiter is not None
    assert backend.run_limiter.rate == 20.0
