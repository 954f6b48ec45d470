"""The Flows and Timers rules both doubles obey (dichroism_control.local.service_rules): the
in-memory FakeBackend of the unit tests and the LocalBackend of the demo and e2e tests.

Every test names its source. Tests that hold for both doubles run against each.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.backend import FlowSpec, RunRequest, run_start_time
from dichroism_control.config import Config, load_config
from dichroism_control.errors import PermanentBackendError
from dichroism_control.local.backend import LocalBackend
from dichroism_control.local.engine import (
    INACTIVE,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    Engine,
)
from dichroism_control.local.service_rules import flows as flow_rules
from dichroism_control.local.service_rules import timers as timer_rules
from tests.fakes import FakeBackend

PASS = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "when": {"type": "string", "format": "date-time"},
    },
    "required": ["id"],
}
GOOD = {"id": "1b2c3d4e-0000-4000-8000-000000000402", "when": "2026-03-01T10:00:00+00:00"}
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC).timestamp()


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Double:
    """One double behind the Backend protocol, and how to give it a flow."""

    kind: str
    backend: Any
    add_flow: Callable[[dict[str, Any] | None], str]
    clock: Clock = field(default_factory=Clock)

    def request(self, flow_id: str, body: Any = None, label: str = "a run") -> RunRequest:
        return RunRequest(flow_id, dict(GOOD) if body is None else body, label, ["t1", "t2"])


@pytest.fixture
def local_config(write_config: Callable[..., Path]) -> Config:
    return load_config(write_config(backend="local"))


def _fake() -> Double:
    clock = Clock()
    fake = FakeBackend(clock=clock)
    counter = iter(range(10_000))

    def add(schema: dict[str, Any] | None) -> str:
        flow_id = f"5f1e0000-0000-4000-8000-{next(counter):012d}"
        fake.add_flow(flow_id, schema)
        return flow_id

    return Double("fake", fake, add, clock)


@pytest.fixture(params=["fake", "local"])
def double(request: pytest.FixtureRequest, local_config: Config) -> Iterator[Double]:
    if request.param == "fake":
        yield _fake()
        return
    backend = LocalBackend(local_config, background=False)

    def add(schema: dict[str, Any] | None) -> str:
        return str(backend.create_flow(FlowSpec("pass", PASS, schema or {}))["id"])

    try:
        yield Double("local", backend, add)
    finally:
        backend.close()


# ------------------------------------------------------------------------- run requests


def test_input_is_checked_against_the_schema_with_formats(double: Double) -> None:
    """flows.ts POST /flows/{flow_id}/run: input that fails the flow's input schema is a 400;
    docs.globus.org/api/flows/input-schema: formats are part of it. `uuid` and `date-time`
    are checked (jsonschema alone skips date-time without rfc3339-validator)."""
    flow_id = double.add_flow(SCHEMA)
    started = double.backend.run_flow(double.request(flow_id))
    assert started["status"] in flow_rules.LIVE | {SUCCEEDED}
    for body, where in (
        ({**GOOD, "id": "not-a-uuid"}, "at id"),
        ({**GOOD, "when": "2026-03-01 10:00"}, "at when"),
        ({"when": GOOD["when"]}, "at (top)"),
    ):
        pattern = rf"^400 BAD_REQUEST: .*{re.escape(where)}:"
        with pytest.raises(PermanentBackendError, match=pattern) as exc:
            double.backend.run_flow(double.request(flow_id, body))
        assert exc.value.http_status == 400


def test_a_flow_without_a_schema_takes_any_input(double: Double) -> None:
    """flows.ts InputBody: "If there is no input schema, no validation will be performed"."""
    flow_id = double.add_flow(None)
    run = double.backend.run_flow(double.request(flow_id, {"anything": [1, "x"]}))
    assert run["flow_id"] == flow_id


def test_label_longer_than_128_is_refused(double: Double) -> None:
    """Run label <= 128 characters (GLOBUS_NOTES; flows.ts Label carries no length). Longer
    is refused as run metadata is, 422 (flows.ts POST /flows/{flow_id}/run)."""
    flow_id = double.add_flow(SCHEMA)
    assert double.backend.run_flow(double.request(flow_id, label="x" * 128))["label"] == "x" * 128
    with pytest.raises(PermanentBackendError, match=r"^422 .*129 characters") as exc:
        double.backend.run_flow(double.request(flow_id, label="x" * 129))
    assert exc.value.http_status == 422


def test_unknown_ids_answer_404(double: Double) -> None:
    """flows.ts: an unknown flow (POST /flows/{flow_id}/run) or run (GET /runs/{run_id}) is a
    404; Timers likewise for an unknown job. Never a KeyError."""
    nobody = "9e9e9e9e-0000-4000-8000-000000000000"
    calls: list[Callable[[], Any]] = [
        lambda: double.backend.run_flow(double.request(nobody)),
        lambda: double.backend.get_run(nobody),
        lambda: list(double.backend.iter_run_logs(nobody)),
        lambda: double.backend.cancel_run(nobody),
        lambda: double.backend.delete_timer(nobody),
    ]
    for call in calls:
        with pytest.raises(PermanentBackendError, match=r"^404 NOT_FOUND") as exc:
            call()
        assert exc.value.http_status == 404


# ------------------------------------------------------------------------- run documents


def test_start_time_is_timezone_aware_iso_8601(double: Double) -> None:
    """flows.ts FlowRun.start_time: "A timezone-aware ISO8601 format string"; the SDK fixtures
    show "2023-04-11T20:01:18.040416+00:00". backend.run_start_time parses it."""
    flow_id = double.add_flow(None)
    before = time.time() if double.kind == "local" else double.clock.now
    run = double.backend.run_flow(double.request(flow_id))
    parsed = datetime.fromisoformat(run["start_time"])
    assert parsed.tzinfo is not None
    started = run_start_time(run)
    assert started is not None and before - 1 <= started <= before + 5


def test_runs_are_listed_newest_first_in_pages(double: Double) -> None:
    """SDK fixture flows/list_runs.py (paginated): pages of 20 with has_next_page and an
    opaque marker; flows.ts GET /runs: no marker on the last page, and "The marker encodes
    all state in a given query". Newest first: GlobusBackend asks orderby=start_time DESC."""
    flow_a, flow_b = double.add_flow(None), double.add_flow(None)
    ids = []
    for i in range(45):
        double.clock.now += 1
        ids.append(double.backend.run_flow(double.request(flow_a, {"i": i}))["run_id"])
    other = double.backend.run_flow(double.request(flow_b, {"i": -1}))["run_id"]

    first = double.backend.list_runs_page([flow_a])
    assert len(first["runs"]) == 20 and first["has_next_page"] and first["marker"]
    # The marker carries the query: a different flow list beside it changes nothing.
    second = double.backend.list_runs_page([flow_b], first["marker"])
    assert len(second["runs"]) == 20 and second["has_next_page"]
    third = double.backend.list_runs_page([], second["marker"])
    assert len(third["runs"]) == 5 and third["has_next_page"] is False and "marker" not in third
    paged = [r["run_id"] for page in (first, second, third) for r in page["runs"]]
    assert set(paged) == set(ids) and other not in paged
    listed = list(double.backend.iter_runs(flow_ids=[flow_a]))
    assert [r["run_id"] for r in listed] == paged
    starts = [run_start_time(r) for r in listed]
    assert all(a is not None and b is not None and a >= b for a, b in itertools.pairwise(starts))
    if double.kind == "fake":  # a clock that moved between runs: exactly reverse order
        assert paged == ids[::-1]


