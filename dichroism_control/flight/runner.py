"""`dichroism check`: the full round trip now, for every beamline (or one), with a verdict
per step and its remedy, recorded in the ledger for health, alerts and metrics.

Per beamline: write a fresh canary, start a flight_check run that deletes it at both ends,
wait (polling the run, at most `flight_check.timeout_seconds`), judge, then delete what is
left of it here. A run waiting for a person (INACTIVE: a missing consent) will not finish
by waiting: it is reported at once with the login command and cancelled (its canary is
gone: resuming it later could only fail).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.errors import AuthRequiredError, BackendError, DichroismError
from dichroism_control.flight import canary as canaries
from dichroism_control.flight.request import check_tag
from dichroism_control.flight.request import request as flight_request
from dichroism_control.flight.verdict import BeamlineVerdict, Who, failed_before_run, judge, record

if TYPE_CHECKING:
    from dichroism_control.backend import Backend
    from dichroism_control.config import Config
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.ledger import Ledger

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


@dataclass
class CheckReport:
    verdicts: list[BeamlineVerdict] = field(default_factory=list)
    recorded: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.verdict == "ok" for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": "ok" if self.ok else "failed",
            "beamlines": [v.as_dict() for v in self.verdicts],
            "leftovers_removed": self.removed,
        }


def check(
    config: Config,
    ledger: Ledger,
    backend: Backend,
    deployment: Deployment,
    *,
    who: Who,
    beamlines: list[str] | None = None,
    timeout: float | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = POLL_SECONDS,
) -> CheckReport:
    names = beamlines or sorted(config.beamlines)
    deployment.flow_id("flight_check")  # "not deployed" before any file is written
    deployment.function_id("flight_check_endpoint")
    report = CheckReport()
    started: dict[str, tuple[canaries.Canary, str]] = {}
    for name in names:
        outcome = _start(config, backend, deployment, name, clock())
        if isinstance(outcome, BeamlineVerdict):
            report.verdicts.append(outcome)
        else:
            started[name] = outcome
    deadline = time.monotonic() + (
        config.flight_check.timeout_seconds if timeout is None else timeout
    )
    runs = _wait(backend, {n: run_id for n, (_, run_id) in started.items()}, deadline, sleep, poll)
    for name, (canary, run_id) in started.items():
        run = runs[name]
        if run.get("status") == "INACTIVE":
            _cancel_quietly(backend, run_id)
        report.verdicts.append(
            judge(run, canary=canary, config=config, who=who, delete_source=True, at=clock())
        )
    for name in names:
        mine = [started[name][0]] if name in started else []
        report.removed += canaries.remove_leftovers(config, name, mine, now=clock())
    report.verdicts.sort(key=lambda v: v.beamline)
    report.recorded = record(ledger, report.verdicts)
    return report


def _start(
    config: Config, backend: Backend, deployment: Deployment, beamline: str, now: float
) -> tuple[canaries.Canary, str] | BeamlineVerdict:
    try:
        canary = canaries.fresh(config, beamline, now=now)
    except OSError as exc:
        return failed_before_run(
            beamline,
            "canary",
            f"cannot write {canaries.directory(config, beamline)}: {exc}",
            "the watch root must be mounted and writable by this account",
            now,
        )
    label = f"{beamline} flight check {canary.local_path.stem.split('-', 1)[1]}"
    try:
        run = backend.run_flow(
            flight_request(
                config,
                deployment,
                canary,
                delete_source=True,
                label=label,
                tag=check_tag(beamline),
            )
        )
    except AuthRequiredError as exc:
        canaries.remove_leftovers(config, beamline, [canary], now=now)
        return failed_before_run(beamline, "run", str(exc), str(exc), now)
    except BackendError as exc:
        canaries.remove_leftovers(config, beamline, [canary], now=now)
        from dichroism_control.causes import remedy_for

        return failed_before_run(beamline, "run", str(exc), remedy_for(str(exc)), now)
    return canary, str(run["run_id"])


def _wait(
    backend: Backend,
    run_ids: dict[str, str],
    deadline: float,
    sleep: Callable[[float], None],
    poll: float,
) -> dict[str, dict[str, Any]]:
    """Each run's document once it is final or INACTIVE, or as it is at the deadline."""
    latest: dict[str, dict[str, Any]] = {
        n: {"run_id": r, "status": "ACTIVE"} for n, r in run_ids.items()
    }
    pending = dict(run_ids)
    while pending:
        for name, run_id in list(pending.items()):
            try:
                run = backend.get_run(run_id)
            except BackendError as exc:
                log.warning("flight check %s: reading run %s failed: %s", name, run_id, exc)
                continue
            latest[name] = run
            if run.get("status") in FINAL_STATUSES or run.get("status") == "INACTIVE":
                del pending[name]
        if not pending or time.monotonic() >= deadline:
            break
        sleep(poll)
    return latest


def _cancel_quietly(backend: Backend, run_id: str) -> None:
    try:
        backend.cancel_run(run_id)
    except DichroismError as exc:
        log.warning("flight check: cancelling the waiting run %s failed: %s", run_id, exc)
