"""Shared by the benchmarks: a loopback Flows server, a config, a `dichroism watch` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
DICHROISM = str(Path(PYTHON).with_name("dichroism"))
FLOW_ID = "9a3f5c1e-2b4d-4e6f-8a7b-1c2d3e4f5a6b"
FUNCTION_ID = "3e8d2c1b-4a5f-4b6c-9d7e-8f9a0b1c2d3e"


def uid(n: int) -> str:
    return f"4f1e2d3c-5b6a-4788-9a0b-{n:012d}"


class Server:
    def __init__(self, workdir: Path) -> None:
        port_file = workdir / "server.port"
        port_file.unlink(missing_ok=True)  # a second server in the same workdir (restarts)
        self.proc = subprocess.Popen(
            [PYTHON, str(HERE / "flows_server.py"), "--port-file", str(port_file)]
        )
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text()}/"

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stats(self, *, summary: bool = False) -> dict[str, Any]:
        """The server's record; `summary`: only the counts (cheap enough to poll)."""
        url = self.url + ("_stats?summary=1" if summary else "_stats")
        with urllib.request.urlopen(url) as response:
            data: dict[str, Any] = json.load(response)
            return data

    def fail(self, **spec: Any) -> None:
        request = urllib.request.Request(
            self.url + "_fail", data=json.dumps(spec).encode(), method="POST"
        )
        urllib.request.urlopen(request).read()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def write_config(
    workdir: Path, *, settle: float, poll: bool = False, poll_interval: float = 1.0
) -> Path:
    data = {
        "backend": "globus",
        "state_dir": str(workdir / "state"),
        "globus": {
            "endpoints": {
                "bl402-compute-dtn": {
                    "root_path": "/",
                    "uri": "compute-dtn.als.lbl.gov",
                    "uuid": uid(402),
                    "name": "bl402-compute-dtn",
                },
                "bl402-nersc_alsdev_raw": {
                    "root_path": "/global/cfs/cdirs/als/data_mover/4.0.2/raw",
                    "uri": "nersc.gov",
                    "uuid": uid(4020),
                    "name": "bl402-nersc_alsdev_raw",
                },
            },
            "compute_endpoints": {"nersc": uid(1), "scicat": uid(2)},
            "flows": {"new_file": {"title": "Dichroism: new scan", "id": FLOW_ID}},
            "functions": {"scicat_ingest": FUNCTION_ID},
        },
        "beamlines": {
            "bl402": {
                "watch": {
                    "root": str(workdir / "data" / "bl402"),
                    "settle_seconds": settle,
                    "poll": poll,
                    "poll_interval_seconds": poll_interval,
                },
                "source": "bl402-compute-dtn",
                "destination": "bl402-nersc_alsdev_raw",
                "hpss_root": "/home/a/alsdev/data_mover/4.0.2",
                "scicat": {"instrument_id": "4.0.2", "owner_group": "als-4.0.2"},
            }
        },
        # The benchmark's lifecycle loop (if installed) must not add HTTP traffic.
        "lifecycle": {"poll_seconds": 3600},
        # These benchmarks measure the watcher's own pipeline (detect, hash, record, claim,
        # send), as issue 3 set its targets: the production bounds on runs in flight (12)
        # and run starts per second (10), which protect Transfer, would measure those bounds
        # instead (and no lifecycle ends the loopback server's runs).
        "submit": {"max_runs_in_flight": 10_000_000, "max_run_starts_per_second": 1e6},
    }
    if os.environ.get("BENCH_SOURCE"):
        # An older revision (A/B runs) has no such bounds and refuses unknown keys.
        data.pop("submit")
    (workdir / "data" / "bl402").mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def dichroism_command() -> list[str]:
    """The `dichroism` entry point; with BENCH_SOURCE=/other/checkout, that checkout's code
    (A/B runs of the same benchmark against an older revision)."""
    source = os.environ.get("BENCH_SOURCE")
    if not source:
        return [DICHROISM]
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
        " if '__editable__' not in type(f).__module__]; "
        f"sys.path.insert(0, {source!r}); "
        "from dichroism_control.cli.main import main; sys.exit(main())"
    )
    return [PYTHON, "-c", code]


def env_for(server: Server) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GLOBUS_SDK_SERVICE_URL_FLOWS=server.url,
        GLOBUS_SDK_SERVICE_URL_AUTH=server.url,
        GLOBUS_CLIENT_ID="7d7d7d7d-0000-4000-8000-00000000be4c",
        GLOBUS_CLIENT_SECRET="benchmark-secret",
    )
    return env


class Watch:
    def __init__(self, config: Path, server: Server, log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 (closed in stop/kill)
        self.proc = subprocess.Popen(
            [*dichroism_command(), "--config", str(config), "watch"],
            env=env_for(server),
            stdout=self.log,
            stderr=self.log,
        )
        self.profiler: subprocess.Popen[bytes] | None = None

    def profile(self, output: Path, *, rate: int = 250, gil: bool = False) -> None:
        """Sample the watcher with py-spy (collapsed stacks, all threads) until stop()."""
        self.profiler = subprocess.Popen(
            [
                str(Path(PYTHON).with_name("py-spy")),
                "record",
                "--pid",
                str(self.proc.pid),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--nonblocking",
                *(["--gil"] if gil else []),
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _stop_profiler(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            self.profiler.wait(60)
            self.profiler = None

    def wait_ready(self, log: Path, timeout: float = 20, *, marker: bytes = b"watching") -> None:
        deadline = time.monotonic() + timeout
        while marker not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"watcher did not log {marker!r}:\n" + log.read_text()[-3000:])
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def cpu_split(self) -> dict[str, float]:
        """User and system CPU seconds of the watcher so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return {"user_s": int(fields[11]) / tick, "system_s": int(fields[12]) / tick}

    def peak_rss_mb(self) -> float:
        return self._status_mb("VmHWM:")

    def rss_mb(self) -> float:
        """Resident now (peak_rss_mb is the high-water mark since start)."""
        return self._status_mb("VmRSS:")

    def _status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self._stop_profiler()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code

    def kill(self) -> None:
        self._stop_profiler()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
