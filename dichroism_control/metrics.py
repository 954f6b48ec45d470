"""`watch --metrics [HOST:]PORT`: Prometheus metrics of the pipeline (prometheus-client).

Imported only when `--metrics` is given. Most metrics are read from the ledger at scrape
time through the health report, so they agree with `status` and survive restarts: the
counters are ledger facts that only grow (scans that reached a step, bytes, failed runs),
the gauges are the backlog and the timestamps the service writes. The one in-process metric
is the submit latency histogram, fed by the launcher's hook.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from dichroism_control.errors import ConfigError
from dichroism_control.health import STAGES, assess, timestamp

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from dichroism_control.config import Config
    from dichroism_control.ledger import Ledger

LOOPBACK = "127.0.0.1"
# Seconds from a scan's first submission attempt to its run id (retries and backoff included).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# step -> the ledger fact that says a scan got there (set once, never cleared).
_STEPS = {
    "detected": "1",
    "transferred": "transferred_at IS NOT NULL",
    "archived": "archived_at IS NOT NULL",
    "pruned_compute_dtn": "dtn_pruned_at IS NOT NULL",
    "pruned_cfs": "cfs_pruned_at IS NOT NULL",
}

# run_failures.subject is scan:<id>, group:<id> or batch:<key>: each joined by its key.
_FAILURES_SQL = """
SELECT f.flow AS flow, COALESCE(s.beamline, g.beamline, p.beamline) AS beamline, COUNT(*) AS n
FROM run_failures f
LEFT JOIN scans s ON s.id = CASE WHEN f.subject LIKE 'scan:%'
    THEN CAST(substr(f.subject, 6) AS INTEGER) END
LEFT JOIN archive_groups g ON g.id = CASE WHEN f.subject LIKE 'group:%'
    THEN CAST(substr(f.subject, 7) AS INTEGER) END
LEFT JOIN prune_timers p ON p.batch = CASE WHEN f.subject LIKE 'batch:%'
    THEN substr(f.subject, 7) END
GROUP BY 1, 2
"""


def parse_address(value: str) -> tuple[str, int]:
    """`PORT` (loopback), `HOST:PORT` or `[IPv6]:PORT` -> (host, port); a bad value is a
    one-line ConfigError naming the option."""
    text = value.strip()
    host = LOOPBACK
    port_text = text
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host, port_text = inner, rest.removeprefix(":")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        host = host or LOOPBACK
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535 or not host:
        raise ConfigError(
            f"--metrics: expected [HOST:]PORT (e.g. 9464, or 0.0.0.0:9464 to listen beyond "
            f"this host), not {value!r}"
        )
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"--metrics: {host!r} is not an IP address or localhost") from None
    return host, port


class PipelineCollector(Collector):
    """Ledger-derived metrics, computed at scrape time."""

    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self.ledger
        scans = CounterMetricFamily(
            "dichroism_scans", "Scans that reached a step", labels=["beamline", "step"]
        )
        volume = CounterMetricFamily(
            "dichroism_bytes", "Bytes of the scans that reached a step", labels=["beamline", "step"]
        )
        # One pass over the table for every step.
        columns = ", ".join(
            f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END) AS n_{step},"
            f" SUM(CASE WHEN {condition} THEN size ELSE 0 END) AS b_{step}"
            for step, condition in _STEPS.items()
        )
        for row in ledger.query(f"SELECT beamline, {columns} FROM scans GROUP BY beamline"):
            for step in _STEPS:
                scans.add_metric([row["beamline"], step], row[f"n_{step}"] or 0)
                volume.add_metric([row["beamline"], step], row[f"b_{step}"] or 0)
        yield scans
        yield volume
        failures = CounterMetricFamily(
            "dichroism_run_failures",
            "Failed runs the lifecycle handled",
            labels=["beamline", "step"],
        )
        for row in ledger.query(_FAILURES_SQL):
            failures.add_metric([row["beamline"] or "", row["flow"]], row["n"])
        yield failures

        report = assess(self.config, ledger)
        backlog = GaugeMetricFamily(
            "dichroism_backlog_scans", "Scans waiting in a stage", labels=["beamline", "stage"]
        )
        backlog_bytes = GaugeMetricFamily(
            "dichroism_backlog_bytes", "Bytes waiting in a stage", labels=["beamline", "stage"]
        )
        oldest = GaugeMetricFamily(
            "dichroism_backlog_oldest_age_seconds",
            "Age of the oldest scan waiting in a stage",
            labels=["beamline", "stage"],
        )
        failed = GaugeMetricFamily(
            "dichroism_scans_failed", "Scans failed and not acknowledged", labels=["beamline"]
        )
        for name, info in report.beamlines.items():
            for stage in STAGES:
                item = info["backlog"].get(stage)
                backlog.add_metric([name, stage], item["count"] if item else 0)
                backlog_bytes.add_metric([name, stage], item["bytes"] if item else 0)
                age = item["oldest_age_seconds"] if item else None
                oldest.add_metric([name, stage], age or 0.0)
            failed.add_metric([name], info["failed"])
        yield backlog
        yield backlog_bytes
        yield oldest
        yield failed
        yield _gauge("dichroism_healthy", "1 when status --check passes", int(report.healthy))
        yield _gauge("dichroism_problems", "Health problems", len(report.problems))
        yield _gauge("dichroism_waiting_for_a_person_runs", "INACTIVE runs", len(report.waiting))
        yield _gauge("dichroism_refused_files", "Files the watcher refused", report.refusals_total)
        stamps = (
            (
                "dichroism_last_lifecycle_pass_timestamp_seconds",
                "When the last lifecycle pass ended",
                report.lifecycle.get("last_pass_at"),
            ),
            (
                "dichroism_last_flight_check_timestamp_seconds",
                "When the last flight check ran",
                report.flight_check.get("at"),
            ),
            (
                "dichroism_heartbeat_timestamp_seconds",
                "The watch service's last heartbeat",
                report.watcher.get("heartbeat_at"),
            ),
        )
        for metric, help_text, value in stamps:
            at = timestamp(value)
            if at is not None:  # absent, not 0, until it has happened
                yield _gauge(metric, help_text, at)
        verdict = report.flight_check.get("verdict")
        if verdict not in (None, "never"):
            ok = not any(p.code == "flight_check" for p in report.problems)
            yield _gauge("dichroism_last_flight_check_ok", "1 when it passed", int(ok))


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


class MetricsServer:
    """The registry and its HTTP endpoint; `observe_submit` is the launcher's hook."""

    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PipelineCollector(config, ledger))
        self.submit_latency = Histogram(
            "dichroism_submit_latency_seconds",
            "From a scan's first submission attempt to its run id",
            labelnames=["beamline"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def observe_submit(self, beamline: str, seconds: float) -> None:
        self.submit_latency.labels(beamline=beamline).observe(max(0.0, seconds))

    def start(self, host: str, port: int) -> tuple[str, int]:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"--metrics: cannot listen on {host}:{port} ({exc.strerror})"
            ) from None
        bound: Any = self._server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
