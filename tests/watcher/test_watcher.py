"""The watcher with real observers on a real filesystem (FakeBackend behind the launcher)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dichroism_control.config import Config
from dichroism_control.deploy_state import Deployment
from dichroism_control.launcher import Launcher, run_label
from dichroism_control.ledger import Ledger
from dichroism_control.service import WatchService
from tests.fakes import FakeBackend
from tests.watcher.conftest import write_file


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def running(
    cfg: Config, ledger: Ledger, fake: FakeBackend
) -> Iterator[Callable[..., WatchService]]:
    started: list[WatchService] = []
    # Detection is under test here, not the in-flight bound (tests/watcher/test_throughput.py):
    # the fake's runs never finish, so lift it.
    unbounded = cfg.model_copy(
        update={"submit": cfg.submit.model_copy(update={"max_runs_in_flight": 100_000})}
    )

    def start(*, poll: bool = False, backend: FakeBackend | None = None) -> WatchService:
        launcher = Launcher(unbounded, ledger, backend or fake, Deployment.resolve(cfg))
        watcher = WatchService(unbounded, launcher, poll=poll, workers=4)
        watcher.start()
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.stop(timeout=10)


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_a_file_being_written_is_not_submitted_until_finished(
    cfg: Config, fake: FakeBackend, running: Callable[..., WatchService], poll: bool
) -> None:
    watcher = running(poll=poll)
    path = Path(cfg.beamlines["bl402"].watch.root) / "P1" / "slow.h5"
    path.parent.mkdir(parents=True)
    settle = cfg.beamlines["bl402"].watch.settle_seconds
    with open(path, "wb") as handle:
        # inotify: pauses longer than settle_seconds are fine while the file is open.
        # polling sees no close: the writer must not pause for settle_seconds.
        rounds, pause = (6, settle * 1.5) if not poll else (15, settle * 0.4)
        for _ in range(rounds):
            handle.write(b"x" * 1000)
            handle.flush()
            time.sleep(pause)
        # The writer never paused for settle_seconds (polling) or has not closed the file
        # (inotify): by construction no settle window passed without a change.
        assert fake.requests == []
        if not poll:
            # Open, idle, not closed: the tracker holds it written-and-unclosed, with no
            # deadline at all: nothing will look at it again until its close arrives.
            tracker = watcher.watcher.tracker
            assert wait_for(lambda: str(path) in tracker)
            assert tracker.waiting_for_close(str(path))
            assert fake.requests == []
    assert wait_for(lambda: len(fake.requests) == 1)
    assert fake.requests[0].body["input"]["source"]["size"] == rounds * 1000


def test_200_files_then_restart_without_resubmission(
    cfg: Config, ledger: Ledger, fake: FakeBackend, running: Callable[..., WatchService]
) -> None:
    watcher = running()
    root = Path(cfg.beamlines["bl631"].watch.root)
    rels = [f"P{i % 4}/user/scan_{i:03d}.h5" for i in range(200)]
    for rel in rels:
        write_file(root / rel, rel.encode())
    assert wait_for(lambda: len(fake.requests) == 200, timeout=20), len(fake.requests)
    assert sorted(r.label for r in fake.requests) == sorted(run_label("bl631", r) for r in rels)
    for request in fake.requests:
        rel = request.label.removeprefix("bl631 ")
        assert request.body["input"]["source"]["path"] == str(root / rel)
        assert request.body["input"]["source"]["size"] == len(rel.encode())
        assert request.body["input"]["scicat"]["proposal"] == rel.split("/")[0]
    assert ledger.state_counts()["bl631"] == {"submitted": 200}
    watcher.stop(timeout=10)
    # Restart: the catch-up pass finds every file already recorded.
    write_file(root / "P9" / "new_while_down.h5")
    again = running()
    assert wait_for(lambda: len(fake.requests) == 201)
    # Nothing can be sent again: only a `detected` scan is ever claimed, and there is none;
    # every path holds exactly one version.
    assert ledger.state_counts()["bl631"] == {"submitted": 201}
    assert ledger.query("SELECT COUNT(*) AS n FROM scans WHERE version > 1")[0]["n"] == 0
    assert len(fake.requests) == 201 and again.stats.detected == 1


def test_ignored_names_and_escaping_symlinks(
    cfg: Config,
    tmp_path: Path,
    ledger: Ledger,
    fake: FakeBackend,
    running: Callable[..., WatchService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    watcher = running()
    root = Path(cfg.beamlines["bl402"].watch.root)
    outside = write_file(tmp_path / "outside" / "secret.h5")
    (root / "P1").mkdir()
    os.symlink(outside, root / "P1" / "escape.h5")
    for name in ("P1/.hidden.h5", "P1/partial.h5.part", "P1/x.tmp", ".cache/inner.h5"):
        write_file(root / name)
    write_file(root / "P1" / "real.h5")
    assert wait_for(lambda: len(fake.requests) == 1)
    # The ignored names were written first, and inotify delivers in order: by the time the
    # real scan is recorded their events have been handled, and none is tracked or recorded.
    assert [r.label for r in fake.requests] == ["bl402 P1/real.h5"]
    tracked = {Path(p).name for p in watcher.watcher.tracker.paths()}
    assert tracked.isdisjoint({".hidden.h5", "partial.h5.part", "x.tmp", "inner.h5"})
    assert [r["rel"] for r in ledger.query("SELECT rel FROM scans")] == ["P1/real.h5"]
    assert wait_for(
        lambda: any(
            "escape.h5" in r.getMessage() and "outside the watch root" in r.getMessage()
            for r in caplog.records
        )
    )


def test_moved_in_files_and_new_directories(
    cfg: Config, tmp_path: Path, fake: FakeBackend, running: Callable[..., WatchService]
) -> None:
    running()
    root = Path(cfg.beamlines["bl402"].watch.root)
    staged = write_file(tmp_path / "staging" / "moved.h5")
    os.rename(staged, root / "moved.h5")  # no write or close seen: size/mtime rule
    write_file(root / "P1" / "scan.h5.part")
    os.rename(root / "P1" / "scan.h5.part", root / "P1" / "scan.h5")
    tree = tmp_path / "tree"
    write_file(tree / "a.h5")
    write_file(tree / "sub" / "b.h5")
    os.rename(tree, root / "P2")
    assert wait_for(lambda: len(fake.requests) == 4)
    assert sorted(r.label for r in fake.requests) == [
        "bl402 P1/scan.h5",
        "bl402 P2/a.h5",
        "bl402 P2/sub/b.h5",
        "bl402 moved.h5",
    ]


def test_catch_up_submits_files_present_at_start(
    cfg: Config, fake: FakeBackend, running: Callable[..., WatchService]
) -> None:
    root = Path(cfg.beamlines["bl402"].watch.root)
    for i in range(20):
        write_file(root / "P1" / f"old{i}.h5")
    watcher = running()
    assert wait_for(lambda: len(fake.requests) == 20)
    assert watcher.stats.detected == 20


def test_refused_files_are_recorded_in_the_ledger(
    cfg: Config, ledger: Ledger, tmp_path: Path, running: Callable[..., WatchService]
) -> None:
    """A file the watcher will not ship (here a symlink leaving the root) is remembered in
    the ledger, so `status` and the alert digest show it, not only a log line."""
    outside = write_file(tmp_path / "outside" / "secret.h5")
    link = Path(cfg.beamlines["bl402"].watch.root) / "P1" / "link.h5"
    link.parent.mkdir(parents=True)
    running()
    link.symlink_to(outside)
    assert wait_for(lambda: bool(ledger.query("SELECT * FROM refusals")))
    (row,) = ledger.query("SELECT * FROM refusals")
    assert row["path"] == str(link) and row["beamline"] == "bl402"
    assert "outside the watch root" in row["reason"]
    assert ledger.get_scan(str(link)) is None
