"""The lifecycle's flight-check timers on the fake backend: exactly once across a crash, a
timer gone missing is recreated, runs are looked for only once one is due, a deployment
without the flight check still runs its pipeline."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from dichroism_control.config import load_config
from dichroism_control.deploy_state import Deployment
from dichroism_control.flight.request import flight_tag
from dichroism_control.lifecycle.flight import TIMERS_KEY
from tests.lifecycle.conftest import FLOWS, FUNCTIONS, T0, World

FLIGHT = "5f1e0000-0000-4000-8000-00000000f004"
HOUR = 3600.0


def _flight_world(world: World) -> World:
    """The world with the flight check deployed: the fake knows the flow as deploy registers
    it (its schema bound to this config), so timer bodies are checked as Flows checks them."""
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import load_document

    world.deployment = Deployment(
        {**FLOWS, "flight_check": FLIGHT},
        {**FUNCTIONS, "flight_check_endpoint": "5f1e0000-0000-4000-8000-0000000fc009"},
    )
    doc = load_document(world.config.definitions_path / "flight_check.json", name="flight_check")
    schema = specialise(doc, world.config, functions=world.deployment.functions).input_schema
    world.backend.add_flow(FLIGHT, schema)
    return world


def test_a_crash_between_create_and_record_adopts_the_timer_by_name(world: World) -> None:
    world = _flight_world(world)
    loop = world.lifecycle()
    loop.run_once()
    assert len(world.backend.timers) == 2
    # As if the process died right after create_recurring_flow_timer: the entry says
    # 'scheduling' and knows no id.
    entries = world.ledger.get_meta(TIMERS_KEY)
    for entry in entries.values():
        entry.update(state="scheduling", timer_id=None)
    world.ledger.set_meta(TIMERS_KEY, entries)
    summary = world.lifecycle().run_once()
    assert summary["flight_timers_adopted"] == 2 and "flight_timers_scheduled" not in summary
    assert len(world.backend.timers) == 2
    ids = {e["timer_id"] for e in world.ledger.get_meta(TIMERS_KEY).values()}
    assert ids == set(world.backend.timers)


def test_a_timer_deleted_behind_our_back_is_recreated_after_two_silent_intervals(
    world: World,
) -> None:
    world = _flight_world(world)
    world.lifecycle().run_once()
    gone = next(t for t in world.backend.timers.values() if t["name"] == "bl402 flight check")
    del world.backend.timers[gone["job_id"]]
    world.clock.now = T0 + 6 * HOUR  # not overdue: nobody looks
    assert "flight_timers_missing" not in world.lifecycle().run_once()
    world.clock.now = T0 + 25 * HOUR  # two 12 h intervals without a run
    assert world.lifecycle().run_once()["flight_timers_missing"] == 1
    summary = world.lifecycle().run_once()
    assert summary["flight_timers_scheduled"] == 1
    names = sorted(t["name"] for t in world.backend.timers.values())
    assert names == ["bl402 flight check", "bl631 flight check"]


def test_runs_are_awaited_only_once_one_is_due(world: World) -> None:
    world = _flight_world(world)
    loop = world.lifecycle()
    loop.run_once()
    assert loop.flights.awaited(loop.deployment.flows) == []  # first run a minute away
    world.clock.now = T0 + 120
    awaited = loop.flights.awaited(loop.deployment.flows)
    assert sorted(a.key for a in awaited) == [flight_tag("bl402"), flight_tag("bl631")]
    assert {a.flow for a in awaited} == {"flight_check"}


def test_a_run_started_by_the_timer_is_judged_and_recorded(world: World) -> None:
    world = _flight_world(world)
    world.lifecycle().run_once()
    world.clock.now = T0 + 120
    timer = next(t for t in world.backend.timers.values() if t["name"] == "bl402 flight check")
    request = next(r for name, _, r in world.backend.timer_requests if name == timer["name"])
    run = world.backend.run_flow(request)
    world.backend.runs[run["run_id"]]["start_time"] = datetime.fromtimestamp(
        T0 + 61, UTC
    ).isoformat()
    world.backend.finish(run["run_id"], "FAILED", {"scicat_error": "SciCat unreachable"})
    summary = world.lifecycle().run_once()
    assert summary["flight_check_failed"] == 1
    meta = world.ledger.get_meta("last_flight_check")
    assert meta["verdict"] == "failed" and meta["detail"].startswith("bl402 ")
    entry = world.ledger.get_meta(TIMERS_KEY)["bl402"]
    assert entry["last_run_id"] == run["run_id"] and entry["next_due"] == T0 + 61 + 12 * HOUR
    # Seen again: not recorded twice.
    assert "flight_check_failed" not in world.lifecycle().run_once()


def test_without_the_flight_check_deployed_the_pipeline_runs_on(world: World) -> None:
    summary = world.lifecycle().run_once()
    assert "errors" not in summary and world.backend.timers == {}
    assert world.ledger.get_meta(TIMERS_KEY) is None


def test_disabled_in_the_config_means_no_timer(write_config: Callable[..., Path]) -> None:
    path = write_config(lambda d: d.update(flight_check={"enabled": False}))
    world = _flight_world(World(load_config(path)))
    summary = world.lifecycle().run_once()
    assert world.backend.timers == {}
    assert not [key for key in summary if key.startswith("flight")]
