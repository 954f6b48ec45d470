"""The ledger's own faults: a full disk mid-burst, then a crash, then space back.

A full disk is injected at the SQLite commit (what SQLITE_FULL does: the transaction is
rolled back): every write fails while it lasts, reads still work. The service is then
abandoned with outcomes it could not record (as a kill -9 would leave it) and a new one
starts on the same ledger once space is back. Every scan must end with exactly one run.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.config import Config
from dichroism_control.deploy_state import Deployment
from dichroism_control.launcher import Launcher, run_label
from dichroism_control.ledger import Ledger
from dichroism_control.service import WatchService
from tests.fakes import FakeBackend
from tests.watcher.conftest import write_file


class FullDisk:
    """Stands in for the ledger's connection; `commit` fails while `full` is set."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.full = False
        self.refused = 0

    def commit(self) -> None:
        if self.full:
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        self._conn.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_disk_full_mid_burst_then_crash_then_space_back_loses_and_duplicates_nothing(
    cfg: Config,
    ledger: Ledger,
    fake: FakeBackend,
    make_launcher: Callable[..., Launcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    disk = FullDisk(ledger._conn)
    ledger._conn = disk  # type: ignore[assignment]
    # No lifecycle ends these runs here: lift the in-flight bound so all can be sent.
    cfg = cfg.model_copy(
        update={"submit": cfg.submit.model_copy(update={"max_runs_in_flight": 100_000})}
    )
    root = Path(cfg.beamlines["bl402"].watch.root)
    rels = [f"P{i % 3}/scan_{i:03d}.h5" for i in range(120)]
    first = WatchService(cfg, Launcher(cfg, ledger, fake, Deployment.resolve(cfg)), workers=4)
    first.start()
    for rel in rels[:60]:
        write_file(root / rel, rel.encode())
    assert _wait(lambda: len(fake.requests) >= 20)
    disk.full = True
    for rel in rels[60:]:
        write_file(root / rel, rel.encode())
    # While the disk is full, writes keep failing and are retried, one log line a minute.
    assert _wait(lambda: disk.refused >= 5)
    with caplog.at_level(logging.ERROR):
        assert _wait(lambda: "intake paused" in caplog.text or "not recorded" in caplog.text)
    # The crash: the process dies with the disk still full (in-memory outcomes are lost).
    first.stop(timeout=10)
    sent_before = len(fake.requests)
    disk.full = False
    again = WatchService(cfg, Launcher(cfg, ledger, fake, Deployment.resolve(cfg)), workers=4)
    again.start()
    try:
        assert _wait(lambda: len({r.label for r in fake.requests}) == len(rels)), len(fake.requests)
        assert _wait(lambda: ledger.state_counts().get("bl402") == {"submitted": len(rels)}), (
            ledger.state_counts()
        )
    finally:
        again.stop(timeout=10)
    counts = Counter(r.label for r in fake.requests)
    assert set(counts) == {run_label("bl402", rel) for rel in rels}
    assert max(counts.values()) == 1, [label for label, n in counts.items() if n > 1]
    assert sent_before < len(rels)  # the fault really held some scans back
    assert caplog.text.count("Traceback") == 0


def _status(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from tests.deploy.helpers import run_cli

    code, _, err = run_cli(["--config", str(cfg_path), "status"], capsys)
    return code, err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b"this is not a database" * 100), "not a SQLite database"),
        (lambda p: p.write_bytes(b""), "empty (truncated)"),
    ],
    ids=["garbage", "truncated"],
)
def test_a_damaged_ledger_is_refused_in_one_line(
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], Any],
    message: str,
) -> None:
    from dichroism_control.config import load_config

    path = write_config()
    config = load_config(path)
    Ledger(config.ledger_path).close()
    for extra in ("-wal", "-shm"):
        config.ledger_path.with_name(config.ledger_path.name + extra).unlink(missing_ok=True)
    damage(config.ledger_path)
    code, err = _status(path, capsys)
    assert code == 2
    assert err == (
        f"dichroism: error: {config.ledger_path}: {message}: restore the ledger from a backup,"
        " or move it (and its ledger.sqlite.created) aside to start afresh (every scan on disk"
        " will then be sent again)\n"
    )


