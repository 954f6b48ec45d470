"""compute_functions/flight.py, run as the Compute endpoint runs it (in-process here): each
check's verdict and remedy, and SciCat credentials that never reach the result."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from compute_functions.flight import flight_check_endpoint

FAKE_HPSS = Path(__file__).resolve().parents[2] / "dichroism_control" / "local" / "fake_hpss"
TOKEN = "tok-SECRET-1234567890"
PASSWORD = "pw-SECRET-0987654321"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SCICAT_URL",
        "SCICAT_TOKEN",
        "SCICAT_TOKEN_FILE",
        "SCICAT_USERNAME",
        "SCICAT_PASSWORD",
        "FAKE_HPSS_FAIL",
        "FAKE_HPSS_HANG",
    ):
        monkeypatch.delenv(name, raising=False)


def _by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def test_hsi_and_htar_missing_from_path_name_the_endpoint_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = flight_check_endpoint(checks=["hsi", "htar", "hpss"], hpss_dir="/home/a/x")
    assert result["ok"] is False
    checks = _by_name(result)
    for name in ("hsi", "htar"):
        assert checks[name]["ok"] is False
        assert checks[name]["detail"] == f"{name} is not on PATH ({tmp_path})"
        assert "Compute endpoint's PATH" in checks[name]["remedy"]
    assert checks["hpss"]["ok"] is False and "hsi is not on PATH" in checks["hpss"]["detail"]


def test_hpss_reachable_missing_directory_and_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", f"{FAKE_HPSS}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_HPSS_ROOT", str(tmp_path))
    (tmp_path / "home" / "a" / "x").mkdir(parents=True)
    result = flight_check_endpoint(checks=["hsi", "htar", "hpss"], hpss_dir="/home/a/x")
    assert result["ok"] is True and _by_name(result)["hpss"]["detail"] == "/home/a/x listed"
    result = flight_check_endpoint(checks=["hpss"], hpss_dir="/home/a/none")
    assert result["ok"] is True
    assert "does not exist yet" in _by_name(result)["hpss"]["detail"]
    monkeypatch.setenv("FAKE_HPSS_FAIL", "hsi")
    result = flight_check_endpoint(checks=["hpss"], hpss_dir="/home/a/x")
    hpss = _by_name(result)["hpss"]
    assert result["ok"] is False and hpss["ok"] is False
    assert "exited 1" in hpss["detail"] and "check HPSS" in hpss["remedy"]


def test_malformed_input_raises() -> None:
    with pytest.raises(RuntimeError, match="non-empty list"):
        flight_check_endpoint(checks=["rm -rf"])
    with pytest.raises(RuntimeError, match="absolute hpss_dir"):
        flight_check_endpoint(checks=["hpss"], hpss_dir="relative")


class _SciCat(BaseHTTPRequestHandler):
    token = TOKEN
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: dict[str, Any] | list[Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") == f"Bearer {self.token}":
            self._answer(200, [])
        else:
            self._answer(401, {"error": "Unauthorized", "echo": self.headers.get("Authorization")})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append(("POST", self.path, json.dumps(body, sort_keys=True)))
        if body == {"username": "ingestor", "password": PASSWORD}:
            self._answer(201, {"id": self.token})
        else:
            self._answer(401, {"error": f"bad login for {body}"})


@pytest.fixture
def scicat() -> Iterator[str]:
    _SciCat.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SciCat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v3"
    finally:
        server.shutdown()
        server.server_close()


def test_scicat_with_a_token_and_with_a_login_never_shows_the_credentials(
    scicat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCICAT_URL", scicat)
    monkeypatch.setenv("SCICAT_TOKEN", TOKEN)
    result = flight_check_endpoint(checks=["scicat"])
    assert result["ok"] is True, result
    (get,) = _SciCat.seen
    assert get[0] == "GET" and get[1].startswith("/api/v3/Datasets?filter=")
    assert get[2] == f"Bearer {TOKEN}"

    monkeypatch.setenv("SCICAT_TOKEN", "tok-WRONG-000000")
    result = flight_check_endpoint(checks=["scicat"])
    check = _by_name(result)["scicat"]
    assert result["ok"] is False and "refused the credentials (HTTP 401)" in check["detail"]
    assert "renew the credentials" in check["remedy"]
    assert "tok-WRONG" not in json.dumps(result)

    monkeypatch.delenv("SCICAT_TOKEN")
    monkeypatch.setenv("SCICAT_USERNAME", "ingestor")
    monkeypatch.setenv("SCICAT_PASSWORD", PASSWORD)
    _SciCat.seen = []
    result = flight_check_endpoint(checks=["scicat"])
    assert result["ok"] is True
    assert [(m, p.split("?")[0]) for m, p, _ in _SciCat.seen] == [
        ("POST", "/api/v3/auth/login"),
        ("GET", "/api/v3/Datasets"),
    ]
    monkeypatch.setenv("SCICAT_PASSWORD", PASSWORD + "x")
    result = flight_check_endpoint(checks=["scicat"])
    assert result["ok"] is False
    text = json.dumps(result)
    assert PASSWORD not in text and TOKEN not in text


def test_scicat_unset_or_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    result = flight_check_endpoint(checks=["scicat"])
    check = _by_name(result)["scicat"]
    assert check["detail"] == "SCICAT_URL is not set in the endpoint's environment"
    assert "SCICAT_URL" in check["remedy"]
    monkeypatch.setenv("SCICAT_URL", f"http://user:{PASSWORD}@127.0.0.1:9/api/v3")
    monkeypatch.setenv("SCICAT_TOKEN", TOKEN)
    result = flight_check_endpoint(checks=["scicat"], timeout_seconds=5)
    check = _by_name(result)["scicat"]
    assert check["ok"] is False and "unreachable" in check["detail"]
    assert check["detail"].startswith("SciCat at http://127.0.0.1: unreachable")
    assert PASSWORD not in json.dumps(result) and TOKEN not in json.dumps(result)
