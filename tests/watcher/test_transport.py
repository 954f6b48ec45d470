"""Proxy settings read once per backend, the transport that uses them, grouped outcome writes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import globus_sdk
import pytest
import requests
import requests.sessions
import requests.utils

from dichroism_control.globus_backend import GlobusBackend, environment_once_transport
from dichroism_control.launcher import OutcomeWriter
from dichroism_control.ledger import Ledger

PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "REQUEST_METHOD",
)

URLS = [
    "https://flows.globus.org/flows/x/run",
    "https://auth.globus.org/v2/oauth2/token",
    "https://transfer.api.globus.org:443/v0.10/task",
    "http://127.0.0.1:8123/flows/x/run",
    "http://10.1.2.3/x",
    "http://localhost:9000/",
    "https://compute.api.globus.org/v3/functions",
]

ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"HTTPS_PROXY": "http://proxy.als.lbl.gov:3128"},
    {"https_proxy": "http://lower:3128", "HTTPS_PROXY": "http://upper:3128"},
    {"HTTP_PROXY": "http://p:1", "HTTPS_PROXY": "http://p:2", "NO_PROXY": "globus.org"},
    {"ALL_PROXY": "socks5://s:1080", "no_proxy": "localhost,127.0.0.1"},
    {
        "HTTPS_PROXY": "http://p:2",
        "HTTP_PROXY": "http://p:1",
        "NO_PROXY": "10.0.0.0/8, auth.globus.org",
    },
    {"HTTPS_PROXY": "http://p:2", "NO_PROXY": "*"},
    {"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1:8123"},
    {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"},  # CGI: HTTP_PROXY ignored
]


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _send(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, str]]]:
    """Stub the adapter: record each request's URL and the proxies it was sent with."""
    sent: list[tuple[str, dict[str, str]]] = []

    def send(
        adapter: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        sent.append((str(request.url), dict(kwargs["proxies"])))
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.request = request
        response.url = str(request.url)
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return sent


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=lambda e: ",".join(sorted(e)) or "none")
def test_same_proxies_as_requests_resolving_them_per_request(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    _set_env(monkeypatch, env)
    sent = _send(monkeypatch)
    session = environment_once_transport().session
    for url in URLS:
        request = requests.Request("GET", url).prepare()
        expected = requests.utils.resolve_proxies(request, {}, trust_env=True)
        session.send(request)
        session.send(requests.Request("POST", url).prepare())  # the memoised answer
        assert sent[-2:] == [(request.url, expected), (request.url, expected)], url


def test_proxies_resolved_once_per_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, {"HTTPS_PROXY": "http://proxy.als.lbl.gov:3128", "NO_PROXY": "lbl.gov"})
    sent = _send(monkeypatch)
    session = environment_once_transport().session
    session.send(requests.Request("POST", "https://flows.globus.org/flows/x/run").prepare())
    session.send(requests.Request("GET", "https://dtn.als.lbl.gov/x").prepare())
    assert sent[0][1]["https"] == "http://proxy.als.lbl.gov:3128"
    assert "https" not in sent[1][1]

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the environment was read again")

    for name in ("get_environ_proxies", "should_bypass_proxies", "resolve_proxies"):
        monkeypatch.setattr(requests.utils, name, forbidden)
        monkeypatch.setattr(requests.sessions, name, forbidden, raising=False)
    _set_env(monkeypatch, {"HTTPS_PROXY": "http://changed:1"})
    session.send(requests.Request("POST", "https://flows.globus.org/flows/y/run").prepare())
    assert sent[2][1] == sent[0][1]
    # Explicit proxies from a caller still win.
    session.send(
        requests.Request("GET", "https://flows.globus.org/z").prepare(),
        proxies={"https": "http://explicit:1"},
    )
    assert sent[3][1] == {"https": "http://explicit:1"}


def test_every_globus_client_uses_the_read_once_transport() -> None:
    backend = GlobusBackend(cast(globus_sdk.GlobusApp, object()))
    transport = backend._transport()
    assert type(transport.session).__name__ == "EnvironmentOnceSession"


# -- grouped outcome writes -------------------------------------------------------------------
def _rows(ledger: Ledger, n: int) -> list[int]:
    ids = []
    for i in range(n):
        scan = ledger.add_scan(beamline="bl", path=f"/d/{i}", rel=f"{i}", size=1, mtime=0.0)
        assert scan is not None
        ids.append(scan.id)
    with ledger.transaction() as conn:
        conn.execute("UPDATE scans SET state = 'submitting'")
    return ids


def test_outcome_writer_commits_every_row_with_fewer_transactions(ledger: Ledger) -> None:
    ids = _rows(ledger, 400)
    committed: list[int] = []
    writer = OutcomeWriter(ledger, on_commit=lambda batch: committed.append(len(batch)))
    gate = threading.Barrier(8)

    def work(chunk: list[int]) -> None:
        gate.wait()
        for scan_id in chunk:
            if scan_id % 10 == 0:
                writer(scan_id, {"state": "detected", "next_attempt_at": 5.0, "last_error": "x"})
            else:
                writer(scan_id, {"state": "submitted", "run_id": f"run-{scan_id}"})

    threads = [threading.Thread(target=work, args=(ids[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.pending() == 0
    assert writer.rows == 400 and sum(committed) == 400
    assert writer.commits == len(committed) <= 400
    rows = {r["id"]: r for r in ledger.query("SELECT id, state, run_id, last_error FROM scans")}
    for scan_id in ids:
        if scan_id % 10 == 0:
            assert (rows[scan_id]["state"], rows[scan_id]["last_error"]) == ("detected", "x")
        else:
            assert (rows[scan_id]["state"], rows[scan_id]["run_id"]) == (
                "submitted",
                f"run-{scan_id}",
            )


def test_outcome_writer_keeps_rows_when_a_write_fails(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _rows(ledger, 2)
    writer = OutcomeWriter(ledger)
    real: Callable[..., None] = writer._commit
    failures = iter([True])

    def flaky(batch: list[tuple[int, dict[str, Any]]]) -> None:
        if next(failures, False):
            raise OSError("disk full")
        real(batch)

    monkeypatch.setattr(writer, "_commit", flaky)
    with pytest.raises(OSError, match="disk full"):
        writer(ids[0], {"state": "submitted", "run_id": "r0"})
    assert writer.pending() == 1
    assert ledger.query("SELECT state FROM scans WHERE id = ?", (ids[0],))[0][0] == "submitting"
    writer(ids[1], {"state": "submitted", "run_id": "r1"})  # the next write takes both
    assert writer.pending() == 0
    states = [r[0] for r in ledger.query("SELECT state FROM scans ORDER BY id")]
    assert states == ["submitted", "submitted"]
    writer.flush()  # nothing left: a no-op