def test_a_lost_ledger_is_never_recreated_silently(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from dichroism_control.config import load_config

    path = write_config()
    config = load_config(path)
    Ledger(config.ledger_path).close()
    for extra in ("", "-wal", "-shm"):
        config.ledger_path.with_name(config.ledger_path.name + extra).unlink(missing_ok=True)
    code, err = _status(path, capsys)
    assert code == 2
    assert err == (
        f"dichroism: error: {config.ledger_path}: the ledger is missing but this state"
        " directory had one (ledger.sqlite.created is there): restore it from a backup, or move"
        " ledger.sqlite.created aside to start afresh (every scan on disk will then be sent"
        " again)\n"
    )
    assert not config.ledger_path.exists()


def test_names_that_cannot_be_shipped_are_refused_and_the_rest_goes_on(
    cfg: Config,
    ledger: Ledger,
    fake: FakeBackend,
    make_launcher: Callable[..., Launcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A name that is not UTF-8, holds a line break or is too long for the batch flows is
    refused with a message; it never crashes the start-up catch-up, nor blocks the others."""
    root = Path(cfg.beamlines["bl631"].watch.root)
    (root / "P1").mkdir(parents=True)
    bad_bytes = bytes(root / "P1") + b"/caf\xe9.h5"
    with open(bad_bytes, "wb") as handle:
        handle.write(b"latin-1 name")
    write_file(root / "P1" / "two\nlines.h5")
    write_file(root / "P1" / ("x" * 120) / ("y" * 125 + ".h5"))
    write_file(root / "P1" / "fine.h5")
    service = WatchService(cfg, make_launcher(fake), workers=2)
    with caplog.at_level(logging.WARNING):
        service.start()
        try:
            assert _wait(lambda: len(fake.requests) == 1)
            assert _wait(lambda: service.stats.refused >= 3)
        finally:
            service.stop(timeout=10)
    assert [r.label for r in fake.requests] == ["bl631 P1/fine.h5"]
    assert "not valid UTF-8" in caplog.text
    assert "a line break in the name" in caplog.text
    assert "the archive and prune flows carry at most 240" in caplog.text


def test_a_read_only_state_dir_is_one_line(
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9 item 7. The suite runs as root, for whom mode bits do not make a directory
    read-only, so the two ways it shows are produced directly: the directory cannot be
    created (EACCES from mkdir), and an existing ledger opens read-only (SQLite's own
    `mode=ro`, whose writes fail as on a read-only mount)."""
    import errno
    import sqlite3

    from dichroism_control import database
    from dichroism_control.config import load_config

    path = write_config()
    config = load_config(path)
    real_mkdir = Path.mkdir

    def denied(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == config.ledger_path.parent:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "mkdir", denied)
        code, err = _status(path, capsys)
    assert code == 2
    assert err == (
        f"dichroism: error: {config.ledger_path}: cannot use the state directory"
        " (Permission denied)\n"
    )

    Ledger(config.ledger_path).close()
    real_connect = sqlite3.connect

    def read_only(target: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(f"file:{target}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(database.sqlite3, "connect", read_only)
    # `status` only reads, and reads work; `submit` writes the scan it is given.
    scan = Path(config.beamline("bl402").watch.root) / "P1" / "scan.h5"
    scan.parent.mkdir(parents=True, exist_ok=True)
    scan.write_bytes(b"data")
    assert _status(path, capsys)[0] == 0
    from tests.deploy.helpers import run_cli

    code, _, err = run_cli(
        ["--config", str(path), "--backend", "local", "submit", str(scan), "--beamline", "bl402"],
        capsys,
    )
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "attempt to write a readonly database" in err and "read-only?" in err