def test_fake_cancel_ends_the_run_failed_flow_canceled() -> None:
    """SDK fixture flows/cancel_run.py: a canceled run is FAILED with details.code
    FlowCanceled (globus-cli PR #834 shows the same for an active run). The local backend's
    is tests/e2e/test_backend.py::test_cancel_ends_the_run."""
    double = _fake()
    flow_id = double.add_flow(None)
    run_id = double.backend.run_flow(double.request(flow_id))["run_id"]
    canceled = double.backend.cancel_run(run_id)
    assert canceled["status"] == "FAILED" and canceled["details"]["code"] == "FlowCanceled"


# ------------------------------------------------------------------------- timers


class LabelledRequest(RunRequest):
    """A run request whose timer body carries keys a FlowStartDocument does not have."""

    def timer_body(self) -> dict[str, Any]:
        return {
            **super().timer_body(),
            "label": self.label,
            "activity_notification_policy": {"status": ["FAILED"]},
        }


def _fire(double: Double) -> list[str]:
    if double.kind == "fake":
        return list(double.backend.fire_due_timers(double.clock.now))
    return list(double.backend.fire_due_timers())


def test_a_timer_keeps_only_its_flow_start_document(double: Double) -> None:
    """timers.ts FlowStartDocument holds only body, run_monitors, run_managers and tags:
    `label` and `activity_notification_policy` are dropped, and the run Timers starts has
    no label of ours (docs.globus.org/api/timers documents none: None)."""
    flow_id = double.add_flow(SCHEMA)
    request = LabelledRequest(flow_id, dict(GOOD), "our label", ["prune", "b1"])
    due = datetime.fromtimestamp(
        (time.time() if double.kind == "local" else double.clock.now) - 1, UTC
    )
    timer = double.backend.create_flow_timer(name="t", run_at=due, request=request)
    assert set(timer["callback_body"]) <= set(timer_rules.FLOW_START_KEYS)
    assert timer["callback_body"]["body"] == GOOD and timer["callback_body"]["tags"] == [
        "prune",
        "b1",
    ]
    (run_id,) = _fire(double)
    run = double.backend.get_run(run_id)
    assert run["label"] is None and run["tags"] == ["prune", "b1"]
    assert run["activity_notification_policy"] == {"status": ["INACTIVE"]}  # Flows' default


