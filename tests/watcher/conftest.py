"""Fixtures for the watcher and launcher: pinned ids, a ledger, a fake or HTTP-mocked backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.config import Config, load_config
from dichroism_control.deploy_state import Deployment
from dichroism_control.launcher import Launcher
from dichroism_control.ledger import Ledger
from tests.fakes import FakeBackend

FLOW_ID = "24bc4997-b483-4c25-a19c-64b0afc00743"  # the SDK fixtures' run_flow flow id
FUNCTION_ID = "5c2d1e0f-0000-4000-8000-0000000000f1"


def pin_ids(data: dict[str, Any]) -> None:
    data["globus"]["flows"]["new_file"]["id"] = FLOW_ID
    data["globus"]["functions"] = {"scicat_ingest": FUNCTION_ID}


@pytest.fixture
def cfg(write_config: Callable[..., Path]) -> Config:
    return load_config(write_config(pin_ids))


@pytest.fixture
def ledger(cfg: Config) -> Iterator[Ledger]:
    handle = Ledger(cfg.ledger_path)
    yield handle
    handle.close()


def deployed_flows(cfg: Config) -> dict[str, dict[str, Any]]:
    """The new_file flow as deploy registers it (its input schema bound to this config and
    function ids), so the fake refuses what the Flows service would refuse."""
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import load_document

    doc = load_document(cfg.definitions_path / "new_file.json", name="new_file")
    schema = specialise(doc, cfg, functions={"scicat_ingest": FUNCTION_ID}).input_schema
    return {FLOW_ID: schema}


@pytest.fixture
def fake(cfg: Config) -> FakeBackend:
    return FakeBackend(flows=deployed_flows(cfg))


class Clock:
    """A wall clock tests move by hand; `sleep` advances it instead of waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_launcher(cfg: Config, ledger: Ledger) -> Callable[..., Launcher]:
    def make(backend: Any, **kwargs: Any) -> Launcher:
        return Launcher(cfg, ledger, backend, Deployment.resolve(cfg), **kwargs)

    return make


def write_file(path: Path, data: bytes = b"scan data") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
