"""Fixtures for the deploy tests (helpers: tests/deploy/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses

from tests.deploy.helpers import FakeGlobus, client_env, started_mock


@pytest.fixture
def globus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A confidential client (ClientApp) and the production service URLs."""
    client_env(monkeypatch)


@pytest.fixture
def mocked(globus_env: None) -> Iterator[responses.RequestsMock]:
    """The module-level `responses` mock (what globus_sdk.testing.load_response uses)."""
    with started_mock() as mock:
        yield mock


@pytest.fixture
def fake_globus(mocked: responses.RequestsMock) -> FakeGlobus:
    return FakeGlobus(mocked)
