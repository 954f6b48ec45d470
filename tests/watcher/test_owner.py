"""A ledger belongs to the identity that started its first run; others may only look.

Flows lists only the caller's own runs unless `filter_roles` asks for more (Flows OpenAPI,
globus-sdk-javascript src/open-api/types/flows.ts, `GET /runs` `filter_roles`: "If not
provided, only Runs for which the caller has 'run_owner' role will be returned"), and Timers
lists only "the current user's timers" (timers.ts, `GET /jobs/`, no role filter). A caller
who is not the owner would see none of the ledger's runs and timers.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import responses
from globus_sdk.testing import load_response

from dichroism_control.config import Config, load_config
from dichroism_control.ledger import Identity, Ledger
from tests.deploy.helpers import (
    CLIENT_ID,
    FakeGlobus,
    client_env,
    person_env,
    run_cli,
    started_mock,
    store_person_tokens,
)
from tests.watcher.conftest import FLOW_ID, pin_ids, write_file

PERSON = "8ca28797-3541-4a5d-a264-05b00f91e608"
FLOWS_SCOPE = "https://auth.globus.org/scopes/eec9b274-0c81-4334-bdc2-54e90e689b9a/all"
TIMER_SCOPE = "https://auth.globus.org/scopes/524230d7-ea86-4a52-8312-86065a9e0417/timer"
TIMERS_RS = "524230d7-ea86-4a52-8312-86065a9e0417"


@pytest.fixture
def as_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGlobus]:
    client_env(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with started_mock() as mock:
        yield FakeGlobus(mock)


@pytest.fixture
def as_person(monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    """A person logged in with `dichroism login` (UserApp, refreshable tokens)."""
    person_env(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with started_mock() as mock:
        yield mock


def _config(write_config: Callable[..., Path], *, all_flows: bool = False) -> tuple[Path, Config]:
    def pins(data: dict[str, Any]) -> None:
        pin_ids(data)
        if all_flows:
            data["globus"]["flows"]["archive"]["id"] = "22222222-0000-4000-8000-000000000002"
            data["globus"]["flows"]["prune"]["id"] = "33333333-0000-4000-8000-000000000003"

    path = write_config(pins)
    return path, load_config(path)


def _person_tokens(config: Config) -> None:
    scopes = {"flows.globus.org": FLOWS_SCOPE, TIMERS_RS: TIMER_SCOPE}
    store_person_tokens(config.state_path, PERSON, scopes)


def test_the_identity_that_starts_the_first_run_owns_the_ledger(
    as_client: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """For a ClientApp the caller is the client's own identity (its client id); the owner is
    recorded in the ledger's meta table when the first run starts (SDK fixture
    `flows.run_flow` answers the run)."""
    config_path, config = _config(write_config)
    load_response("flows.run_flow")
    path = write_file(Path(config.beamlines["bl402"].watch.root) / "P1" / "a.h5")
    assert Ledger(config.ledger_path).owner() is None

    code, _, err = run_cli(
        ["--config", str(config_path), "submit", str(path), "--beamline", "bl402"], capsys
    )
    assert code == 0, err
    assert Ledger(config.ledger_path).owner() == Identity(CLIENT_ID, "client")


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["lifecycle", "--once"], "lifecycle"),
        (["submit", "{path}", "--beamline", "bl402"], "submit"),
        (["watch"], "watch"),
        (["timers", "cancel", "some-timer"], "timers cancel"),
    ],
)
def test_another_identity_may_not_act_on_the_ledger(
    args: list[str],
    command: str,
    as_person: responses.RequestsMock,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The person's identity is the one the SDK decoded from their id_token at login and
    keeps with the stored tokens (globus_sdk token_storage/base.py:99-124); it differs from
    the owner's, so a command that would act on a listing refuses in one line, before any
    HTTP call or ledger write."""
    config_path, config = _config(write_config, all_flows=True)
    _person_tokens(config)
    ledger = Ledger(config.ledger_path)
    ledger.record_owner(Identity(CLIENT_ID, "client"))
    path = write_file(Path(config.beamlines["bl402"].watch.root) / "P1" / "a.h5")
    argv = [a.replace("{path}", str(path)) for a in args]

    code, out, err = run_cli(["--config", str(config_path), *argv], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"dichroism: error: {command}: this ledger's runs and timers belong to client"
        f" {CLIENT_ID}, not to you (user {PERSON}); Flows and Timers list only the caller's"
        f" own, so {command} would start again what it cannot see: run it as the owner\n"
    )
    assert len(as_person.calls) == 0
    assert ledger.get_scan(str(path)) is None
    assert ledger.owner() == Identity(CLIENT_ID, "client")


