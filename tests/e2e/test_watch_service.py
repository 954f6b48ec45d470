"""`dichroism watch` as operators run it (a process, the local backend): heartbeat, metrics
endpoint, alert digest, a crash (kill -9) noticed by the next start, a clean SIGTERM stop."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dichroism_control.cli.main import app
from dichroism_control.config import load_config
from dichroism_control.health import assess
from dichroism_control.ledger import Ledger
from tests.e2e.conftest import local_config_data
from tests.test_notify import Receiver


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


class Watch:
    """One `dichroism watch` process; its stderr is read on a thread."""

    def __init__(self, config: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_HPSS_")}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dichroism_control.cli.main",
                "--config",
                str(config),
                "watch",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)

    def line_with(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no log line with {text!r}; log:\n{''.join(self.log)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def service_config(tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = local_config_data(tmp_path)
    data["health"] = {"heartbeat_seconds": 0.2, "heartbeat_stale_seconds": 5}
    data["notify"] = {"urls": ["${TEST_NOTIFY_URL}"], "interval_minutes": 1}
    for beamline in data["beamlines"].values():
        Path(beamline["watch"]["root"]).mkdir(parents=True, exist_ok=True)
    for endpoint in data["globus"]["endpoints"].values():
        Path(endpoint["root_path"]).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("TEST_NOTIFY_URL", receiver.url)
    result = CliRunner().invoke(app, ["--config", str(path), "deploy"])
    assert result.exit_code == 0, result.output
    return path


def test_watch_heartbeat_metrics_crash_and_clean_stop(
    service_config: Path, receiver: Receiver
) -> None:
    config = load_config(service_config)
    ledger = Ledger(config.ledger_path)
    first = Watch(service_config, "--metrics", "127.0.0.1:0")
    second: Watch | None = None
    try:
        url = first.line_with("metrics on http://").split("metrics on ", 1)[1].strip()
        scan = Path(config.beamlines["bl402"].watch.root) / "P1" / "scan_1.dat"
        scan.parent.mkdir(parents=True)
        scan.write_bytes(b"x" * 2000)
        assert wait_for(
            lambda: (
                (row := ledger.get_scan(str(scan))) is not None
                and row.state not in ("detected", "submitting")
            )
        )
        report = wait_for(
            lambda: (
                (r := assess(config, ledger)).watcher.get("state") == "alive"
                and r.lifecycle.get("last_pass_at")
                and r
            )
        )
        assert report.watcher["pid"] == first.process.pid
        assert set(report.watcher["components"]) == {
            "observers",
            "settle",
            "dispatch",
            "lifecycle",
        } and all(report.watcher["components"].values())

        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        assert 'dichroism_scans_total{beamline="bl402",step="detected"} 1.0' in metrics
        assert 'dichroism_submit_latency_seconds_count{beamline="bl402"} 1.0' in metrics
        assert "dichroism_heartbeat_timestamp_seconds " in metrics

        # kill -9: no clean stop. The next start notices, records it and tells a person.
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        second = Watch(service_config)
        crash = wait_for(lambda: ledger.get_meta("last_unclean_restart"))
        assert crash["previous_pid"] == first.process.pid
        assert receiver.got.wait(30), "no alert digest arrived"
        digest = receiver.posts[-1]["body"]["message"]
        assert f"watch restarted after a crash of pid {first.process.pid}" in digest

        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(60) == 0, "".join(second.log)
        stopped = ledger.get_meta("watch_stopped")
        assert stopped["pid"] == second.process.pid
        report = assess(config, ledger)
        assert report.watcher["state"] == "stopped"
        assert [p.code for p in report.problems][:1] == ["watcher"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_watch_refuses_a_bad_metrics_address_before_starting(
    service_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.deploy.helpers import run_cli

    code, _, err = run_cli(["--config", str(service_config), "watch", "--metrics", "nope"], capsys)
    assert code == 2
    assert err.startswith("dichroism: error: --metrics: expected [HOST:]PORT")
    config = load_config(service_config)
    assert Ledger(config.ledger_path).get_meta("heartbeat") is None  # nothing started