def test_a_fired_once_timer_has_ended(double: Double) -> None:
    """SDK fixtures: a new timer is "new" (timer/_common.py V2_FLOW_TIMER), a scheduled one
    "loaded" (V1_TIMER); timers.ts list filter_status: 'active', 'inactive', 'ended'. Once
    its one run has started the timer is "ended", next_run None, the run in results
    (JobResult.resource_id); it never fires again."""
    flow_id = double.add_flow(None)
    now = time.time() if double.kind == "local" else double.clock.now
    due = datetime.fromtimestamp(now - 1, UTC)
    later = datetime.fromtimestamp(now + 3600, UTC)
    created = double.backend.create_flow_timer(
        name="due", run_at=due, request=double.request(flow_id)
    )
    double.backend.create_flow_timer(name="later", run_at=later, request=double.request(flow_id))
    assert created["status"] == timer_rules.CREATED
    (run_id,) = _fire(double)
    assert _fire(double) == []
    timers = {t["name"]: t for t in double.backend.iter_timers()}
    assert timers["due"]["status"] == timer_rules.ENDED and timers["due"]["next_run"] is None
    assert timers["due"]["results"]["data"][0]["resource_id"] == run_id
    assert timers["due"]["n_runs"] == 1 and timers["due"]["n_errors"] == 0
    assert timers["later"]["status"] == timer_rules.SCHEDULED and timers["later"]["next_run"]


def test_a_recurring_timer_fires_once_per_due_time_and_stays_loaded(double: Double) -> None:
    """SDK fixture timer/_common.py V2_TRANSFER_TIMER: a recurring schedule is
    {"type": "recurring", "interval_seconds", "start"}; timers.ts RecurringTimerSchedule.
    After each run the timer is still scheduled, its next_run one interval on; a due time
    fires once however often the service looks, and missed intervals fire once, not each."""
    flow_id = double.add_flow(None)
    now = time.time() if double.kind == "local" else double.clock.now
    start = datetime.fromtimestamp(now - 10, UTC).replace(microsecond=0)
    created = double.backend.create_recurring_flow_timer(
        name="every hour", interval_seconds=3600, start=start, request=double.request(flow_id)
    )
    assert created["status"] == timer_rules.CREATED
    assert created["schedule"] == {
        "type": "recurring",
        "interval_seconds": 3600,
        "start": start.isoformat(),
    }
    (run_id,) = _fire(double)
    assert _fire(double) == []
    (timer,) = list(double.backend.iter_timers())
    assert timer["status"] == timer_rules.SCHEDULED and timer["n_runs"] == 1
    next_run = datetime.fromisoformat(timer["next_run"]).timestamp()
    assert next_run == start.timestamp() + 3600
    assert double.backend.get_run(run_id)["label"] is None
    with pytest.raises(PermanentBackendError, match="interval_seconds must be > 0"):
        double.backend.create_recurring_flow_timer(
            name="never", interval_seconds=0, start=start, request=double.request(flow_id)
        )


