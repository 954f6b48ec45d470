"""Fixtures for the lifecycle tests: a ledger, a FakeBackend, a settable clock, scan helpers."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.backend import RunRequest
from dichroism_control.config import Config, load_config
from dichroism_control.deploy_state import Deployment
from dichroism_control.ledger import Ledger
from dichroism_control.lifecycle import Lifecycle
from tests.fakes import FakeBackend

FLOWS = {
    "new_file": "5f1e0000-0000-4000-8000-00000000f001",
    "archive": "5f1e0000-0000-4000-8000-00000000f002",
    "prune": "5f1e0000-0000-4000-8000-00000000f003",
}
FUNCTIONS = {
    name: f"5f1e0000-0000-4000-8000-0000000fc00{i}"
    for i, name in enumerate(
        ["scicat_ingest", "scicat_add_location", "hpss_archive", "hpss_verify", "cfs_verify"]
    )
}
# Every scan's recorded mtime (2026-02-28 12:00:00 UTC) and its prune form.
MTIME_NS = 1_772_280_000_000_000_000
MTIME = "2026-02-28 12:00:00+00:00"


def checksum_of(rel: str) -> str:
    """A stand-in MD5 per path (the lifecycle never hashes; it carries what was recorded)."""
    return hashlib.md5(rel.encode(), usedforsecurity=False).hexdigest()


def compute(result: dict[str, Any]) -> dict[str, Any]:
    """A Compute action's result as the Compute action provider stores it (twice)."""
    return {"status": "SUCCEEDED", "details": {"result": [result], "results": [{"output": result}]}}


def prune_output(
    *,
    safe: list[int],
    delete: list[int],
    kept: list[dict[str, Any]] | None = None,
    changed: list[int] | None = None,
    gone: list[int] | None = None,
) -> dict[str, Any]:
    """A prune run's final state: the verifier's verdicts and the stat loop's lists."""
    return {
        "verification": compute({"algorithm": "md5", "safe": safe, "kept": kept or []}),
        "check": {
            "todo": safe,
            "n": len(safe),
            "pos": len(safe),
            "delete": delete,
            "changed": changed or [],
            "gone": gone or [],
        },
    }


# 2026-03-01 10:00:00 UTC: mid-morning, so a pass "later today" stays on the same UTC day.
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    """One ledger + fake backend + clock, with helpers to put scans through their states."""

    def __init__(self, config: Config, backend: FakeBackend | None = None) -> None:
        self.config = config
        self.ledger = Ledger(config.ledger_path)
        self.clock = Clock()
        # The service knows the deployed flows and shares the world's clock: a run starts
        # when it is submitted, so its start_time is on the lifecycle's time line.
        self.backend = backend or FakeBackend()
        self.backend.clock = self.clock
        for flow_id, schema in deployed_flows(config).items():
            self.backend.add_flow(flow_id, schema)
        self.deployment = Deployment(dict(FLOWS), dict(FUNCTIONS))

    def lifecycle(self, **kwargs: Any) -> Lifecycle:
        return Lifecycle(
            self.config, self.ledger, self.backend, self.deployment, clock=self.clock, **kwargs
        )

    def submitted(self, items: list[tuple[str, str, int]]) -> dict[str, int]:
        """Scans (beamline, rel, size) in state 'submitted' with a live new_file run each.

        Returns {run_id: scan_id}. Inserted in one transaction: 5 000 scans stay fast.
        """
        out: dict[str, int] = {}
        with self.ledger.transaction() as conn:
            for beamline, rel, size in items:
                run = self.backend.run_flow(
                    RunRequest(
                        flow_id=FLOWS["new_file"],
                        body={},
                        label=f"{beamline} {rel}",
                        tags=["dichroism", beamline, "new_file"],
                    )
                )
                root = self.config.beamlines[beamline].watch.root
                cursor = conn.execute(
                    "INSERT INTO scans (beamline, path, rel, version, size, mtime, mtime_ns,"
                    " inode, checksum, state, run_id, label, attempts, submit_started_at,"
                    " created_at, updated_at)"
                    " VALUES (?, ?, ?, 1, ?, ?, ?, 1, ?, 'submitted', ?, ?, 1, ?, ?, ?)",
                    (
                        beamline,
                        f"{root}/{rel}",
                        rel,
                        size,
                        MTIME_NS / 1e9,
                        MTIME_NS,
                        checksum_of(rel),
                        run["run_id"],
                        f"{beamline} {rel}",
                        self.clock.now,
                        self.clock.now,
                        self.clock.now,
                    ),
                )
                out[run["run_id"]] = int(cursor.lastrowid or 0)
        return out

    def finish(self, run_ids: Any, status: str = "SUCCEEDED", **output: Any) -> None:
        """End runs. A successful archive or prune run without an explicit output gets the
        one its flow produces when everything goes well: every file placed on tape (in one
        htar archive), every file verified and deleted."""
        for run_id in run_ids:
            result = output or None
            if result is None and status == "SUCCEEDED":
                result = self.happy_output(self.backend.runs[run_id])
            self.backend.finish(run_id, status, result)

    @staticmethod
    def happy_output(run: dict[str, Any]) -> dict[str, Any] | None:
        body = run.get("body", {}).get("input", {})
        if run["flow_id"] == FLOWS["archive"]:
            n = len(body["files"])
            tar = (
                f"{body['hpss']['directory']}/{body['proposal']}/{body['hpss']['archive_name']}.tar"
            )
            placed = {"sent": n, "skipped": 0, "archives": [tar], "where": [0] * n, "changed": []}
            return {"archive": compute(placed)}
        if run["flow_id"] == FLOWS["prune"]:
            n = len(body["target"]["files"])
            return prune_output(safe=list(range(n)), delete=list(range(n)))
        return None

    def runs_of(self, flow: str, status: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.backend.runs.values()
            if r["flow_id"] == FLOWS[flow] and (status is None or r["status"] == status)
        ]

    def fire_timers(self) -> list[str]:
        """Start the run of every timer that is due (what Timers would do): each starts its
        run from the timer's FlowStartDocument, without a label of ours."""
        return self.backend.fire_due_timers(self.clock.now)

    def scans(self, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.ledger.query(f"SELECT * FROM scans WHERE {where}", params)]

    def batches(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.ledger.query("SELECT * FROM prune_timers ORDER BY batch")]


def deployed_flows(config: Config) -> dict[str, dict[str, Any] | None]:
    """archive and prune as deploy registers them (schemas bound to this config and the
    function ids), so bodies the lifecycle builds are checked as Flows checks them. new_file
    runs here are the world's stand-ins for runs the launcher started (`submitted`), so that
    flow is registered without a schema (flows.ts InputBody: then nothing is validated)."""
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import load_document

    flows: dict[str, dict[str, Any] | None] = {FLOWS["new_file"]: None}
    for name in ("archive", "prune"):
        doc = load_document(config.definitions_path / f"{name}.json", name=name)
        flows[FLOWS[name]] = specialise(doc, config, functions=FUNCTIONS).input_schema
    return flows


@pytest.fixture
def make_world(write_config: Callable[..., Path]) -> Callable[..., World]:
    def make(
        mutate: Callable[[dict[str, Any]], None] | None = None,
        backend: FakeBackend | None = None,
    ) -> World:
        return World(load_config(write_config(mutate)), backend)

    return make


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def new_id() -> str:
    return str(uuid.uuid4())
