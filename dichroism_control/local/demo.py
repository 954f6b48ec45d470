"""The demo: the whole pipeline, offline, on the local backend (`dichroism demo`).

Creates the demo directories, deploys the flows and functions to the local backend, starts
the same watcher + lifecycle loop as `dichroism watch`, writes small synthetic scans into a
watch root and reports each scan's progress live through `say`: detected -> submitted ->
transferred -> archived -> pruned, with run ids and where each copy is. `run_demo` returns
once every scan is pruned, one has failed or time has run out.

It sits above the watch service, launcher and lifecycle (it drives them); only the CLI
imports it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.deploy import deploy
from dichroism_control.deploy_state import Deployment
from dichroism_control.errors import BackendError, ConfigError, DichroismError
from dichroism_control.launcher import Launcher, submit_lock
from dichroism_control.ledger import Ledger
from dichroism_control.local.backend import LocalBackend
from dichroism_control.routing import route
from dichroism_control.service import WatchService, start_lifecycle

if TYPE_CHECKING:
    from dichroism_control.config import Config

Say = Callable[[str], None]


def run_demo(
    config: Config, *, scans: int, beamline: str | None, timeout: float, say: Say
) -> dict[str, Any]:
    """`{"ok", "reason", "scans": [...]}` once every scan is pruned (ok), or one failed or
    `timeout` seconds passed (not ok). Raises before any scan is written when the config is
    not local, the deploy fails or another process holds the submit lock."""
    if config.backend != "local":
        raise ConfigError(
            "demo runs on the local backend only: use a local config "
            "(--config examples/local.yml) or --backend local"
        )
    name = beamline or sorted(config.beamlines)[0]
    settings = config.beamline(name)
    _make_directories(config)
    backend = LocalBackend(config)
    report = deploy(config, backend)
    if report.failed:
        raise DichroismError(
            "deploy failed: " + ", ".join(f"{r.name} ({r.note})" for r in report.failed)
        )
    say(f"deployed to the local backend ({report.writes} change(s)); state in {config.state_path}")
    deployment = Deployment.resolve(config)
    ledger = Ledger(config.ledger_path)
    lock = submit_lock(config)
    if not lock.acquire():
        raise DichroismError(
            f"another dichroism process (pid {lock.holder()}) is watching {config.state_path}; "
            "stop it first"
        )
    stop = threading.Event()
    watcher: WatchService | None = None
    lifecycle: threading.Thread | None = None
    try:
        launcher = Launcher(config, ledger, backend, deployment)
        watcher = WatchService(config, launcher, beamlines=[name])
        watcher.start()
        lifecycle = start_lifecycle(config, ledger, backend, deployment, stop)
        say(f"watching {settings.watch.root} (settle {settings.watch.settle_seconds:g} s)")
        paths = _write_scans(config, name, scans, say)
        return _follow(config, ledger, backend, paths, say, timeout=timeout)
    finally:
        stop.set()
        if watcher is not None:
            watcher.stop(timeout=10)
        if lifecycle is not None:
            lifecycle.join(timeout=30)
        lock.release()
        backend.close()


def _make_directories(config: Config) -> None:
    """Watch roots, collection roots, the fake tape tree and the SciCat stand-in's folder."""
    for settings in config.beamlines.values():
        Path(settings.watch.root).mkdir(parents=True, exist_ok=True)
    for endpoint in config.globus.endpoints.values():
        if endpoint.root_path != "/":
            (config.resolve(endpoint.local_path) / endpoint.root_path.lstrip("/")).mkdir(
                parents=True, exist_ok=True
            )
    config.resolve(config.local.hpss_path).mkdir(parents=True, exist_ok=True)
    config.resolve(config.local.catalogue_path).parent.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- scans


def _write_scans(config: Config, beamline: str, count: int, say: Say) -> list[str]:
    """Small synthetic scans in `{root}/{proposal}/`: HDF5 with h5py, else text."""
    root = Path(config.beamline(beamline).watch.root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    proposal = root / f"ALS-DEMO-{stamp}"
    proposal.mkdir(parents=True, exist_ok=True)
    try:
        import h5py  # noqa: F401

        suffix = ".h5"
    except ImportError:
        suffix = ".txt"
    paths: list[str] = []
    for i in range(1, count + 1):
        path = proposal / f"xmcd_scan_{i:03d}{suffix}"
        _write_scan(path, i)
        paths.append(str(path))
        say(f"wrote {path.relative_to(root)} ({os.path.getsize(path)} bytes)")
    return paths


def _write_scan(path: Path, index: int) -> None:
    energies = [770.0 + 0.25 * k for k in range(400)]
    signal = [math.exp(-(((e - 778 - index) / 2.0) ** 2)) for e in energies]
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["title"] = f"XMCD demo scan {index}"
            entry.create_dataset("energy", data=energies)
            entry.create_dataset("xmcd", data=signal)
        return
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"# XMCD demo scan {index}\n# columns: energy_eV xmcd\n")
        for e, s in zip(energies, signal, strict=True):
            handle.write(f"{e:.2f} {s:.6f}\n")


# ---------------------------------------------------------------------------- progress

_ORDER = ("detected", "submitting", "submitted", "transferred", "archive_submitted", "archived")


