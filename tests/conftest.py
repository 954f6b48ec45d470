"""Shared fixtures: a config on tmp directories with non-placeholder ids."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
import yaml

from dichroism_control.config import Config, load_config

IDS = {
    "bl402_dtn": "1b2c3d4e-0000-4000-8000-000000000402",
    "bl402_cfs": "1b2c3d4e-0000-4000-8000-000000004020",
    "bl631_dtn": "1b2c3d4e-0000-4000-8000-000000000631",
    "bl631_cfs": "1b2c3d4e-0000-4000-8000-000000006310",
    "nersc": "1b2c3d4e-0000-4000-8000-00000000c0de",
    "scicat": "1b2c3d4e-0000-4000-8000-00000000c0df",
}
GROUP = "urn:globus:groups:id:6b4d5c3a-0000-4000-8000-0000000000aa"


def config_data(root: Path, *, backend: str = "globus") -> dict[str, Any]:
    """A complete config whose directories all live under `root`."""

    def endpoint(name: str, uuid: str, root_path: str, uri: str) -> dict[str, Any]:
        return {"root_path": root_path, "uri": uri, "uuid": uuid, "name": name}

    def beamline(key: str, number: str) -> dict[str, Any]:
        return {
            "watch": {"root": str(root / "data" / key), "settle_seconds": 0.2},
            "source": f"{key}-compute-dtn",
            "destination": f"{key}-nersc_alsdev_raw",
            "retention_days": {"compute_dtn": 180, "cfs": 180},
            "hpss_root": f"/home/a/alsdev/data_mover/{number}",
            "scicat": {
                "instrument_id": number,
                "owner_group": f"als-{number}",
                "access_groups": ["als-dichroism"],
            },
        }

    return {
        "backend": backend,
        "state_dir": str(root / "state"),
        "globus": {
            "endpoints": {
                "bl402-compute-dtn": endpoint(
                    "bl402-compute-dtn", IDS["bl402_dtn"], "/", "compute-dtn.als.lbl.gov"
                ),
                "bl402-nersc_alsdev_raw": endpoint(
                    "bl402-nersc_alsdev_raw",
                    IDS["bl402_cfs"],
                    str(root / "cfs" / "4.0.2" / "raw"),
                    "nersc.gov",
                ),
                "bl631-compute-dtn": endpoint(
                    "bl631-compute-dtn", IDS["bl631_dtn"], "/", "compute-dtn.als.lbl.gov"
                ),
                "bl631-nersc_alsdev_raw": endpoint(
                    "bl631-nersc_alsdev_raw",
                    IDS["bl631_cfs"],
                    str(root / "cfs" / "6.3.1" / "raw"),
                    "nersc.gov",
                ),
            },
            "compute_endpoints": {"nersc": IDS["nersc"], "scicat": IDS["scicat"]},
            "roles": {"run_managers": [GROUP], "run_monitors": [GROUP], "flow_starters": [GROUP]},
            "flows": {
                "new_file": {"title": "Dichroism: new scan", "keywords": ["ALS"]},
                "archive": {"title": "Dichroism: archive"},
                "prune": {"title": "Dichroism: prune"},
            },
        },
        "beamlines": {"bl402": beamline("bl402", "4.0.2"), "bl631": beamline("bl631", "6.3.1")},
    }


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """write_config(mutate=None, backend="globus") -> path of a config.yml under tmp_path."""

    def write(
        mutate: Callable[[dict[str, Any]], None] | None = None, *, backend: str = "globus"
    ) -> Path:
        data = copy.deepcopy(config_data(tmp_path, backend=backend))
        if mutate is not None:
            mutate(data)
        for beamline in data["beamlines"].values():
            Path(beamline["watch"]["root"]).mkdir(parents=True, exist_ok=True)
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def config(write_config: Callable[..., Path]) -> Config:
    return load_config(write_config())


@pytest.fixture
def mocked_http() -> Iterator[responses.RequestsMock]:
    """HTTP mocked for a test: the module-level `responses` mock, which is where
    globus_sdk.testing's RegisteredResponse.add() and load_response register."""
    from tests.deploy.helpers import started_mock

    with started_mock() as mock:
        yield mock
