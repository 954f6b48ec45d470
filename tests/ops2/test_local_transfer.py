"""The local Transfer provider honours `preserve_timestamp`, as Globus Transfer does: the
CFS prune compares the copy's mtime with the version recorded at detection, so a copy
stamped with the time it was made would be kept as "changed" whenever the copy crossed a
second boundary (the demo failed that way, now and then)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dichroism_control.config import Config
from dichroism_control.local.engine.actions import ActionContext
from dichroism_control.local.providers.transfer import TransferProvider

OLD_NS = 1_700_000_000_123_456_789


def _context() -> ActionContext:
    return ActionContext(
        run_id="r",
        flow_id=None,
        state_name="T",
        action_url="transfer",
        wait_time=60,
        run_as="user",
        context={},
    )


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_timestamp_keeps_the_source_mtime(e2e_config: Config, preserve: bool) -> None:
    settings = e2e_config.beamline("bl402")
    src = Path(settings.watch.root) / "P1" / "scan.h5"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"x" * 1000)
    os.utime(src, ns=(OLD_NS, OLD_NS))
    cfs = e2e_config.endpoint(settings.destination)
    body = {
        "source_endpoint": e2e_config.endpoint(settings.source).uuid,
        "destination_endpoint": cfs.uuid,
        "DATA": [{"source_path": str(src), "destination_path": f"{cfs.root_path}/P1/scan.h5"}],
        "verify_checksum": True,
        "preserve_timestamp": preserve,
    }
    status = TransferProvider(e2e_config, "transfer").run(body, _context())
    assert status.status == "SUCCEEDED"
    copied = Path(cfs.root_path) / "P1" / "scan.h5"
    assert (copied.stat().st_mtime_ns == OLD_NS) is preserve
