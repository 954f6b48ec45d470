"""`watch --metrics`: the Prometheus endpoint, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dichroism_control.config import Config, load_config
from dichroism_control.errors import ConfigError
from dichroism_control.ledger import Ledger
from dichroism_control.metrics import MetricsServer, parse_address
from tests.test_health import HOUR, add_scan, alive


@pytest.fixture
def cfg(write_config: Callable[..., Path]) -> Config:
    return load_config(write_config())


@pytest.fixture
def served(cfg: Config) -> Iterator[tuple[MetricsServer, str, Ledger]]:
    ledger = Ledger(cfg.ledger_path)
    server = MetricsServer(cfg, ledger)
    host, port = server.start("127.0.0.1", 0)
    yield server, f"http://{host}:{port}/metrics", ledger
    server.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_scraping_the_endpoint(served: tuple[MetricsServer, str, Ledger]) -> None:
    import time

    server, url, ledger = served
    now = time.time()
    alive(ledger, now=now)
    ledger.set_meta("last_flight_check", {"verdict": "ok", "at": now - 60})
    add_scan(ledger, "P1/a.h5", "transferred", size=100, created=now - 60, transferred_at=now)
    add_scan(ledger, "P1/b.h5", "detected", size=7, created=now - 2 * HOUR)
    add_scan(
        ledger,
        "P2/c.h5",
        "archived",
        beamline="bl631",
        size=5,
        archived_at=now,
        transferred_at=now - 10,
    )
    with ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO run_failures (run_id, flow, subject, status, reason, failed_at)"
            " VALUES ('r1', 'new_file', 'scan:2', 'FAILED', 'x', 0)"
        )
    server.observe_submit("bl402", 0.3)
    server.observe_submit("bl402", 42.0)

    samples = scrape(url)
    bl402 = ("beamline", "bl402")
    assert samples[("dichroism_scans_total", (bl402, ("step", "detected")))] == 2
    assert samples[("dichroism_scans_total", (bl402, ("step", "transferred")))] == 1
    assert samples[("dichroism_bytes_total", (bl402, ("step", "transferred")))] == 100
    assert samples[("dichroism_scans_total", (("beamline", "bl631"), ("step", "archived")))] == 1
    assert samples[("dichroism_run_failures_total", (bl402, ("step", "new_file")))] == 1
    assert samples[("dichroism_backlog_scans", (bl402, ("stage", "detected")))] == 1
    age = samples[("dichroism_backlog_oldest_age_seconds", (bl402, ("stage", "detected")))]
    assert 2 * HOUR <= age < 2 * HOUR + 60
    assert samples[("dichroism_backlog_scans", (bl402, ("stage", "submitted")))] == 0
    assert samples[("dichroism_healthy", ())] == 0  # the detected scan waits too long
    assert samples[("dichroism_last_lifecycle_pass_timestamp_seconds", ())] == pytest.approx(
        now - 30, abs=1
    )
    assert samples[("dichroism_last_flight_check_timestamp_seconds", ())] == pytest.approx(
        now - 60, abs=1
    )
    assert samples[("dichroism_last_flight_check_ok", ())] == 1
    assert samples[("dichroism_submit_latency_seconds_count", (bl402,))] == 2
    assert samples[("dichroism_submit_latency_seconds_bucket", (bl402, ("le", "0.5")))] == 1
    assert samples[("dichroism_submit_latency_seconds_bucket", (bl402, ("le", "60.0")))] == 2


def test_timestamps_are_absent_until_they_happened(
    served: tuple[MetricsServer, str, Ledger],
) -> None:
    _, url, _ = served
    names = {name for name, _ in scrape(url)}
    assert "dichroism_backlog_scans" in names
    assert "dichroism_last_flight_check_timestamp_seconds" not in names
    assert "dichroism_last_lifecycle_pass_timestamp_seconds" not in names


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9464", ("127.0.0.1", 9464)),  # loopback unless a host is given
        (":9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_address(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["", "host", "1.2.3.4:99999", "my-host:9464", "x:y"])
def test_parse_address_refuses_bad_values(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^--metrics: "):
        parse_address(value)


def test_a_busy_port_is_a_one_line_error(
    cfg: Config, served: tuple[MetricsServer, str, Ledger]
) -> None:
    server, _, ledger = served
    assert server.address is not None
    other = MetricsServer(cfg, ledger)
    with pytest.raises(ConfigError, match=r"^--metrics: cannot listen on 127\.0\.0\.1:"):
        other.start(*server.address)
