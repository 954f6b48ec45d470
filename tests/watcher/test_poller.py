"""The directory poller (dichroism_control.poller): real files in tmp_path, small intervals.

Most tests drive one emitter by hand (`baseline()`, then `tick()`), so "not reported yet" is
observed after a known number of complete polls, never after a sleep. The threaded tests
wait on the poller's tick counter for the same reason.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import (
    DirCreatedEvent,
    FileCreatedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import EventQueue, ObservedWatch

from dichroism_control import intake as intake_module
from dichroism_control import watcher as watcher_module
from dichroism_control.config import Config, load_config
from dichroism_control.launcher import Launcher, run_label
from dichroism_control.ledger import Ledger
from dichroism_control.poller import DirectoryPollingEmitter, DirectoryPollingObserver
from dichroism_control.service import WatchService
from tests.fakes import FakeBackend
from tests.watcher.conftest import pin_ids, write_file

HOUR_NS = 3600 * 10**9


class Counting:
    """Wraps os.stat / os.scandir / a ledger look-up and counts the calls (and their paths)."""

    def __init__(self) -> None:
        self.stats: list[str] = []
        self.listings: list[str] = []
        self.lookups: list[list[str]] = []
        self.recorded: set[str] = set()

    def stat(self, path: str, *, follow_symlinks: bool = True) -> os.stat_result:
        self.stats.append(path)
        return os.stat(path, follow_symlinks=follow_symlinks)

    def scandir(self, path: str) -> Any:
        self.listings.append(path)
        return os.scandir(path)

    def known(self, paths: list[str]) -> Collection[str]:
        self.lookups.append(list(paths))
        return self.recorded & set(paths)

    def reset(self) -> None:
        self.stats.clear()
        self.listings.clear()
        self.lookups.clear()


def make_emitter(
    root: Path, counting: Counting, **kwargs: Any
) -> tuple[DirectoryPollingEmitter, Callable[[], list[FileSystemEvent]]]:
    events = EventQueue()
    emitter = DirectoryPollingEmitter(
        events,
        ObservedWatch(str(root), recursive=True),
        timeout=kwargs.pop("interval", 1.0),
        known=counting.known,
        stat=counting.stat,
        scandir=counting.scandir,
        **kwargs,
    )

    def drain() -> list[FileSystemEvent]:
        out = []
        while True:
            try:
                event, _ = events.get_nowait()
            except queue.Empty:
                return out
            out.append(event)

    return emitter, drain


def created(events: list[FileSystemEvent]) -> set[str]:
    return {str(e.src_path) for e in events if isinstance(e, FileCreatedEvent)}


def dirs_created(events: list[FileSystemEvent]) -> set[str]:
    return {str(e.src_path) for e in events if isinstance(e, DirCreatedEvent)}


def age(path: Path, seconds: float = 3600) -> None:
    """Set an mtime in the past (an old directory: its listing is not racy)."""
    past = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(past, past))


# -- finding files -------------------------------------------------------------------------
class Recorder(FileSystemEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[FileSystemEvent] = []
        self.cond = threading.Condition()

    def dispatch(self, event: FileSystemEvent) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[list[FileSystemEvent]], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.events), timeout)


def test_files_in_existing_new_and_deep_directories_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old = write_file(root / "P1" / "old.h5")
    counting = Counting()
    counting.recorded.add(str(old))
    observer = DirectoryPollingObserver(known=counting.known, interval=0.05)
    handler = Recorder()
    observer.schedule(handler, str(root), recursive=True)
    observer.start()
    try:
        assert observer.wait_ticks(1, timeout=10)
        expected = {
            str(write_file(root / "P1" / "new.h5")),  # an existing directory
            str(write_file(root / "P2" / "a.h5")),  # a new one
            str(write_file(root / "P3" / "x" / "y" / "z" / "deep.h5")),  # several levels
            str(write_file(root / "P1" / "sub" / "b.h5")),  # a new one in an existing one
        }
        assert handler.wait(lambda events: created(events) >= expected, timeout=10)
        ticks = observer.ticks
        assert observer.wait_ticks(ticks + 3, timeout=10)
    finally:
        observer.stop()
        observer.join(10)
    assert created(handler.events) == expected  # old.h5 is recorded: never reported
    assert dirs_created(handler.events) == {
        str(root / p) for p in ("P2", "P3", "P3/x", "P3/x/y", "P3/x/y/z", "P1/sub")
    }


def test_renames_deletions_and_recreated_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = write_file(root / "P1" / "a.h5")
    write_file(root / "P2" / "gone.h5")
    counting = Counting()
    counting.recorded.add(str(a))
    emitter, drain = make_emitter(root, counting)
    emitter.baseline()
    # Same entry count, another name: the listing's name digest tells them apart.
    os.rename(a, root / "P1" / "renamed.h5")
    (root / "P2" / "gone.h5").unlink()
    (root / "P2").rmdir()
    emitter.tick()
    assert created(drain()) == {str(root / "P1" / "renamed.h5")}
    assert emitter.directories == 2  # root, P1
    write_file(root / "P2" / "again.h5")
    emitter.tick()
    events = drain()
    assert created(events) == {str(root / "P2" / "again.h5")}
    assert dirs_created(events) == {str(root / "P2")}


# -- files being written -------------------------------------------------------------------
@pytest.fixture
def poll_cfg(write_config: Callable[..., Path]) -> Config:
    def mutate(data: dict[str, Any]) -> None:
        pin_ids(data)
        data["submit"] = {"max_runs_in_flight": 100_000}  # no lifecycle ends runs here
        for beamline in data["beamlines"].values():
            beamline["watch"].update(poll=True, poll_interval_seconds=0.05, settle_seconds=0.5)

    return load_config(write_config(mutate))


@pytest.fixture
def polling(
    poll_cfg: Config, ledger: Ledger, fake: FakeBackend
) -> Iterator[Callable[[], WatchService]]:
    from dichroism_control.deploy_state import Deployment

    started: list[WatchService] = []

    def start() -> WatchService:
        launcher = Launcher(poll_cfg, ledger, fake, Deployment.resolve(poll_cfg))
        service = WatchService(poll_cfg, launcher, workers=2, rescan_seconds=3600)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(timeout=10)


def poller_of(service: WatchService, beamline: str = "bl402") -> DirectoryPollingObserver:
    watcher = service.watcher
    observer = watcher._observers[list(watcher.beamlines).index(beamline)]
    assert isinstance(observer, DirectoryPollingObserver)
    return observer


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_growing_file_is_followed_and_not_recorded_until_it_stops_changing(
    poll_cfg: Config, ledger: Ledger, fake: FakeBackend, polling: Callable[[], WatchService]
) -> None:
    root = Path(poll_cfg.beamlines["bl402"].watch.root)
    (root / "P1").mkdir()
    watcher = polling()
    poller = poller_of(watcher)
    path = root / "P1" / "growing.h5"
    rounds = 15
    with open(path, "wb") as handle:
        for i in range(rounds):
            handle.write(b"x" * 1000)
            handle.flush()
            # A known point: two complete polls after this write (~0.1 s, well under the
            # 0.5 s settle), the file has been seen; 15 rounds outlast settle three times.
            assert poller.wait_ticks(poller.ticks + 2, timeout=10)
            if i == 0:
                assert wait_for(lambda: str(path) in watcher.watcher.tracker)
            assert str(path) in watcher.watcher.tracker  # followed by the settle tracker...
            assert ledger.get_scan(str(path)) is None  # ...and not recorded
    assert wait_for(lambda: len(fake.requests) == 1)
    assert fake.requests[0].body["input"]["source"]["size"] == rounds * 1000


def test_watcher_polls_submits_once_and_restarts_without_resubmission(
    poll_cfg: Config, ledger: Ledger, fake: FakeBackend, polling: Callable[[], WatchService]
) -> None:
    root = Path(poll_cfg.beamlines["bl631"].watch.root)
    for i in range(5):
        write_file(root / "P0" / f"before_{i}.h5")
    watcher = polling()
    assert wait_for(lambda: len(fake.requests) == 5)  # the catch-up at start
    rels = ["P0/later.h5", "P1/new_dir.h5", "P2/a/b/deep.h5"]
    for rel in rels:
        write_file(root / rel)
    assert wait_for(lambda: len(fake.requests) == 8)
    watcher.stop(timeout=10)
    again = polling()
    poller = poller_of(again, "bl631")
    assert poller.wait_ticks(poller.ticks + 3, timeout=10)
    # Nothing followed and nothing new: no recorded scan was reported again.
    assert len(again.watcher.tracker) == 0 and again.stats.detected == 0
    assert len(fake.requests) == 8
    assert {r.label for r in fake.requests} >= {run_label("bl631", rel) for rel in rels}


# -- coarse directory mtimes ---------------------------------------------------------------
def add_keeping_mtime(directory: Path, name: str) -> Path:
    """Add a file and put the directory's mtime back: a change inside one tick of a coarse
    filesystem clock (or behind a stale NFS attribute cache) looks like this."""
    before = os.stat(directory)
    path = write_file(directory / name)
    os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(directory).st_mtime_ns == before.st_mtime_ns
    return path


def test_coarse_mtime_found_within_one_tick_by_the_racy_rule(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_file(root / "P1" / "a.h5")  # P1's mtime is now: its listing is racy
    counting = Counting()
    emitter, drain = make_emitter(root, counting, racy_seconds=60)
    emitter.baseline()
    b = add_keeping_mtime(root / "P1", "b.h5")
    emitter.tick()
    assert str(b) in created(drain())


def test_coarse_mtime_missed_by_mtimes_is_found_by_the_spread_rescan(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for i in range(20):
        write_file(root / f"P{i:02d}" / "a.h5")
    counting = Counting()
    counting.recorded.update(str(root / f"P{i:02d}" / "a.h5") for i in range(20))
    now = [0.0]
    emitter, drain = make_emitter(
        root, counting, racy_seconds=0, rescan_seconds=10.0, interval=1.0, clock=lambda: now[0]
    )
    emitter.baseline()
    b = add_keeping_mtime(root / "P07", "b.h5")
    # The mtime rule alone cannot see it (no racy window here): nine ticks, nothing.
    for _ in range(9):
        now[0] += 1.0
        emitter.tick()
    assert drain() == [] and emitter.rescanned == 0
    # The rescan pass starts at 10 s and re-lists 21 directories over ~10 ticks: at most
    # ceil(21 / 10) = 3 per tick, so it never spikes, and every directory once.
    per_tick = []
    found_at = None
    for tick in range(10):
        now[0] += 1.0
        counting.reset()
        emitter.tick()
        per_tick.append(len(counting.listings))
        if str(b) in created(drain()):
            found_at = tick
    assert found_at is not None
    assert max(per_tick) <= 3 and emitter.rescanned == 21


# -- what is never entered -----------------------------------------------------------------
def test_ignored_directories_and_directory_symlinks_are_never_entered(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    write_file(outside / "secret.h5")
    write_file(root / ".hidden" / "x.h5")
    write_file(root / "P1" / "keep.h5")
    os.symlink(outside, root / "P1" / "link")
    counting = Counting()
    emitter, drain = make_emitter(root, counting, ignore=[".*", "*.part"], racy_seconds=60)
    emitter.baseline()
    write_file(root / ".hidden" / "y.h5")
    write_file(root / ".new" / "z.h5")  # a new ignored directory
    write_file(outside / "more.h5")
    write_file(root / "P1" / "scan.h5.part")
    write_file(root / "P1" / "scan.h5")
    for _ in range(3):
        emitter.tick()
    entered = set(counting.listings)
    assert entered == {str(root), str(root / "P1")}
    reported = created(drain())
    # The symlink itself is reported as a file (routing refuses it: it leaves the root).
    assert reported == {str(root / "P1" / p) for p in ("keep.h5", "link", "scan.h5")}


# -- cost ----------------------------------------------------------------------------------
def test_an_idle_poll_costs_one_stat_per_directory_and_no_listing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in range(50):
        for f in range(20):
            write_file(root / f"P{d % 5}" / f"run{d:02d}" / f"scan_{f:02d}.h5", b"x")
    directories = [root, *(p for p in root.rglob("*") if p.is_dir())]
    for directory in directories:
        age(directory)
    assert len(directories) == 56
    counting = Counting()
    emitter, drain = make_emitter(root, counting, rescan_seconds=100.0, interval=1.0)
    emitter.baseline()
    assert emitter.directories == 56
    counting.reset()
    for _ in range(5):
        emitter.tick()
    # 1000 files, 56 directories: stats follow directories; the spread rescan lists at
    # most ceil(56 / 100) = 1 directory a tick (not started yet here: clock < 100 s).
    assert len(counting.stats) == 5 * 56
    assert counting.listings == [] and counting.lookups == []
    assert drain() == []


def test_racy_relistings_ask_the_ledger_only_when_names_changed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_file(root / "P1" / "a.h5")
    counting = Counting()
    emitter, drain = make_emitter(root, counting, racy_seconds=60)
    emitter.baseline()
    counting.reset()
    for _ in range(3):
        emitter.tick()
    assert len(counting.listings) == 3 * 2  # root and P1 are racy: listed every tick
    assert counting.lookups == []  # same names as the baseline: nothing to ask
    write_file(root / "P1" / "b.h5")
    emitter.tick()
    assert [sorted(paths) for paths in counting.lookups] == [
        [str(root / "P1" / "a.h5"), str(root / "P1" / "b.h5")]
    ]
    assert created(drain()) == {str(root / "P1" / "a.h5"), str(root / "P1" / "b.h5")}


def test_the_racy_window_closes_with_the_default_setting(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_file(root / "P1" / "a.h5")
    age(root, 7200)
    age(root / "P1", 3600)
    mtime = os.stat(root / "P1").st_mtime_ns
    wall = [mtime + 10**9]  # listed 1 s after its last change: within RACY_SECONDS (3 s)
    counting = Counting()
    emitter, drain = make_emitter(root, counting, wall_ns=lambda: wall[0])
    emitter.baseline()
    counting.reset()
    emitter.tick()
    assert counting.listings == [str(root / "P1")]  # racy: listed again
    wall[0] = mtime + 4 * 10**9
    emitter.tick()  # listed once more, now trusted
    counting.reset()
    for _ in range(3):
        emitter.tick()
    assert counting.listings == []  # back to one stat per directory
    assert drain() == []


def test_a_root_that_vanishes_and_comes_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_file(root / "P1" / "a.h5")
    counting = Counting()
    emitter, drain = make_emitter(root, counting)
    emitter.baseline()
    (root / "P1" / "a.h5").unlink()
    (root / "P1").rmdir()
    root.rmdir()
    emitter.tick()
    assert emitter.directories == 0
    emitter.tick()  # still gone: nothing to do, nothing raised
    back = write_file(root / "P2" / "b.h5")
    emitter.tick()
    events = drain()
    assert created(events) == {str(back)}
    assert dirs_created(events) == {str(root), str(root / "P2")}


# -- the catch-up streams --------------------------------------------------------------------
def test_catch_up_works_in_bounded_chunks(
    poll_cfg: Config,
    ledger: Ledger,
    fake: FakeBackend,
    polling: Callable[[], WatchService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = Path(poll_cfg.beamlines["bl402"].watch.root)
    for i in range(30):
        write_file(root / f"P{i % 3}" / f"old_{i:02d}.h5")
        age(root / f"P{i % 3}" / f"old_{i:02d}.h5")
    monkeypatch.setattr(watcher_module, "_CATCH_UP_CHUNK", 7)
    asked: list[int] = []
    recorded: list[int] = []
    original_stale = watcher_module.stale_paths
    original_record = intake_module.record_versions

    def stale_paths(ledger: Ledger, stats: dict[str, Any]) -> set[str]:
        asked.append(len(stats))
        return original_stale(ledger, stats)

    def record_versions(ledger: Ledger, seen: list[Any], **kwargs: Any) -> Any:
        recorded.append(len(seen))
        return original_record(ledger, seen, **kwargs)

    monkeypatch.setattr(watcher_module, "stale_paths", stale_paths)
    monkeypatch.setattr(intake_module, "stale_paths", stale_paths)
    monkeypatch.setattr(intake_module, "record_versions", record_versions)
    polling()
    assert wait_for(lambda: len(fake.requests) == 30)
    # The catch-up's look-ups and records come 7 paths at a time (the poller's own look-ups
    # are per directory: 10 files each here).
    assert max(asked) <= 10 and sum(asked) >= 30
    assert max(recorded) <= 7 and sum(recorded) == 30


def test_a_file_rewritten_in_place_is_found_by_the_rescan_as_a_new_version(
    poll_cfg: Config, ledger: Ledger, fake: FakeBackend
) -> None:
    """A rewrite in place leaves the directory's mtime alone; the spread rescan compares each
    file with its recorded version and reports it, and the watcher records version 2."""
    from dichroism_control.deploy_state import Deployment

    root = Path(poll_cfg.beamlines["bl402"].watch.root)
    path = write_file(root / "P1" / "scan.h5", b"first content")
    service = WatchService(
        poll_cfg,
        Launcher(poll_cfg, ledger, fake, Deployment.resolve(poll_cfg)),
        workers=2,
        rescan_seconds=1.0,
    )
    service.start()
    try:
        assert wait_for(lambda: len(fake.requests) == 1)
        directory_mtime = (root / "P1").stat().st_mtime_ns
        with open(path, "r+b") as handle:  # in place: no entry of the directory changes
            handle.write(b"second content, longer")
        assert (root / "P1").stat().st_mtime_ns == directory_mtime

        def versions() -> list[tuple[int, str, bool]]:
            rows = ledger.query(
                "SELECT version, state, superseded_at FROM scans WHERE path = ? ORDER BY version",
                (str(path),),
            )
            return [(r["version"], r["state"], r["superseded_at"] is not None) for r in rows]

        assert wait_for(lambda: len(versions()) == 2, timeout=15)
    finally:
        service.stop(timeout=10)
    # Version 2 waits while version 1's run is in flight (two runs must not race for one
    # CFS path); the lifecycle retires version 1 when that run ends.
    assert versions() == [(1, "submitted", True), (2, "detected", False)]
    assert [r.label for r in fake.requests] == ["bl402 P1/scan.h5"]