def _follow(
    config: Config,
    ledger: Ledger,
    backend: LocalBackend,
    paths: list[str],
    say: Say,
    *,
    timeout: float,
) -> dict[str, Any]:
    """Report every change of each scan until all are pruned (or one fails / time runs out)."""
    routes = {p: route(config, p) for p in paths}
    seen: dict[str, tuple[Any, ...]] = {}
    shown_runs: set[str] = set()
    deadline = time.monotonic() + timeout
    marks = ",".join("?" for _ in paths)
    while True:
        rows = {
            row["path"]: row
            for row in ledger.query(f"SELECT * FROM scans WHERE path IN ({marks})", tuple(paths))
        }
        for path in paths:
            row = rows.get(path)
            rel = routes[path].rel
            if row is None:
                continue
            key = (row["state"], row["dtn_pruned_at"] is not None, row["cfs_pruned_at"] is not None)
            if seen.get(path) == key:
                continue
            previous = seen.get(path)
            seen[path] = key
            for line in _describe(config, ledger, backend, row, routes[path], previous, shown_runs):
                # failure reasons carry whole action documents; the run shows the rest
                say(f"{rel}: {line if len(line) <= 300 else line[:297] + '...'}")
        states = [rows[p]["state"] if p in rows else "waiting" for p in paths]
        if all(s == "pruned" for s in states):
            return _result(True, "", paths, rows, routes)
        failed = [p for p in paths if p in rows and rows[p]["state"] == "failed"]
        if failed:
            row = rows[failed[0]]
            return _result(
                False,
                f"{routes[failed[0]].rel}: failed at {row['failed_step']}: {row['last_error']}",
                paths,
                rows,
                routes,
            )
        if time.monotonic() >= deadline:
            return _result(
                False,
                f"timed out after {timeout:g} s (states: {', '.join(states)})",
                paths,
                rows,
                routes,
            )
        time.sleep(0.2)


def _describe(
    config: Config,
    ledger: Ledger,
    backend: LocalBackend,
    row: Any,
    scan_route: Any,
    previous: tuple[Any, ...] | None,
    shown_runs: set[str],
) -> list[str]:
    lines: list[str] = []
    state = row["state"]
    was = previous[0] if previous else None
    if state == "detected" or (was is None and state != "detected"):
        lines.append("detected (finished writing, settled)")
    if state in ("submitted", "transferred", "archive_submitted", "archived", "pruned") and (
        was in (None, "detected", "submitting")
    ):
        lines.append(f"submitted: new_file run {row['run_id']}  label {row['label']!r}")
    if state in ("transferred", "archive_submitted", "archived", "pruned") and was in (
        None,
        "detected",
        "submitting",
        "submitted",
    ):
        cfs = scan_route.destination_path
        pid = ""
        try:
            run = backend.get_run(row["run_id"])
            output = (run.get("details") or {}).get("output") or {}
            result = ((output.get("ingest") or {}).get("details") or {}).get("result") or [{}]
            pid = f"; SciCat (local stand-in) pid {result[0].get('pid')}"
        except (BackendError, AttributeError, IndexError, TypeError):
            pass
        lines.append(f"transferred: checksum-verified copy at CFS {cfs}{pid}")
    if state in ("archive_submitted", "archived", "pruned") and was not in (
        "archive_submitted",
        "archived",
        "pruned",
    ):
        group = _group(ledger, row)
        if group is not None and group["run_id"] and state == "archive_submitted":
            lines.append(f"archive_submitted: archive run {group['run_id']}")
    if state in ("archived", "pruned") and was not in ("archived", "pruned"):
        group = _group(ledger, row)
        tape = _tape_location(row)
        archive_run = f" (archive run {group['run_id']})" if group is not None else ""
        lines.append(f"archived on fake HPSS tape: {tape}{archive_run}")
    if (previous is None or not previous[1]) and row["dtn_pruned_at"] is not None:
        lines.append(
            f"pruned from compute-dtn after verifying the CFS copy "
            f"({_prune_run(ledger, row['dtn_prune_batch'])}); source file gone: "
            f"{not os.path.exists(row['path'])}"
        )
    if (previous is None or not previous[2]) and row["cfs_pruned_at"] is not None:
        cfs_local = config.resolve(
            config.endpoint(config.beamline(row["beamline"]).destination).local_path
        ) / scan_route.destination_path.lstrip("/")
        lines.append(
            f"pruned from CFS after verifying the tape copy "
            f"({_prune_run(ledger, row['cfs_prune_batch'])}); CFS copy gone: "
            f"{not os.path.exists(str(cfs_local))}"
        )
    if state == "pruned":
        lines.append("pruned: done (only the tape copy and the SciCat record remain)")
    if state == "failed":
        lines.append(f"FAILED at {row['failed_step']}: {row['last_error']}")
    return lines


def _group(ledger: Ledger, row: Any) -> Any:
    if row["archive_group_id"] is None:
        return None
    rows = ledger.query("SELECT * FROM archive_groups WHERE id = ?", (row["archive_group_id"],))
    return rows[0] if rows else None


def _prune_run(ledger: Ledger, batch: str | None) -> str:
    if batch is None:
        return "prune run ?"
    rows = ledger.query("SELECT run_id, timer_id FROM prune_timers WHERE batch = ?", (batch,))
    if not rows:
        return "prune run ?"
    return f"timer {rows[0]['timer_id']} -> prune run {rows[0]['run_id']}"


def _tape_location(row: Any) -> str:
    """Where the lifecycle recorded this version on tape (an archive and its member, or a
    single file), from the archive run's result."""
    if not row["tape_path"]:
        return "?"
    member = f" member {row['tape_member']}" if row["tape_member"] else " (single file)"
    return f"{row['tape_path']}{member}"


def _result(
    ok: bool, reason: str, paths: list[str], rows: dict[str, Any], routes: dict[str, Any]
) -> dict[str, Any]:
    scans = []
    for path in paths:
        row = rows.get(path)
        scans.append(
            {
                "path": path,
                "rel": routes[path].rel,
                "state": row["state"] if row is not None else None,
                "run_id": row["run_id"] if row is not None else None,
                "cfs_path": routes[path].destination_path,
                "last_error": row["last_error"] if row is not None else None,
            }
        )
    return {"ok": ok, "reason": reason, "scans": scans}
