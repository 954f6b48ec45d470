"""A scan re-queued by the lifecycle loop after a failed run must not adopt that failed run.

The retry keeps the scan's label, so crash recovery (which finds runs by label) would see the
old FAILED run; the loop records it in `run_failures`, and the launcher skips those ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dichroism_control.config import Config
from dichroism_control.launcher import Launcher
from dichroism_control.ledger import Ledger
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

    # What the lifecycle loop does with a failed new_file run below the attempt limit.
    with ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO run_failures (run_id, flow, subject, status, reason, failed_at)"
            " VALUES (?, 'new_file', ?, 'FAILED', 'TransferFailed', ?)",
            (failed_run, f"scan:{scan.id}", time.time()),
        )
    ledger.update_scan(
        scan.id, state="detected", run_id=None, submit_started_at=None, next_attempt_at=0
    )

    # The retry is claimed, then the process dies before run_flow answers.
    assert len(launcher.claim(limit=10)) == 1
    restarted = make_launcher(fake)
    assert restarted.recover() == {"adopted": 0, "requeued": 1, "unresolved": 0}
    restarted.drain()

    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "submitted"
    assert scan.run_id != failed_run and fake.runs[scan.run_id]["status"] == "ACTIVE"
    assert len(fake.requests) == 2