def test_a_recurring_timer_that_missed_intervals_fires_once() -> None:
    """next_time: the first time of the schedule after now (not one run per missed one)."""
    assert timer_rules.next_time(1000.0, 100.0, 1000.0) == 1100.0
    assert timer_rules.next_time(1000.0, 100.0, 1099.0) == 1100.0
    assert timer_rules.next_time(1000.0, 100.0, 1100.0) == 1200.0
    assert timer_rules.next_time(1000.0, 100.0, 1550.0) == 1600.0


def test_a_timer_whose_run_is_refused_ends_with_an_error(double: Double) -> None:
    """A run request Flows refuses (400) starts nothing: the timer records an error
    (timers.ts JobResult.errors; Timers retries only transient errors,
    docs.globus.org/api/timers/timer-schedules "Retries")."""
    flow_id = double.add_flow(SCHEMA)
    now = time.time() if double.kind == "local" else double.clock.now
    bad = double.request(flow_id, {"id": "not-a-uuid"})
    double.backend.create_flow_timer(
        name="bad", run_at=datetime.fromtimestamp(now - 1, UTC), request=bad
    )
    assert _fire(double) == []
    (timer,) = list(double.backend.iter_timers())
    assert timer["status"] == timer_rules.ENDED and timer["n_errors"] == 1
    assert "400" in str(timer["results"]["data"][0]["errors"])


# ------------------------------------------------------------------------- INACTIVE


def test_fake_run_can_go_inactive_waiting_for_consent() -> None:
    """flows.ts FlowRun.status includes INACTIVE; a run waits there for a missing consent
    (globus-sdk SpecificFlowClient.add_app_transfer_data_access_scope: "preventing
    ``ConsentRequired`` errors when starting or resuming runs")."""
    double = _fake()
    flow_id = double.add_flow(None)
    run_id = double.backend.run_flow(double.request(flow_id))["run_id"]
    double.backend.make_inactive(run_id)
    run = double.backend.get_run(run_id)
    assert run["status"] == "INACTIVE" and run["details"]["code"] == "ConsentRequired"
    double.backend.finish(run_id)
    assert double.backend.get_run(run_id)["status"] == "SUCCEEDED"


class ConsentGate(ActionProvider):
    """An action INACTIVE (ConsentRequired) until `granted` is set, then SUCCEEDED."""

    def __init__(self) -> None:
        self.granted = threading.Event()

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        return self.status("a1")

    def status(self, action_id: str) -> ActionStatus:
        if self.granted.is_set():
            return ActionStatus(status=SUCCEEDED, action_id=action_id, details={"ok": True})
        details = {"code": "ConsentRequired", "description": "data_access consent missing"}
        return ActionStatus(status=INACTIVE, action_id=action_id, details=details)


