"""`dichroism demo`: the whole pipeline, offline, in under a minute (local backend only).

Creates the demo directories, deploys the flows and functions to the local backend, starts
the same watcher + lifecycle loop as `dichroism watch`, writes small synthetic scans into a
watch root and prints each scan's progress live: detected -> submitted -> transferred ->
archived -> pruned, with run ids and where each copy is. Exit 0 once every scan is pruned,
1 on a failure or timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pathlib import Path

    from dichroism_control.cli.context import Context
    from dichroism_control.config import Config
    from dichroism_control.ledger import Ledger


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    *,
    scans: Annotated[int, typer.Option("--scans", min=1, max=20, help="Scans to write.")] = 2,
    beamline: Annotated[
        str | None, typer.Option("--beamline", help="Beamline to write them for (default: first).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=5, help="Give up after this many seconds.")
    ] = 90.0,
) -> None:
    """Run a demo scan through transfer -> SciCat -> HPSS -> prune on the local backend."""
    import logging
    import threading

    from dichroism_control.deploy import deploy
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.errors import ConfigError, DichroismError
    from dichroism_control.launcher import Launcher, submit_lock
    from dichroism_control.service import WatchService, start_lifecycle

    state: Context = ctx.obj
    config = state.config()
    if config.backend != "local":
        raise ConfigError(
            "demo runs on the local backend only: use a local config "
            "(--config examples/local.yml) or --backend local"
        )
    name = beamline or sorted(config.beamlines)[0]
    settings = config.beamline(name)
    say = _Printer(quiet=state.fmt == "json")
    _make_directories(config)
    # The watcher and lifecycle log every step at INFO; the demo prints its own story.
    if logging.getLogger().level < logging.WARNING and not _verbose():
        logging.getLogger().setLevel(logging.WARNING)

    backend = state.backend()
    report = deploy(config, backend)
    if report.failed:
        raise DichroismError(
            "deploy failed: " + ", ".join(f"{r.name} ({r.note})" for r in report.failed)
        )
    say(f"deployed to the local backend ({report.writes} change(s)); state in {config.state_path}")
    deployment = Deployment.resolve(config)
    ledger = state.ledger()
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
        outcome = _follow(config, ledger, backend, paths, say, timeout=timeout)
    finally:
        stop.set()
        if watcher is not None:
            watcher.stop(timeout=10)
        if lifecycle is not None:
            lifecycle.join(timeout=30)
        lock.release()
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    state.emit(outcome, text=lambda d: _summary_text(d, config))
    if not outcome["ok"]:
        raise DichroismError(outcome["reason"])


def _verbose() -> bool:
    import logging

    return logging.getLogger().level <= logging.DEBUG


class _Printer:
    """Timestamped progress lines on stderr (stdout stays for --format json)."""

    def __init__(self, *, quiet: bool) -> None:
        import time

        self.t0 = time.monotonic()
        self.quiet = quiet

    def __call__(self, text: str) -> None:
        import sys
        import time

        stream = sys.stderr if self.quiet else sys.stdout
        stream.write(f"[{time.monotonic() - self.t0:5.1f}s] {text}\n")
        stream.flush()


def _make_directories(config: Config) -> None:
    from pathlib import Path

    for settings in config.beamlines.values():
        Path(settings.watch.root).mkdir(parents=True, exist_ok=True)
    for endpoint in config.globus.endpoints.values():
        if endpoint.root_path != "/":
            (config.resolve(endpoint.local_path) / endpoint.root_path.lstrip("/")).mkdir(
                parents=True, exist_ok=True
            )
    config.resolve(config.local.hpss_path).mkdir(parents=True, exist_ok=True)
    config.resolve(config.local.catalogue_path).parent.mkdir(parents=True, exist_ok=True)


def _write_scans(config: Config, beamline: str, count: int, say: Any) -> list[str]:
    """Small synthetic scans in `{root}/{proposal}/`: HDF5 with h5py, else text."""
    import os
    import time
    from pathlib import Path

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
    import math

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


_ORDER = ("detected", "submitting", "submitted", "transferred", "archive_submitted", "archived")


def _follow(
    config: Config,
    ledger: Ledger,
    backend: Any,
    paths: list[str],
    say: Any,
    *,
    timeout: float,
) -> dict[str, Any]:
    """Print every change of each scan until all are pruned (or one fails / time runs out)."""
    import time

    from dichroism_control.routing import route

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
    backend: Any,
    row: Any,
    scan_route: Any,
    previous: tuple[Any, ...] | None,
    shown_runs: set[str],
) -> list[str]:
    from dichroism_control.errors import BackendError

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
        tape = _tape_location(backend, group, scan_route.rel)
        run = f" (archive run {group['run_id']})" if group is not None else ""
        lines.append(f"archived on fake HPSS tape: {tape}{run}")
    if (previous is None or not previous[1]) and row["dtn_pruned_at"] is not None:
        lines.append(
            f"pruned from compute-dtn after verifying the CFS copy "
            f"({_prune_run(ledger, row['dtn_prune_batch'])}); source file gone: "
            f"{not _exists(row['path'])}"
        )
    if (previous is None or not previous[2]) and row["cfs_pruned_at"] is not None:
        cfs_local = config.resolve(
            config.endpoint(config.beamline(row["beamline"]).destination).local_path
        ) / scan_route.destination_path.lstrip("/")
        lines.append(
            f"pruned from CFS after verifying the tape copy "
            f"({_prune_run(ledger, row['cfs_prune_batch'])}); CFS copy gone: "
            f"{not _exists(str(cfs_local))}"
        )
    if state == "pruned":
        lines.append("pruned: done (only the tape copy and the SciCat record remain)")
    if state == "failed":
        lines.append(f"FAILED at {row['failed_step']}: {row['last_error']}")
    return lines


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


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


def _tape_location(backend: Any, group: Any, rel: str) -> str:
    from dichroism_control.errors import BackendError

    if group is None or not group["run_id"]:
        return "?"
    try:
        run = backend.get_run(group["run_id"])
    except BackendError:
        return "?"
    output = (run.get("details") or {}).get("output") or {}
    result = ((output.get("archive") or {}).get("details") or {}).get("result") or [{}]
    for item in (result[0] or {}).get("manifest") or []:
        if item.get("path") == rel:
            member = f" member {item['member']}" if item.get("member") else ""
            return f"{item.get('tape_path')}{member}"
    return "?"


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


def _summary_text(outcome: dict[str, Any], config: Config) -> str:
    if not outcome["ok"]:
        return f"demo FAILED: {outcome['reason']}"
    return (
        f"demo OK: {len(outcome['scans'])} scan(s) went detected -> submitted -> transferred "
        f"-> archived -> pruned.\n"
        f"  tape tree: {config.resolve(config.local.hpss_path)}\n"
        f"  SciCat stand-in: {config.resolve(config.local.catalogue_path)}\n"
        f"  look around: dichroism --config <this config> runs list --flow all | status | "
        f"timers list --all"
    )
