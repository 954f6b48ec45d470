"""Fixtures for the operator commands: a lifecycle World driven through `dichroism` itself
(in-process `main`, so exit codes and `--format json` errors are the real ones)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.cli.context import Context
from dichroism_control.config import load_config
from dichroism_control.identity import identify
from tests.deploy.helpers import run_cli
from tests.e2e.conftest import e2e_config, stack  # noqa: F401 - the local-backend stack
from tests.lifecycle.conftest import World, make_world, world  # noqa: F401 - fixtures


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Ops:
    world: World
    config_path: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str) -> Result:
        code, out, err = run_cli(["--config", str(self.config_path), *args], self.capsys)
        return Result(code, out, err)

    def on_disk(self, rels: list[str], beamline: str = "bl402") -> dict[str, int]:
        """Scans really written under the watch root and recorded as they are (checksum,
        mtime, inode), with a live new_file run each: {run_id: scan_id}."""
        root = Path(self.world.config.beamlines[beamline].watch.root)
        for rel in rels:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"scan {rel}".encode())
        runs = self.world.submitted([(beamline, rel, len(f"scan {rel}".encode())) for rel in rels])
        with self.world.ledger.transaction() as conn:
            for rel in rels:
                ident = identify(str(root / rel))
                conn.execute(
                    "UPDATE scans SET checksum = ?, mtime = ?, mtime_ns = ?, inode = ?"
                    " WHERE rel = ? AND beamline = ?",
                    (ident.checksum, ident.mtime, ident.mtime_ns, ident.inode, rel, beamline),
                )
        return runs

    def path(self, rel: str, beamline: str = "bl402") -> str:
        return str(Path(self.world.config.beamlines[beamline].watch.root) / rel)

    def scan(self, rel: str, version: int = 1) -> dict[str, Any]:
        (row,) = self.world.scans("rel = ? AND version = ?", (rel, version))
        return row

    def fail_new_file(self, run_ids: list[str], cause: str = "permission denied") -> None:
        """Fail each run; the lifecycle re-queues until `max_attempts`, then fails the scan."""
        error = {"Error": "TransferFailed", "Cause": cause}
        pending = list(run_ids)
        while pending:
            for run_id in pending:
                self.world.backend.finish(run_id, "FAILED", {"error": error})
            self.world.lifecycle().run_once()
            pending = []
            for scan in self.world.scans("state = 'detected'"):
                run = self.world.backend.run_flow(self.world.backend.requests[0])
                self.world.ledger.update_scan(scan["id"], state="submitted", run_id=run["run_id"])
                pending.append(run["run_id"])


@pytest.fixture
def ops(
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Ops:
    path = write_config()
    here = World(load_config(path))
    monkeypatch.setattr(Context, "backend", lambda self, **kwargs: here.backend)
    monkeypatch.setattr(Context, "deployment", lambda self: here.deployment)
    return Ops(here, path, capsys)