def test_runs_list_asks_for_every_shared_role_and_says_whose_runs_it_cannot_see(
    as_person: responses.RequestsMock,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`GET /runs` with `filter_roles` = every role of the Flows OpenAPI's enum (flows.ts:
    run_owner, run_managers, run_monitors, flow_run_managers, flow_run_monitors); the page is
    the SDK's `flows.list_runs` fixture."""
    config_path, config = _config(write_config)
    _person_tokens(config)
    Ledger(config.ledger_path).record_owner(Identity(CLIENT_ID, "client"))
    load_response("flows.list_runs")

    code, out, err = run_cli(
        ["--config", str(config_path), "--format", "json", "runs", "list"], capsys
    )
    assert code == 0, err
    (call,) = as_person.calls
    query = parse_qs(urlparse(call.request.url).query)
    assert query["filter_roles"] == [
        "run_owner,run_managers,run_monitors,flow_run_managers,flow_run_monitors"
    ]
    assert query["filter_flow_id"] == [FLOW_ID]
    doc = json.loads(out)
    assert doc["count"] == 1
    assert doc["visibility"] == {
        "caller": f"user {PERSON}",
        "owner": f"client {CLIENT_ID}",
        "is_owner": False,
    }
    assert doc["visibility_note"] == (
        f"listed as user {PERSON}: runs of the ledger's owner (client {CLIENT_ID}) show only"
        " where you are a run or flow manager/monitor"
    )


def test_timers_list_says_it_cannot_see_the_owners_timers(
    as_person: responses.RequestsMock,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Timers lists only the caller's timers (timers.ts `GET /jobs/`; page: the SDK's
    `timer.list_jobs` fixture). The ledger's batch is still shown as scheduled: nothing is
    concluded from a listing that cannot see it."""
    config_path, config = _config(write_config)
    _person_tokens(config)
    ledger = Ledger(config.ledger_path)
    ledger.record_owner(Identity(CLIENT_ID, "client"))
    with ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO prune_timers (batch, beamline, location, day, timer_id, label, run_at,"
            " files, state, created_at, updated_at) VALUES ('bl402/cfs/2027-01-01', 'bl402',"
            " 'cfs', '2027-01-01', 'owners-timer', 'bl402 prune cfs 2027-01-01', 0, 3,"
            " 'scheduled', 0, 0)"
        )
    load_response("timer.list_jobs")

    code, out, err = run_cli(["--config", str(config_path), "timers", "list"], capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == (
        f"note: Timers lists only your own timers: those of the ledger's owner (client"
        f" {CLIENT_ID}) are not shown; the ledger's batches are"
    )
    assert "bl402 prune cfs 2027-01-01" in out
    (row,) = ledger.query("SELECT state FROM prune_timers")
    assert row["state"] == "scheduled"


def test_listings_as_the_owner_carry_no_note(
    as_client: FakeGlobus, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner listing its own runs: same query (flows.ts `filter_roles`), no note."""
    config_path, config = _config(write_config)
    Ledger(config.ledger_path).record_owner(Identity(CLIENT_ID, "client"))
    load_response("flows.list_runs")
    code, out, _ = run_cli(
        ["--config", str(config_path), "--format", "json", "runs", "list"], capsys
    )
    assert code == 0
    doc: dict[str, Any] = json.loads(out)
    assert doc["visibility"]["is_owner"] is True and "visibility_note" not in doc