def _wait_for(backend: LocalBackend, run_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        run = backend.get_run(run_id)
        if run["status"] == status:
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never became {status}: {backend.get_run(run_id)}")


def test_local_run_is_inactive_while_its_action_waits_for_consent(local_config: Config) -> None:
    """As above, on the local backend: the run is INACTIVE with details.code ConsentRequired
    while its action is INACTIVE, ACTIVE again once the consent is there, then SUCCEEDED."""
    url = "https://example.org/consent-gate"
    backend = LocalBackend(local_config, background=False)
    try:
        gate = ConsentGate()
        backend.engine.providers[url] = gate
        definition = {
            "StartAt": "A",
            "States": {"A": {"Type": "Action", "ActionUrl": url, "Parameters": {}, "End": True}},
        }
        flow_id = backend.create_flow(FlowSpec("gate", definition, {}))["id"]
        run_id = backend.run_flow(RunRequest(flow_id, {}, "gated", []))["run_id"]
        inactive = _wait_for(backend, run_id, "INACTIVE")
        assert inactive["details"]["code"] == "ConsentRequired"
        gate.granted.set()
        assert backend.wait(run_id, timeout=20)["status"] == "SUCCEEDED"
    finally:
        backend.close()


# ------------------------------------------------------------------------- run state cap


# "200KB" read as 200,000 bytes of compact UTF-8 JSON (service_rules.flows).
LIMIT = 200_000


def _grow(size: int) -> dict[str, Any]:
    return {"Type": "Pass", "Result": "x" * size, "ResultPath": "$.blob"}


def test_run_fails_when_its_state_outgrows_200kb_after_any_transition() -> None:
    """docs.globus.org/api/flows/limits: "Maximum Run State Size 200KB". The state is measured
    after every transition: a state that grows past the cap and would shrink again in the
    next state still fails the run there (FAILED, code RunStateTooLarge; the failure code is
    ours, the limits page does not say how Flows reports it)."""
    definition = {
        "StartAt": "Grow",
        "States": {
            "Grow": {**_grow(LIMIT), "Next": "Shrink"},
            "Shrink": {"Type": "Pass", "Result": "small", "ResultPath": "$.blob", "End": True},
        },
    }
    outcome = Engine({}).run(definition, {})
    assert outcome.status == "FAILED" and outcome.code == "RunStateTooLarge"
    assert outcome.details["state_name"] == "Grow" and "200KB" in outcome.details["description"]
    assert outcome.output is None
    # Just under the cap, the same flow succeeds.
    fits = LIMIT - len('{"blob":""}')
    definition["States"]["Grow"] = {**_grow(fits), "Next": "Shrink"}
    assert Engine({}).run(definition, {}).status == "SUCCEEDED"


def test_run_whose_input_is_over_the_cap_fails_at_the_start() -> None:
    """docs.globus.org/api/flows/limits: the run state starts as the input; an input over the
    200KB cap fails the run before any state runs (closest reading)."""
    outcome = Engine({}).run(PASS, {"blob": "x" * LIMIT})
    assert outcome.code == "RunStateTooLarge" and outcome.details["state_name"] is None
    assert not any(e["code"] == "PassStarted" for e in outcome.log)


def test_local_backend_reports_the_state_cap_on_the_run(local_config: Config) -> None:
    """The same cap on a LocalBackend run: the run document is FAILED, details.code says so."""
    backend = LocalBackend(local_config, background=False)
    try:
        definition = {
            "StartAt": "Grow",
            "States": {"Grow": {**_grow(LIMIT), "End": True}},
        }
        flow_id = backend.create_flow(FlowSpec("grow", definition, {}))["id"]
        run_id = backend.run_flow(RunRequest(flow_id, {}, "big", []))["run_id"]
        run = backend.wait(run_id, timeout=20)
        assert run["status"] == "FAILED" and run["details"]["code"] == "RunStateTooLarge"
    finally:
        backend.close()


# ------------------------------------------------------------------------- fake's clock


def test_fake_start_times_follow_its_clock_for_stop_early_listings() -> None:
    """backend.run_start_time must parse the fake's start times (issue 13: the old
    "…00:00:000000" times parsed as None and silently disabled the lifecycle's "stop at the
    oldest awaited run"). A run starts when it is submitted: start_time is the clock's."""
    double = _fake()
    flow_id = double.add_flow(None)
    stamps = []
    for step in (0.0, 90.5, 3600.25):
        double.clock.now = T0 + step
        run = double.backend.run_flow(double.request(flow_id))
        stamps.append(run_start_time(run))
    assert stamps == pytest.approx([T0, T0 + 90.5, T0 + 3600.25], abs=1e-6)
    when = datetime.fromtimestamp(T0 + 3600.25, UTC)
    assert run["start_time"] == when.isoformat(timespec="microseconds")
