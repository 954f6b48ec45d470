"""Alert digests: delivered through Apprise `json://` to a local HTTP server, never twice,
at most every interval, with the target's URL (and its token) never shown."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.config import Config, load_config
from dichroism_control.ledger import Ledger
from dichroism_control.notify import Notifier, mask_url
from tests.test_health import NOW, add_scan, alive

TOKEN = "s3cr3t-webhook-token"


class Receiver:
    """A local HTTP endpoint standing in for a chat/webhook service."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                receiver.posts.append({"path": self.path, "body": body})
                self.send_response(receiver.status)
                self.end_headers()
                receiver.got.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        # The token rides in the path, as it does for most webhook services.
        return f"json://127.0.0.1:{self.port}/hooks/{TOKEN}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def notified_config(
    write_config: Callable[..., Path], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Config:
    monkeypatch.setenv("DICHROISM_NOTIFY_URL", receiver.url)

    def mutate(data: dict[str, Any]) -> None:
        data["notify"] = {"urls": ["${DICHROISM_NOTIFY_URL}"], "interval_minutes": 30}

    return load_config(write_config(mutate))


class Clock:
    """The notifier's clock; the watch service stays alive meanwhile (its heartbeat and
    lifecycle passes follow the clock), so only the items under test are news."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.now = NOW

    def __call__(self) -> float:
        alive(self.ledger, now=self.now)
        return self.now


def failing_world(config: Config) -> Ledger:
    ledger = Ledger(config.ledger_path)
    alive(ledger)
    for i in range(3):
        add_scan(
            ledger,
            f"P1/bad_{i}.h5",
            "failed",
            failed_step="new_file",
            attempts=3,
            last_error="after 3 attempt(s): TransferFailed: PERMISSION_DENIED: Permission denied"
            " — next: grant the service identity access",
        )
    add_scan(ledger, "P1/stuck.h5", "detected", created=NOW - 7200)
    with ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO prune_timers (batch, beamline, location, day, label, run_at, files,"
            " state, run_id, last_error, created_at, updated_at) VALUES ('bl402/cfs/2026-03-01',"
            " 'bl402', 'cfs', '2026-03-01', 'bl402 prune cfs 2026-03-01', 0, 12, 'failed', 'r9',"
            " 'VerificationFailed: 1 of 12 file(s) not verified under /hpss: P1/x.h5: missing',"
            " 0, ?)",
            (NOW,),
        )
    ledger.set_meta(
        "last_unclean_restart",
        {"at": NOW - 60, "previous_heartbeat_at": NOW - 400, "previous_pid": 4242},
    )
    ledger.set_meta(
        "last_flight_check", {"verdict": "failed", "at": NOW - 30, "detail": "stat: NotFound"}
    )
    return ledger


def test_one_digest_with_every_kind_of_item_then_nothing_twice(
    notified_config: Config, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = failing_world(notified_config)
    clock = Clock(ledger)
    caplog.set_level(logging.DEBUG)
    notifier = Notifier(notified_config, ledger, clock=clock, host="bl402-acq")
    sent = notifier.tick()
    assert sent is not None and sent["failed"] == []
    (post,) = receiver.posts
    assert post["path"] == f"/hooks/{TOKEN}"
    body = post["body"]
    assert body["title"] == "dichroism: 7 new item(s) on bl402-acq"
    message = body["message"]
    assert "Scans failed permanently (3):" in message
    assert (
        "  - bl402 P1/bad_0.h5 [new_file, 3 attempt(s)]: TransferFailed: PERMISSION_DENIED:"
        in message
    )
    assert "Prune refusals (1):" in message and "12 file(s) kept: VerificationFailed" in message
    assert "Flight check (1):" in message and "stat: NotFound" in message
    assert "Backlog (1):" in message and "bl402: 1 scan(s) detected, oldest 2 h 00 min" in message
    assert "watch restarted after a crash of pid 4242 (silent 5 min before it)" in message
    # One digest, never one message per scan; and the token never reaches a log.
    assert TOKEN not in caplog.text

    # A new failure within the interval waits for it, across a restart too (a new
    # Notifier on the same ledger); then only the news goes out, once.
    first_at = clock.now
    clock.now = first_at + 10 * 60
    add_scan(
        ledger,
        "P2/new_bad.h5",
        "failed",
        failed_step="submit",
        attempts=8,
        last_error="gave up after 8 attempts: 503",
        updated_at=clock.now,
    )
    assert notifier.tick() is None
    restarted = Notifier(notified_config, ledger, clock=clock, host="bl402-acq")
    clock.now = first_at + 29 * 60
    assert restarted.tick() is None
    assert len(receiver.posts) == 1
    clock.now = first_at + 30 * 60
    second = restarted.tick()
    assert second is not None and second["items"] == 1
    assert receiver.posts[-1]["body"]["title"] == "dichroism: 1 new item(s) on bl402-acq"
    assert "P2/new_bad.h5 [submit, 8 attempt(s)]" in receiver.posts[-1]["body"]["message"]
    # Due again later, but nothing new: nothing is sent.
    clock.now = first_at + 90 * 60
    assert restarted.tick() is None and len(receiver.posts) == 2


def test_a_cleared_condition_is_sent_again_when_it_returns(
    notified_config: Config, receiver: Receiver
) -> None:
    ledger = Ledger(notified_config.ledger_path)
    alive(ledger)
    stuck = add_scan(ledger, "P1/stuck.h5", "detected", created=NOW - 7200)
    clock = Clock(ledger)
    notifier = Notifier(notified_config, ledger, clock=clock)
    assert notifier.tick() is not None
    ledger.update_scan(stuck, state="submitted", submit_started_at=NOW)
    clock.now += 31 * 60
    assert notifier.tick() is None  # cleared: nothing to say, the key is forgotten
    ledger.update_scan(stuck, state="detected")
    clock.now += 31 * 60
    assert notifier.tick() is not None
    assert [p["body"]["title"].split(": ")[1] for p in receiver.posts] == [
        "1 new item(s) on " + notifier.host
    ] * 2


def test_an_undelivered_digest_is_kept_and_the_url_never_logged(
    notified_config: Config, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = failing_world(notified_config)
    receiver.status = 500
    clock = Clock(ledger)
    caplog.set_level(logging.DEBUG)
    notifier = Notifier(notified_config, ledger, clock=clock)
    assert notifier.tick() is None
    assert len(receiver.posts) == 1  # tried once
    assert "alert digest not delivered to #1 json://****" in caplog.text
    assert "POST /****/**** HTTP/1.1" in caplog.text  # urllib3's DEBUG line, redacted
    assert TOKEN not in caplog.text
    assert ledger.query("SELECT COUNT(*) AS n FROM notified")[0]["n"] == 0
    receiver.status = 200
    sent = notifier.tick()  # nothing was delivered: no interval to wait for
    assert sent is not None and sent["items"] == 7


def test_mask_url_shows_only_the_scheme() -> None:
    assert mask_url("slack://TokenA/TokenB/TokenC") == "slack://****"
    assert mask_url("mailtos://user:password@example.org") == "mailtos://****"


def test_notify_urls_come_from_the_environment_and_errors_never_echo_them(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dichroism_control.errors import ConfigError

    monkeypatch.setenv("DICHROISM_NOTIFY_URL", f"not-a-url-{TOKEN}")

    def mutate(data: dict[str, Any]) -> None:
        data["notify"] = {"urls": ["${DICHROISM_NOTIFY_URL}", "${OPTIONAL_SECOND_URL:-}"]}

    with pytest.raises(ConfigError, match=r"^notify\.urls: entry 0 is not an Apprise URL") as exc:
        load_config(write_config(mutate))
    assert TOKEN not in str(exc.value)
    monkeypatch.setenv("DICHROISM_NOTIFY_URL", f"json://127.0.0.1:9/{TOKEN}")
    config = load_config(write_config(mutate))
    assert config.notify.urls == [f"json://127.0.0.1:9/{TOKEN}"]  # the empty optional one dropped


def test_files_a_prune_kept_are_told_once_each_time(tmp_path: Path) -> None:
    from dichroism_control.ledger import Ledger
    from dichroism_control.notify import prune_kept_files

    ledger = Ledger(tmp_path / "ledger.sqlite")
    with ledger.transaction() as conn:
        for rel, state, kept, error in [
            ("P1/kept.h5", "transferred", 1, "kept by prune compute_dtn: checksum_differs"),
            ("P1/person.h5", "failed", 3, "kept by prune compute_dtn: changed (3 times)"),
            ("P1/fine.h5", "transferred", 0, None),
        ]:
            conn.execute(
                "INSERT INTO scans (beamline, path, rel, size, mtime, state, kept, last_error,"
                " created_at, updated_at) VALUES ('bl402', ?, ?, 1, 0, ?, ?, ?, 0, 0)",
                (f"/x/{rel}", rel, state, kept, error),
            )
    assert [(f["path"], f["key"].split(":")[-1]) for f in prune_kept_files(ledger)] == [
        ("P1/kept.h5", "1")
    ]
