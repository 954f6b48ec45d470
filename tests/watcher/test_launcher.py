"""The launcher on real files with the in-memory FakeBackend: bodies, labels, exactly once."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.backend import RunRequest
from dichroism_control.config import Config
from dichroism_control.errors import PermanentBackendError, TransientBackendError
from dichroism_control.launcher import Launcher, run_label
from dichroism_control.ledger import Ledger
from dichroism_control.routing import RouteError
from tests.conftest import GROUP, IDS
from tests.fakes import FakeBackend
from tests.watcher.conftest import FLOW_ID, FUNCTION_ID, Clock, deployed_flows, write_file


def root(cfg: Config, beamline: str = "bl402") -> Path:
    return Path(cfg.beamlines[beamline].watch.root)


def test_body_label_tags_roles(
    cfg: Config,
    ledger: Ledger,
    fake: FakeBackend,
    clock: Clock,
    make_launcher: Callable[..., Launcher],
) -> None:
    path = write_file(root(cfg) / "P123" / "scan_001.h5", b"x" * 42)
    os.utime(path, ns=(1_790_000_000_500_000_000, 1_790_000_000_500_000_000))
    launcher = make_launcher(fake, clock=clock)
    assert launcher.detect(str(path)) is not None
    [outcome] = launcher.drain()
    assert outcome.state == "submitted"
    [request] = fake.requests
    cfs_root = cfg.globus.endpoints["bl402-nersc_alsdev_raw"].root_path
    assert request.flow_id == FLOW_ID
    assert request.body == {
        "input": {
            "beamline": "bl402",
            "source": {
                "collection_id": IDS["bl402_dtn"],
                "path": str(path),
                "size": 42,
                "mtime": "2026-09-21 14:13:20+00:00",
                "checksum": "6ce59ad23cb43af476f04875925e42a6",
                "version": 1,
            },
            "destination": {
                "collection_id": IDS["bl402_cfs"],
                "path": f"{cfs_root}/P123/scan_001.h5",
            },
            # The clock's now (1 800 000 000) + the TransferToCFS WaitTime (172 800 s).
            "deadline": "2027-01-17T08:00:00+00:00",
            "scicat": {
                "endpoint_id": IDS["scicat"],
                "function_id": FUNCTION_ID,
                "proposal": "P123",
                "metadata": {
                    "instrument_id": "4.0.2",
                    "owner_group": "als-4.0.2",
                    "access_groups": ["als-dichroism"],
                    "owner": "ALS",
                    "contact_email": "als-data@lbl.gov",
                    "principal_investigator": "unknown",
                },
            },
        }
    }
    assert request.label == "bl402 P123/scan_001.h5"
    assert request.tags == ["dichroism", "bl402", "new_file"]
    assert request.run_monitors == [GROUP] and request.run_managers == [GROUP]
    assert request.notify_on == ["INACTIVE", "FAILED"]
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "submitted" and scan.run_id == outcome.run_id
    assert scan.label == request.label and scan.attempts == 1


def test_long_names_are_shortened_in_the_middle_deterministically() -> None:
    a = "P1/" + "a" * 90 + "X" + "b" * 109 + ".h5"
    b = "P1/" + "a" * 90 + "Y" + "b" * 109 + ".h5"
    label_a, label_b = run_label("bl402", a), run_label("bl402", b)
    assert len(label_a) <= 128 and len(label_b) <= 128
    assert "…" in label_a and label_a.startswith("bl402 P1/aaa") and label_a.endswith("bbb.h5")
    assert label_a == run_label("bl402", a)
    assert label_a != label_b  # the cut carries a digest: recovery never confuses them
    assert run_label("bl402", "P1/short.h5") == "bl402 P1/short.h5"


@pytest.mark.parametrize(
    "name",
    ["with spaces in name.h5", "échantillon_試料_αβγ.h5", "n" * 200 + ".h5", "it's (1) [x] #2.h5"],
)
def test_odd_names(
    cfg: Config,
    ledger: Ledger,
    fake: FakeBackend,
    make_launcher: Callable[..., Launcher],
    name: str,
) -> None:
    path = write_file(root(cfg) / "P 1" / name)
    launcher = make_launcher(fake)
    launcher.detect(str(path))
    [outcome] = launcher.drain()
    assert outcome.state == "submitted", outcome.error
    [request] = fake.requests
    assert request.body["input"]["source"]["path"] == str(path)
    assert len(request.label) <= 128
    assert request.label == run_label("bl402", f"P 1/{name}")


def test_paths_escaping_the_root_are_refused(
    cfg: Config, tmp_path: Path, fake: FakeBackend, make_launcher: Callable[..., Launcher]
) -> None:
    outside = write_file(tmp_path / "elsewhere" / "secret.h5")
    link = root(cfg) / "P1" / "link.h5"
    link.parent.mkdir(parents=True)
    os.symlink(outside, link)
    launcher = make_launcher(fake)
    with pytest.raises(RouteError, match="outside the watch root"):
        launcher.detect(str(link))
    with pytest.raises(RouteError, match="outside the watch root"):
        launcher.detect(str(outside), beamline="bl402")
    with pytest.raises(RouteError, match="outside the watch root"):
        launcher.detect(str(root(cfg) / "P1" / ".." / ".." / "x.h5"), beamline="bl402")
    assert fake.requests == []


def test_crash_after_run_started_adopts_instead_of_resubmitting(
    cfg: Config, ledger: Ledger, fake: FakeBackend, make_launcher: Callable[..., Launcher]
) -> None:
    paths = [write_file(root(cfg) / "P1" / f"s{i}.h5") for i in range(3)]
    launcher = make_launcher(fake)
    for path in paths:
        launcher.detect(str(path))
    claims = launcher.claim(limit=10)
    assert {ledger.get_scan(str(p)).state for p in paths} == {"submitting"}  # type: ignore[union-attr]
    # The process "dies" after run_flow reached the service for the first two scans.
    for claim in claims[:2]:
        route = launcher.route(claim.scan.path)
        fake.run_flow(launcher.request_for(route, claim.scan))
    restarted = make_launcher(fake)
    assert restarted.recover() == {"adopted": 2, "requeued": 1, "unresolved": 0}
    restarted.drain()
    assert len(fake.requests) == 3  # two from before the crash, one resubmission
    assert sorted(r.label for r in fake.requests) == sorted(c.label for c in claims)
    for path in paths:
        scan = ledger.get_scan(str(path))
        assert scan is not None and scan.state == "submitted" and scan.run_id in fake.runs


class StartsThenFails(FakeBackend):
    """The service starts the run, then the answer is lost (a 502 from a proxy)."""

    def __init__(self, failures: int, cfg: Config) -> None:
        super().__init__(flows=deployed_flows(cfg))
        self.failures = failures

    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        run = super().run_flow(request)
        if self.failures:
            self.failures -= 1
            raise TransientBackendError("502 BAD_GATEWAY: upstream", http_status=502)
        return run


def test_ambiguous_error_is_looked_up_before_a_retry(
    cfg: Config, ledger: Ledger, clock: Clock, make_launcher: Callable[..., Launcher]
) -> None:
    backend = StartsThenFails(failures=1, cfg=cfg)
    path = write_file(root(cfg) / "P1" / "s.h5")
    launcher = make_launcher(backend, clock=clock, rng=lambda: 1.0)
    launcher.detect(str(path))
    outcomes = launcher.drain(sleep=clock.sleep)
    assert [o.state for o in outcomes] == ["detected", "submitted"]
    assert outcomes[1].adopted
    assert len(backend.requests) == 1


def test_503s_then_recovery_honours_retry_after(
    cfg: Config,
    ledger: Ledger,
    fake: FakeBackend,
    clock: Clock,
    make_launcher: Callable[..., Launcher],
) -> None:
    fake.fail_next = [
        TransientBackendError("503 SERVICE_UNAVAILABLE", retry_after=7.0, http_status=503)
        for _ in range(3)
    ]
    paths = [write_file(root(cfg) / "P1" / f"s{i}.h5") for i in range(5)]
    launcher = make_launcher(fake, clock=clock, rng=lambda: 0.0)
    for path in paths:
        launcher.detect(str(path))
    outcomes = launcher.drain(sleep=clock.sleep)
    assert sum(o.state == "detected" for o in outcomes) == 3
    assert len(fake.requests) == 5 and len({r.label for r in fake.requests}) == 5
    assert clock.slept and min(clock.slept) >= 7.0  # jitter 0, so Retry-After decided
    assert all(ledger.get_scan(str(p)).state == "submitted" for p in paths)  # type: ignore[union-attr]


def test_backoff_is_exponential_capped_and_gives_up(
    cfg: Config,
    ledger: Ledger,
    fake: FakeBackend,
    clock: Clock,
    make_launcher: Callable[..., Launcher],
) -> None:
    attempts = cfg.submit.max_attempts
    fake.fail_next = [TransientBackendError("429 TOO_MANY", http_status=429)] * attempts
    path = write_file(root(cfg) / "P1" / "s.h5")
    launcher = make_launcher(fake, clock=clock, rng=lambda: 1.0)
    launcher.detect(str(path))
    outcomes = launcher.drain(sleep=clock.sleep)
    assert outcomes[-1].state == "failed"
    base, cap = cfg.submit.backoff_base_seconds, cfg.submit.backoff_max_seconds
    assert clock.slept == [min(cap, base * 2**i) for i in range(attempts - 1)]
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "failed" and scan.failed_step == "submit"
    assert f"gave up after {attempts} attempts" in (scan.last_error or "")


class RejectsSome(FakeBackend):
    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        if "bad" in request.label:
            raise PermanentBackendError("403 MISSING_SCOPE: consent required", http_status=403)
        return super().run_flow(request)


def test_permanent_errors_fail_loudly_without_blocking_others(
    cfg: Config,
    ledger: Ledger,
    make_launcher: Callable[..., Launcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = RejectsSome(flows=deployed_flows(cfg))
    good = [write_file(root(cfg) / "P1" / f"good{i}.h5") for i in range(3)]
    bad = write_file(root(cfg) / "P1" / "bad.h5")
    launcher = make_launcher(backend)
    for path in [bad, *good]:
        launcher.detect(str(path))
    launcher.drain()
    assert len(backend.requests) == 3
    scan = ledger.get_scan(str(bad))
    assert scan is not None and scan.state == "failed" and scan.failed_step == "submit"
    assert scan.last_error == "403 MISSING_SCOPE: consent required" and scan.attempts == 1
    assert any(r.levelname == "ERROR" and "bad.h5" in r.getMessage() for r in caplog.records)
    [failure] = ledger.recent_failures()
    assert failure["last_error"].startswith("403")


def test_input_is_validated_locally_before_sending(
    write_config: Callable[..., Path], fake: FakeBackend
) -> None:
    from dichroism_control.config import load_config
    from dichroism_control.deploy_state import Deployment
    from tests.watcher.conftest import pin_ids

    def long_proposal(data: dict[str, Any]) -> None:
        pin_ids(data)
        data["beamlines"]["bl402"]["scicat"]["proposal_depth"] = 1

    cfg = load_config(write_config(long_proposal))
    ledger = Ledger(cfg.ledger_path)
    path = write_file(Path(cfg.beamlines["bl402"].watch.root) / ("P" * 200) / "s.h5")
    launcher = Launcher(cfg, ledger, fake, Deployment.resolve(cfg))
    launcher.detect(str(path))
    [outcome] = launcher.drain()
    assert outcome.state == "failed" and "input_schema" in (outcome.error or "")
    assert fake.requests == []
    ledger.close()


def test_detect_is_idempotent(
    cfg: Config, fake: FakeBackend, make_launcher: Callable[..., Launcher]
) -> None:
    path = write_file(root(cfg) / "P1" / "s.h5")
    launcher = make_launcher(fake)
    assert launcher.detect(str(path)) is not None
    assert launcher.detect(str(path)) is None
    launcher.drain()
    assert launcher.detect(str(path)) is None
    assert launcher.drain() == [] and len(fake.requests) == 1
