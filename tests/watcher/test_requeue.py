"""A scan re-queued by the lifecycle loop after a failed run must not adopt that failed run.

The retry keeps the scan's label, so crash recovery (which finds runs by label) would see the
old FAILED run; the loop records it in `run_failures`, and the launcher skips those ids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dichroism_control.backend import FlowSpec
from dichroism_control.config import Config
from dichroism_control.deploy_state import Deployment
from dichroism_control.launcher import Launcher
from dichroism_control.ledger import Ledger
from dichroism_control.lifecycle import Lifecycle
from tests.fakes import FakeBackend
from tests.watcher.conftest import write_file


def test_recovery_skips_a_run_the_lifecycle_already_counted_as_failed(
    cfg: Config, ledger: Ledger, fake: FakeBackend, make_launcher: Callable[..., Launcher]
) -> None:
    path = write_file(Path(cfg.beamlines["bl402"].watch.root) / "P1" / "scan.h5")
    launcher = make_launcher(fake)
    launcher.detect(str(path))
    launcher.drain()
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "submitted"
    failed_run = scan.run_id
    assert failed_run is not None
    fake.finish(failed_run, "FAILED")

    # The lifecycle loop follows the run, records the failure and re-queues the scan
    # (one attempt of three).
    # archive and prune have nothing to do here; the fake knows them (it answers 404 for
    # flows it does not), with ids of their own.
    deployment = Deployment.resolve(cfg)
    for name in ("archive", "prune"):
        deployment.flows[name] = fake.create_flow(FlowSpec(name, {}, {}))["id"]
    summary = Lifecycle(cfg, ledger, fake, deployment).run_once()
    assert not summary.get("errors"), summary
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "detected" and scan.run_id is None
    failures = ledger.query("SELECT run_id, flow FROM run_failures")
    assert [tuple(row) for row in failures] == [(failed_run, "new_file")]

    # The retry is claimed, then the process dies before run_flow answers.
    assert len(launcher.claim(limit=10)) == 1
    restarted = make_launcher(fake)
    assert restarted.recover() == {"adopted": 0, "requeued": 1, "unresolved": 0}
    restarted.drain()

    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "submitted"
    assert scan.run_id != failed_run and fake.runs[scan.run_id]["status"] == "ACTIVE"
    assert len(fake.requests) == 2
