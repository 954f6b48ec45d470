"""A flight_check run read step by step: a verdict per step with the remedy, and the
ledger's `last_flight_check` that health, alerts and metrics read.

The run's state holds each step's result (`$.copy`, `$.stat`, `$.delete_cfs`,
`$.delete_source`, `$.nersc`, `$.scicat`) or, for a step that raised, its error
(`$.<step>_error`): the flow runs every step, so one run names every problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dichroism_control.backend import FINAL_STATUSES
from dichroism_control.causes import explain_error, explain_run, one_line, remedy_for

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.flight.canary import Canary
    from dichroism_control.ledger import Ledger

META_KEY = "last_flight_check"
STEP_TITLES = {
    "canary": "write the canary at the source",
    "run": "the flight_check run",
    "transfer": "copy compute-dtn -> CFS, MD5 verified",
    "stat": "stat the copy at CFS",
    "delete_cfs": "delete the copy at CFS",
    "delete_source": "delete the canary at compute-dtn",
    "nersc": "NERSC endpoint: hsi, htar, HPSS",
    "scicat": "SciCat endpoint: SciCat with its credentials",
}
RUN_STEPS = ("transfer", "stat", "delete_cfs", "delete_source", "nersc", "scicat")
_CONSENT = ("consent", "ConsentRequired", "AuthenticationRequired", "auth requirements")
_DENIED = ("PERMISSION_DENIED", "Permission denied", "EACCES", "Errno 13", "403", "forbidden")


@dataclass
class Step:
    step: str
    verdict: str  # ok | failed | skipped | not_run | unknown
    detail: str
    remedy: str | None = None


@dataclass
class BeamlineVerdict:
    beamline: str
    at: float
    run_id: str | None = None
    status: str | None = None  # the run's status, when there is a run
    steps: list[Step] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if any(s.verdict == "failed" for s in self.steps):
            return "failed"
        if any(s.verdict == "unknown" for s in self.steps) or self.status != "SUCCEEDED":
            return "unknown"
        return "ok"

    def first_problem(self) -> Step | None:
        return next((s for s in self.steps if s.verdict in ("failed", "unknown")), None)

    def as_dict(self) -> dict[str, Any]:
        link = f"https://app.globus.org/runs/{self.run_id}" if self.run_id else None
        return {
            "beamline": self.beamline,
            "verdict": self.verdict,
            "run_id": self.run_id,
            "link": link,
            "status": self.status,
            "steps": [{**asdict(s), "title": STEP_TITLES[s.step]} for s in self.steps],
        }


@dataclass(frozen=True)
class Who:
    """Whom a remedy names: the identity the runs act as, and how it logs in again."""

    identity: str  # "client <id> (the service identity)", "user <id>", ...
    login: str  # the command that grants a missing consent


def failed_before_run(
    beamline: str, step: str, message: str, remedy: str | None, at: float
) -> BeamlineVerdict:
    """No run could start (the canary could not be written, run_flow refused)."""
    verdict = BeamlineVerdict(beamline, at)
    verdict.steps.append(Step(step, "failed", one_line(message), remedy))
    verdict.steps.extend(Step(s, "not_run", "not started") for s in RUN_STEPS)
    return verdict


def judge(
    run: Mapping[str, Any],
    *,
    canary: Canary,
    config: Config,
    who: Who,
    delete_source: bool,
    at: float,
) -> BeamlineVerdict:
    """The verdict of one run document (final, INACTIVE, or still ACTIVE at a timeout)."""
    status = str(run.get("status") or "")
    details = run.get("details") if isinstance(run.get("details"), Mapping) else {}
    output = details.get("output") if isinstance(details, Mapping) else None
    state: Mapping[str, Any] = output if isinstance(output, Mapping) else {}
    verdict = BeamlineVerdict(canary.beamline, at, str(run.get("run_id") or ""), status)
    if status == "INACTIVE":
        cause = explain_run(run)
        verdict.steps.append(
            Step(
                "run",
                "failed",
                f"waiting for a person (INACTIVE): {cause.message}",
                _consent_remedy(who) if _consent(cause.line()) else cause.remedy,
            )
        )
    elif status not in FINAL_STATUSES:
        verdict.steps.append(
            Step("run", "unknown", f"still {status or 'running'}: not finished in time", None)
        )
    verdict.steps.append(_transfer(state, canary, config, who))
    verdict.steps.append(_stat(state, canary, config, who))
    verdict.steps.append(_delete(state, "delete_cfs", config, who, canary, expected=True))
    verdict.steps.append(
        _delete(state, "delete_source", config, who, canary, expected=delete_source)
    )
    verdict.steps.append(_endpoint(state, "nersc"))
    verdict.steps.append(_endpoint(state, "scicat"))
    if status == "SUCCEEDED" and any(s.verdict == "not_run" for s in verdict.steps):
        # A run of our definition cannot succeed without every step: another definition?
        verdict.steps.insert(
            0, Step("run", "unknown", "the run succeeded without reporting every step")
        )
    if status in ("FAILED", "ENDED") and not any(s.verdict == "failed" for s in verdict.steps):
        # Failed outside the steps (refused input, a flow-level error, cancelled).
        cause = explain_run(run)
        verdict.steps.insert(0, Step("run", "failed", cause.line(), cause.remedy))
    return verdict


def _consent(text: str) -> bool:
    return any(word.lower() in text.lower() for word in _CONSENT)


def _consent_remedy(who: Who) -> str:
    return (
        f"a consent is missing: run `{who.login}` (it asks for every collection's data_access"
        " and the flows' scopes), then `dichroism check` again"
    )


def _access_remedy(who: Who, config: Config, canary: Canary, step: str) -> str:
    settings = config.beamline(canary.beamline)
    source, cfs = config.endpoint(settings.source), config.endpoint(settings.destination)
    where = {
        "transfer": f"read on {source.name} ({source.uuid}) and write on {cfs.name} ({cfs.uuid})",
        "stat": f"read on {cfs.name} ({cfs.uuid})",
        "delete_cfs": f"write on {cfs.name} ({cfs.uuid})",
        "delete_source": f"write on {source.name} ({source.uuid})",
    }[step]
    return (
        f"grant {who.identity} {where} for the `.dichroism-canary` directory (Globus web"
        " app: Collections -> the collection -> Permissions; and the file system's"
        " permissions behind it)"
    )


def _error_step(
    state: Mapping[str, Any], step: str, key: str, config: Config, who: Who, canary: Canary
) -> Step | None:
    error = state.get(f"{key}_error")
    if error is None:
        return None
    cause = explain_error(error)
    text = cause.line()
    if _consent(text):
        remedy: str | None = _consent_remedy(who)
    elif any(word in text for word in _DENIED):
        remedy = _access_remedy(who, config, canary, step)
    else:
        remedy = cause.remedy or remedy_for(text)
    return Step(step, "failed", one_line(cause.message), remedy)


def _transfer(state: Mapping[str, Any], canary: Canary, config: Config, who: Who) -> Step:
    failed = _error_step(state, "transfer", "copy", config, who, canary)
    if failed is not None:
        return failed
    if isinstance(state.get("copy"), Mapping):
        return Step("transfer", "ok", f"{canary.size} bytes copied, MD5 {canary.md5} verified")
    return Step("transfer", "not_run", "not reached")


def _stat(state: Mapping[str, Any], canary: Canary, config: Config, who: Who) -> Step:
    failed = _error_step(state, "stat", "stat", config, who, canary)
    if failed is not None:
        return failed
    stat = state.get("stat")
    if not isinstance(stat, Mapping):
        return Step("stat", "not_run", "not reached")
    details = stat.get("details") if isinstance(stat.get("details"), Mapping) else {}
    size = details.get("size") if isinstance(details, Mapping) else None
    if size == canary.size:
        return Step("stat", "ok", f"at CFS with its {size} bytes")
    if isinstance(details, Mapping) and details.get("code") == "NotFound":
        return Step(
            "stat",
            "failed",
            "the copy is not at CFS",
            "see the transfer step; check the CFS collection's root_path in config.yml",
        )
    return Step(
        "stat",
        "failed",
        f"the copy at CFS has {size} bytes, the canary {canary.size}",
        "check the CFS file system (quota, a full disk) and run the check again",
    )


def _delete(
    state: Mapping[str, Any],
    step: str,
    config: Config,
    who: Who,
    canary: Canary,
    *,
    expected: bool,
) -> Step:
    if not expected:
        return Step(step, "skipped", "the recurring check's canary stays for its next run")
    failed = _error_step(state, step, step, config, who, canary)
    if failed is not None:
        return failed
    if isinstance(state.get(step), Mapping):
        return Step(step, "ok", "deleted")
    return Step(step, "not_run", "not reached")


def _endpoint(state: Mapping[str, Any], step: str) -> Step:
    error = state.get(f"{step}_error")
    if error is not None:
        cause = explain_error(error)
        return Step(step, "failed", one_line(cause.message), cause.remedy)
    from dichroism_control.lifecycle.base import compute_result

    result = compute_result(dict(state), step)
    checks = result.get("checks")
    if not isinstance(checks, list) or not checks:
        return Step(step, "not_run", "not reached")
    host = f" (host {result['host']})" if result.get("host") else ""
    failed = [c for c in checks if isinstance(c, Mapping) and not c.get("ok")]
    if failed:
        detail = "; ".join(f"{c.get('name')}: {c.get('detail')}" for c in failed)
        remedy = next((str(c["remedy"]) for c in failed if c.get("remedy")), None)
        return Step(step, "failed", one_line(detail + host), remedy)
    detail = "; ".join(f"{c.get('name')}: {c.get('detail')}" for c in checks)
    return Step(step, "ok", one_line(detail + host))


# -- the ledger's view ---------------------------------------------------------------------
def record(ledger: Ledger, verdicts: list[BeamlineVerdict]) -> dict[str, Any]:
    """Merge these beamlines' verdicts into meta `last_flight_check` and return it.

    `verdict` is the worst over the beamlines' latest checks and `at` the oldest of them
    (health calls the check stale when the OLDEST is too old); `detail` is the first
    problem, in one line; `steps` every step of every beamline."""
    current = ledger.get_meta(META_KEY)
    beamlines: dict[str, Any] = {}
    if isinstance(current, dict) and isinstance(current.get("beamlines"), dict):
        beamlines.update(current["beamlines"])
    for verdict in verdicts:
        beamlines[verdict.beamline] = {"at": verdict.at, **verdict.as_dict()}
    ordered = [beamlines[name] for name in sorted(beamlines)]
    worst = "ok"
    for entry in ordered:
        if entry["verdict"] == "failed" or (entry["verdict"] != "ok" and worst == "ok"):
            worst = entry["verdict"]
    detail = None
    for entry in ordered:
        problem = next((s for s in entry["steps"] if s["verdict"] in ("failed", "unknown")), None)
        if problem is not None:
            remedy = f" — next: {problem['remedy']}" if problem.get("remedy") else ""
            detail = one_line(f"{entry['beamline']} {problem['step']}: {problem['detail']}{remedy}")
            break
    value = {
        "verdict": worst,
        "at": min(float(e["at"]) for e in ordered),
        "detail": detail,
        "steps": [{"beamline": e["beamline"], **s} for e in ordered for s in e["steps"]],
        "beamlines": beamlines,
    }
    ledger.set_meta(META_KEY, value)
    return value
