"""The lifecycle loop through GlobusBackend at the HTTP level (responses + SDK fixtures)."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

import globus_sdk
import pytest
import responses
from globus_sdk.testing import (
    RegisteredResponse,
    get_last_request,
    get_response_set,
    load_response,
)
from globus_sdk.transport import RetryConfig

from dichroism_control.globus_backend import GlobusBackend
from tests.conftest import GROUP, IDS
from tests.lifecycle.conftest import (
    DAY,
    FLOWS,
    FUNCTIONS,
    MTIME,
    MTIME_NS,
    T0,
    World,
    checksum_of,
)

pytestmark = pytest.mark.usefixtures("mocked_http")


def globus_backend() -> GlobusBackend:
    """A GlobusBackend whose clients need no login (a NullAuthorizer, no retries)."""
    backend = GlobusBackend(object(), timer_flow_ids=[FLOWS["prune"]])  # type: ignore[arg-type]
    retry = RetryConfig(max_retries=0)
    auth = globus_sdk.NullAuthorizer()
    # cached_property: an instance attribute set first is what the backend then uses.
    backend.__dict__["timers"] = globus_sdk.TimersClient(authorizer=auth, retry_config=retry)
    backend.__dict__["flows"] = globus_sdk.FlowsClient(authorizer=auth, retry_config=retry)
    return backend


def test_flow_timer_payload_matches_the_sdk_shapes(world: World) -> None:
    world.backend = globus_backend()  # type: ignore[assignment]
    fixture = load_response("timer.create_timer", case="flow_timer_success")
    # Transferred and already in an archive group: only the compute-dtn prune talks HTTP.
    with world.ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO scans (beamline, path, rel, version, size, mtime, mtime_ns, checksum,"
            " state, transferred_at, created_at, updated_at) VALUES ('bl402', '/x/P1/a.h5',"
            " 'P1/a.h5', 1, 42, ?, ?, ?, 'archive_submitted', ?, ?, ?)",
            (MTIME_NS / 1e9, MTIME_NS, checksum_of("P1/a.h5"), T0, T0, T0),
        )
    world.clock.now = T0 + DAY
    lifecycle = world.lifecycle()
    summary = lifecycle.run_once()
    assert summary["prune_timers_scheduled"] == 1, summary

    sent = json.loads(get_last_request().body)
    due = datetime.fromtimestamp(math.ceil(T0 + 180 * DAY), UTC)
    label = f"bl402 prune compute_dtn {due.date().isoformat()}"
    assert sent == {
        "timer": {
            "timer_type": "flow",
            "flow_id": FLOWS["prune"],
            "name": label,
            "schedule": {"type": "once", "datetime": due.isoformat(timespec="seconds")},
            # Timers' FlowStartDocument: body, tags, run_monitors, run_managers and nothing
            # else (globus-sdk-javascript src/open-api/types/timers.ts, FlowStartDocument).
            "body": {
                "body": {
                    "input": {
                        "beamline": "bl402",
                        "location": "compute_dtn",
                        "target": {
                            "collection_id": IDS["bl402_dtn"],
                            "root": f"{world.config.base_dir}/data/bl402",
                            "files": [
                                {
                                    "path": "P1/a.h5",
                                    "size": 42,
                                    "mtime": MTIME,
                                    "checksum": checksum_of("P1/a.h5"),
                                    "version": 1,
                                }
                            ],
                        },
                        "safe": {"root": f"{world.config.base_dir}/cfs/4.0.2/raw"},
                        "verify": {
                            "endpoint_id": IDS["nersc"],
                            "function_id": FUNCTIONS["cfs_verify"],
                        },
                        "deadline": "2026-08-30T16:00:00+00:00",
                    }
                },
                "tags": [
                    "dichroism",
                    "bl402",
                    "prune",
                    "compute_dtn",
                    "dichroism-batch:bl402/compute_dtn/2026-08-28",
                ],
                "run_monitors": [GROUP],
                "run_managers": [GROUP],
            },
        }
    }
    assert sent["timer"]["schedule"]["datetime"].endswith("+00:00")
    (batch,) = world.batches()
    assert batch["timer_id"] == fixture.metadata["timer_id"]
    assert batch["state"] == "scheduled"


def _paginated_runs() -> list[dict[str, Any]]:
    """The SDK's `list_runs:paginated` pages, re-registered with lenient matchers.

    The fixture's later pages match the query string exactly (`marker` only); the backend
    also sends `filter_flow_id` and `orderby`, so the pages are matched on `marker` alone.
    """
    case = get_response_set("flows.list_runs").lookup("paginated")
    pages = [r.json for r in case.responses]  # type: ignore[union-attr]

    def marker_is(expected: str | None) -> Any:
        def match(request: Any) -> tuple[bool, str]:
            query = parse_qs(urlparse(request.url).query)
            got = query.get("marker", [None])[0]
            return got == expected, f"marker {got!r} != {expected!r}"

        return match

    for page, marker in zip(pages, [None, "fake_marker_0", "fake_marker_1"], strict=True):
        RegisteredResponse(
            service="flows", path="/runs", json=page, match=[marker_is(marker)]
        ).add()
    return [run for page in pages for run in page["runs"]]


def _awaiting(world: World, run_ids: list[str], since: float) -> None:
    with world.ledger.transaction() as conn:
        for i, run_id in enumerate(run_ids):
            conn.execute(
                "INSERT INTO scans (beamline, path, rel, size, mtime, state, run_id,"
                " submit_started_at, created_at, updated_at)"
                " VALUES ('bl402', ?, ?, 1, 0, 'submitted', ?, ?, ?, ?)",
                (f"/x/P1/{i}.h5", f"P1/{i}.h5", run_id, since, since, since),
            )


def _list_calls() -> list[Any]:
    return [c for c in responses.calls if urlparse(c.request.url).path.endswith("/runs")]


def test_follows_runs_through_a_paginated_listing(world: World) -> None:
    world.backend = globus_backend()  # type: ignore[assignment]
    runs = _paginated_runs()
    wanted = [str(uuid.UUID(int=n)) for n in (3, 27, 51)]
    assert {r["run_id"] for r in runs} >= set(wanted)
    # Submitted before every run in the fixture (its runs start 2021-10-18 onwards).
    _awaiting(world, wanted, datetime(2021, 10, 1, tzinfo=UTC).timestamp())
    summary = world.lifecycle().run_once()
    assert summary["transferred"] == 3  # the fixture's runs are SUCCEEDED
    assert summary["runs_listed"] == 52  # stopped at the last awaited run, mid page 3
    calls = _list_calls()
    assert len(calls) == 3
    query = parse_qs(urlparse(calls[0].request.url).query)
    assert set(query["filter_flow_id"][0].split(",")) == set(FLOWS.values())
    assert query["orderby"] == ["start_time DESC"]
    assert parse_qs(urlparse(calls[2].request.url).query)["marker"] == ["fake_marker_1"]


def test_listing_stops_past_the_oldest_awaited_submission(world: World) -> None:
    world.backend = globus_backend()  # type: ignore[assignment]
    _paginated_runs()
    # Awaiting a run that is not listed, submitted after every fixture run: the first run
    # seen is already older than it (minus the skew margin), so one page is enough.
    _awaiting(world, [str(uuid.uuid4())], datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    summary = world.lifecycle().run_once()
    assert summary["runs_listed"] == 1
    assert len(_list_calls()) == 1
    assert world.scans()[0]["state"] == "submitted"
