"""End-to-end fixtures: a local-backend config on tmp directories, the shipped flows deployed.

Functions are registered as the compute_functions modules define the contract: the whole
module text is the registered unit, the function name its entry point.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dichroism_control.backend import FlowSpec, RunRequest
from dichroism_control.binding import specialise
from dichroism_control.config import FLOW_NAMES, FUNCTION_NAMES, Config, load_config
from dichroism_control.definitions import load_document
from dichroism_control.deploy_state import Deployment
from dichroism_control.identity import iso_utc, transfer_time
from dichroism_control.local.backend import LocalBackend
from dichroism_control.routing import cfs_root_path, hpss_directory, source_root_path
from tests.conftest import config_data

ROOT = Path(__file__).resolve().parents[2]
MODULE_OF = {
    "scicat_ingest": "scicat",
    "scicat_add_location": "scicat",
    "hpss_archive": "hpss",
    "hpss_verify": "hpss",
    "cfs_verify": "cfs",
    "flight_check_endpoint": "flight",
}
METADATA = {
    "instrument_id": "4.0.2",
    "owner_group": "als-4.0.2",
    "access_groups": ["als-dichroism"],
    "owner": "ALS",
    "contact_email": "als@example.org",
    "principal_investigator": "A. Scientist",
}


def local_config_data(root: Path) -> dict[str, Any]:
    data = copy.deepcopy(config_data(root, backend="local"))
    data["local"] = {"hpss_path": str(root / "hpss"), "catalogue_path": str(root / "scicat.sqlite")}
    data["lifecycle"] = {
        "poll_seconds": 0.2,
        "archive_quiet_seconds": 0,
        "retention_unit": "seconds",
        "prune_batch_quiet_seconds": 0,
        "archive": {
            "bundle_max_bytes": 1_000_000,
            "single_file_threshold_bytes": 500_000,
            "max_hpss_sessions": 2,
            "walltime_seconds": 60,
        },
    }
    for beamline in data["beamlines"].values():
        beamline["retention_days"] = {"compute_dtn": 0, "cfs": 0}
    return data


@pytest.fixture
def e2e_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    for name in ("FAKE_HPSS_FAIL", "FAKE_HPSS_TRUNCATE", "FAKE_HPSS_HANG"):
        monkeypatch.delenv(name, raising=False)
    data = local_config_data(tmp_path)
    for beamline in data["beamlines"].values():
        Path(beamline["watch"]["root"]).mkdir(parents=True, exist_ok=True)
    for endpoint in data["globus"]["endpoints"].values():
        Path(endpoint["root_path"]).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


@dataclass
class Stack:
    config: Config
    backend: LocalBackend
    deployment: Deployment

    @property
    def flows(self) -> dict[str, str]:
        return self.deployment.flows

    @property
    def functions(self) -> dict[str, str]:
        return self.deployment.functions

    def start(self, flow: str, body: dict[str, Any], label: str = "e2e") -> str:
        run = self.backend.run_flow(
            RunRequest(flow_id=self.flows[flow], body=body, label=label, tags=["e2e", flow])
        )
        return str(run["run_id"])

    def run(self, flow: str, body: dict[str, Any], label: str = "e2e") -> dict[str, Any]:
        run = self.backend.wait(self.start(flow, body, label), timeout=60)
        assert run["status"] in ("SUCCEEDED", "FAILED", "ENDED"), run
        return run

    # -- bodies (written out here, not built by the code under test: the flows' input
    # schemas, enforced by the local backend as Flows does, judge both) ------------------
    def identity(self, path: Path) -> dict[str, Any]:
        """What the watcher records of a file: size, Transfer-style mtime, MD5."""
        info = path.stat()
        return {
            "size": info.st_size,
            "mtime": transfer_time(info.st_mtime_ns),
            "checksum": hashlib.md5(path.read_bytes()).hexdigest(),
        }

    def item(self, rel: str, beamline: str = "bl402", *, on: str = "source") -> dict[str, Any]:
        """A prune/archive file item for `rel` as recorded from its source (or CFS) file."""
        path = self.source(rel, beamline) if on == "source" else self.cfs(rel, beamline)
        return {"path": rel, **self.identity(path), "version": 1}

    def new_file_body(self, rel: str, beamline: str = "bl402", **overrides: Any) -> dict[str, Any]:
        settings = self.config.beamline(beamline)
        path = self.source(rel, beamline)
        source = {"size": 0, "mtime": "2026-01-01 00:00:00+00:00", "checksum": "0" * 32}
        if path.exists():
            source = self.identity(path)
        source.update(overrides)
        return {
            "input": {
                "beamline": beamline,
                "source": {
                    "collection_id": self.config.endpoint(settings.source).uuid,
                    "path": f"{source_root_path(self.config, beamline)}/{rel}",
                    **source,
                    "version": 1,
                },
                "destination": {
                    "collection_id": self.config.endpoint(settings.destination).uuid,
                    "path": f"{cfs_root_path(self.config, beamline)}/{rel}",
                },
                "deadline": iso_utc(time.time() + 3600),
                "scicat": {
                    "endpoint_id": self.config.globus.compute_endpoints.scicat,
                    "function_id": self.functions["scicat_ingest"],
                    "proposal": rel.split("/")[0],
                    "metadata": METADATA,
                },
            }
        }

    def archive_body(
        self, files: list[dict[str, Any]], beamline: str = "bl402", name: str = "P1_e2e"
    ) -> dict[str, Any]:
        return {
            "input": {
                "beamline": beamline,
                "proposal": files[0]["path"].split("/")[0],
                "cfs_root": cfs_root_path(self.config, beamline),
                "files": [
                    {k: f[k] for k in ("path", "size", "checksum", "version")} for f in files
                ],
                "hpss": {
                    "endpoint_id": self.config.globus.compute_endpoints.nersc,
                    "function_id": self.functions["hpss_archive"],
                    "directory": hpss_directory(self.config, beamline),
                    "archive_name": name,
                    "options": {
                        "bundle_max_bytes": 1_000_000,
                        "single_file_threshold_bytes": 500_000,
                        "max_sessions": 2,
                        "walltime_seconds": 60,
                    },
                },
                "scicat": {
                    "endpoint_id": self.config.globus.compute_endpoints.scicat,
                    "function_id": self.functions["scicat_add_location"],
                },
            }
        }

    def prune_body(
        self,
        location: str,
        files: list[dict[str, Any]],
        beamline: str = "bl402",
        *,
        archives: list[str] | None = None,
    ) -> dict[str, Any]:
        """`files`: items as `item()` gives them; for a CFS prune each carries `archive`
        (index into `archives`, -1 for a single at its versioned path)."""
        settings = self.config.beamline(beamline)
        safe: dict[str, Any]
        if location == "compute_dtn":
            target = {
                "collection_id": self.config.endpoint(settings.source).uuid,
                "root": source_root_path(self.config, beamline),
                "files": files,
            }
            safe, verifier = {"root": cfs_root_path(self.config, beamline)}, "cfs_verify"
        else:
            target = {
                "collection_id": self.config.endpoint(settings.destination).uuid,
                "root": cfs_root_path(self.config, beamline),
                "files": files,
            }
            safe = {"root": hpss_directory(self.config, beamline), "archives": archives or []}
            verifier = "hpss_verify"
        return {
            "input": {
                "beamline": beamline,
                "location": location,
                "target": target,
                "safe": safe,
                "verify": {
                    "endpoint_id": self.config.globus.compute_endpoints.nersc,
                    "function_id": self.functions[verifier],
                },
                "deadline": iso_utc(time.time() + 3600),
            }
        }

    # -- places ----------------------------------------------------------------------------
    def source(self, rel: str, beamline: str = "bl402") -> Path:
        return Path(self.config.beamline(beamline).watch.root) / rel

    def cfs(self, rel: str, beamline: str = "bl402") -> Path:
        return Path(cfs_root_path(self.config, beamline)) / rel

    def tape(self, hpss_path: str) -> Path:
        return self.config.resolve(self.config.local.hpss_path) / hpss_path.lstrip("/")

    def write_source(self, rel: str, size: int = 3000, beamline: str = "bl402") -> Path:
        path = self.source(rel, beamline)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((rel.encode() * (size // max(len(rel), 1) + 1))[:size])
        return path

    def catalogue(self, sql: str) -> list[dict[str, Any]]:
        path = self.config.resolve(self.config.local.catalogue_path)
        if not path.exists():
            return []  # nothing was ever recorded
        conn = sqlite3.connect(path)
        try:
            return [json.loads(row[0]) for row in conn.execute(sql)]
        finally:
            conn.close()


def deploy_shipped(config: Config, backend: LocalBackend) -> Deployment:
    functions = {}
    for name in FUNCTION_NAMES:
        source = (ROOT / "compute_functions" / f"{MODULE_OF[name]}.py").read_text()
        functions[name] = backend.register_function(name=name, source=source, description=name)
    flows = {}
    for name in FLOW_NAMES:
        # bound as deploy binds them: roots, and the functions registered just above
        document = specialise(
            load_document(config.definitions_path / f"{name}.json", name=name),
            config,
            functions=functions,
        )
        created = backend.create_flow(
            FlowSpec(
                title=f"e2e {name}",
                definition=document.definition,
                input_schema=document.input_schema,
            )
        )
        flows[name] = created["id"]
    return Deployment(flows, functions)


@pytest.fixture
def stack(e2e_config: Config) -> Iterator[Stack]:
    backend = LocalBackend(e2e_config)
    try:
        yield Stack(e2e_config, backend, deploy_shipped(e2e_config, backend))
    finally:
        backend.close()
