"""LocalBackend behaviour the callers rely on: documents, errors, timers, cancel, crashes."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.backend import FlowSpec, RunRequest
from dichroism_control.config import Config
from dichroism_control.errors import PermanentBackendError
from dichroism_control.local.backend import LocalBackend
from dichroism_control.local.engine import ActionContext
from dichroism_control.local.providers import TRANSFER_URLS, TransferProvider, copy_file
from dichroism_control.local.store import dumps

HELLO = {
    "StartAt": "Hello",
    "States": {
        "Hello": {
            "Type": "Action",
            "ActionUrl": "https://actions.globus.org/hello_world",
            "Parameters": {"echo_string.$": "$.echo", "sleep_time.$": "$.sleep"},
            "ResultPath": "$.hello",
            "End": True,
        }
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"echo": {"type": "string"}, "sleep": {"type": "number"}},
    "required": ["echo", "sleep"],
    "additionalProperties": False,
}


@pytest.fixture
def backend(e2e_config: Config) -> Any:
    backend = LocalBackend(e2e_config)
    yield backend
    backend.close()


def _hello_flow(backend: LocalBackend) -> str:
    return str(backend.create_flow(FlowSpec("hello", HELLO, SCHEMA))["id"])


def _request(flow_id: str, sleep: float = 0, label: str = "hi") -> RunRequest:
    return RunRequest(flow_id, {"echo": "hi", "sleep": sleep}, label, ["t"], run_monitors=[])


def test_flow_documents_and_validation(backend: LocalBackend) -> None:
    flow_id = _hello_flow(backend)
    flow = backend.get_flow(flow_id)
    assert flow is not None and flow["definition"] == HELLO and flow["title"] == "hello"
    assert backend.get_flow("2f0b1a58-0000-4000-8000-000000000000") is None
    assert backend.validate_flow(HELLO, SCHEMA) == []
    bad = {
        "StartAt": "X",
        "States": {
            "X": {"Type": "Action", "ActionUrl": "https://nope/x", "Parameters": {}, "End": True}
        },
    }
    problems = backend.validate_flow(bad, {})
    assert any("https://nope/x" in p for p in problems)
    with pytest.raises(PermanentBackendError, match="https://nope/x"):
        backend.create_flow(FlowSpec("bad", bad, {}))
    updated = backend.update_flow(flow_id, FlowSpec("hello 2", HELLO, SCHEMA))
    assert updated["title"] == "hello 2"
    # functions are immutable: a new id per registration
    a = backend.register_function(name="f", source="def f():\n    return 1\n", description="")
    b = backend.register_function(name="f", source="def f():\n    return 1\n", description="")
    assert a != b and backend.get_function(a) == ("f", "def f():\n    return 1\n")


def test_run_errors_are_service_shaped(backend: LocalBackend) -> None:
    flow_id = _hello_flow(backend)
    with pytest.raises(PermanentBackendError) as caught:
        backend.run_flow(RunRequest(flow_id, {"echo": 3, "sleep": 0}, "x", []))
    assert caught.value.http_status == 400 and "echo" in str(caught.value)
    with pytest.raises(PermanentBackendError) as caught:
        backend.run_flow(_request("2f0b1a58-0000-4000-8000-000000000000"))
    assert caught.value.http_status == 404
    with pytest.raises(PermanentBackendError) as caught:
        backend.get_run("nope")
    assert caught.value.http_status == 404


def test_runs_listed_newest_first_and_filtered(backend: LocalBackend) -> None:
    flow_a, flow_b = _hello_flow(backend), _hello_flow(backend)
    ids = [
        backend.run_flow(_request(f, label=f"r{i}"))["run_id"]
        for i, f in enumerate([flow_a, flow_b, flow_a])
    ]
    for run_id in ids:
        assert backend.wait(run_id)["status"] == "SUCCEEDED"
    listed = [r["run_id"] for r in backend.iter_runs(flow_ids=[flow_a])]
    assert listed == [ids[2], ids[0]]
    run = backend.get_run(ids[1])
    assert run["details"]["output"]["hello"]["details"]["hello"] == "hi"
    assert run["label"] == "r1" and run["tags"] == ["t"] and run["flow_title"] == "hello"


def test_cancel_ends_the_run(backend: LocalBackend) -> None:
    """A canceled run ends FAILED with details.code FlowCanceled, as Flows reports it (SDK
    fixture globus_sdk/testing/data/flows/cancel_run.py; globus-cli PR #834)."""
    run_id = backend.run_flow(_request(_hello_flow(backend), sleep=30))["run_id"]
    time.sleep(0.3)
    backend.cancel_run(run_id)
    run = backend.wait(run_id, timeout=10)
    assert run["status"] == "FAILED" and run["details"]["code"] == "FlowCanceled"


def test_timer_fires_exactly_once_across_backends(e2e_config: Config) -> None:
    """Timers as the service behaves (service_rules.timers): a new timer is "new" (SDK fixture
    timer/_common.py V2_FLOW_TIMER), listed "loaded" until it fires (V1_TIMER), then
    "ended" (timers.ts list filter_status) with its run in results (JobResult.resource_id);
    the run carries no label of ours (timers.ts FlowStartDocument has none); unknown or
    deleted timers answer 404."""
    first = LocalBackend(e2e_config, background=False)
    second = LocalBackend(e2e_config, background=False)
    try:
        flow_id = _hello_flow(first)
        past = datetime.now(UTC) - timedelta(seconds=1)
        timer = first.create_flow_timer(name="t1", run_at=past, request=_request(flow_id))
        assert timer["status"] == "new" and timer["next_run"] is not None
        assert timer["callback_body"]["body"] == {"echo": "hi", "sleep": 0}
        assert set(timer["callback_body"]) <= {"body", "run_monitors", "run_managers", "tags"}
        future = first.create_flow_timer(
            name="t2", run_at=datetime.now(UTC) + timedelta(hours=1), request=_request(flow_id)
        )
        started = first.fire_due_timers() + second.fire_due_timers() + first.fire_due_timers()
        assert len(started) == 1
        run = first.wait(started[0])
        assert run["status"] == "SUCCEEDED" and run["label"] is None and run["tags"] == ["t"]
        timers = {t["name"]: t for t in second.iter_timers()}
        assert timers["t1"]["status"] == "ended" and timers["t1"]["next_run"] is None
        assert timers["t1"]["results"]["data"][0]["resource_id"] == started[0]
        assert timers["t1"]["n_runs"] == 1 and timers["t1"]["n_errors"] == 0
        assert timers["t2"]["status"] == "loaded"
        second.delete_timer(future["job_id"])
        assert [t["name"] for t in first.iter_timers()] == ["t1"]
        with pytest.raises(PermanentBackendError, match="404") as refused:
            first.delete_timer(future["job_id"])
        assert refused.value.http_status == 404
        with pytest.raises(ValueError, match="timezone-aware"):
            first.create_flow_timer(name="naive", run_at=datetime.now(), request=_request(flow_id))
    finally:
        first.close()
        second.close()


def test_background_thread_fires_due_timers(backend: LocalBackend) -> None:
    flow_id = _hello_flow(backend)
    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    backend.create_flow_timer(name="soon", run_at=soon, request=_request(flow_id))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = backend.store.query("SELECT run_id FROM local_timers WHERE name = 'soon'")
        if rows[0]["run_id"]:
            break
        time.sleep(0.05)
    assert rows[0]["run_id"] and backend.wait(rows[0]["run_id"])["status"] == "SUCCEEDED"


def test_interrupted_runs_are_failed_on_next_start(e2e_config: Config) -> None:
    backend = LocalBackend(e2e_config, background=False)
    flow_id = _hello_flow(backend)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    owner = f"{dead.stdout.strip()}:1"
    backend.store.execute(
        "INSERT INTO local_runs (run_id, flow_id, flow_title, status, label, tags, request,"
        " body, details, start_time, start_ts, owner) VALUES"
        " ('r-dead', ?, 'hello', 'ACTIVE', 'l', '[]', '{}', '{}', ?, '2026-01-01T00:00:00+00:00',"
        " 1, ?)",
        (flow_id, dumps({"code": "ActionStarted"}), owner),
    )
    backend.close()
    again = LocalBackend(e2e_config, background=False)
    try:
        run = again.get_run("r-dead")
        assert run["status"] == "FAILED" and run["details"]["code"] == "FlowInterrupted"
        assert "interrupted" in run["details"]["description"]
    finally:
        again.close()


def test_unknown_collection_is_unable_to_run(e2e_config: Config, tmp_path: Path) -> None:
    from dichroism_control.local.engine import ActionUnableToRun

    provider = TransferProvider(e2e_config, "stat")
    ctx = ActionContext("r", None, "S", TRANSFER_URLS["stat"], 10, "User", {})
    with pytest.raises(ActionUnableToRun, match="unknown collection"):
        provider.run({"endpoint_id": "9e9e9e9e-0000-4000-8000-000000000000", "path": "/x"}, ctx)
    dtn = e2e_config.endpoint("bl402-compute-dtn").uuid
    missing = provider.run({"endpoint_id": dtn, "path": str(tmp_path / "none")}, ctx)
    assert missing.status == "SUCCEEDED" and missing.details["code"] == "NotFound"
    (tmp_path / "f").write_bytes(b"abc")
    found = provider.run({"endpoint_id": dtn, "path": str(tmp_path / "f")}, ctx)
    assert found.details["type"] == "file" and found.details["size"] == 3
    listing = TransferProvider(e2e_config, "ls").run(
        {"endpoint_id": dtn, "path": str(tmp_path)}, ctx
    )
    assert "f" in [e["name"] for e in listing.details["DATA"]]
    made = TransferProvider(e2e_config, "mkdir").run(
        {"endpoint_id": dtn, "path": str(tmp_path / "d")}, ctx
    )
    assert made.status == "SUCCEEDED" and (tmp_path / "d").is_dir()


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256", "MD5"])
def test_copy_file_verifies_and_is_atomic(tmp_path: Path, algorithm: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 5000)
    result = copy_file(src, tmp_path / "out" / "dst.bin", algorithm=algorithm)
    assert (tmp_path / "out" / "dst.bin").read_bytes() == src.read_bytes()
    assert result.bytes == src.stat().st_size
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dst.bin"]  # no temp left


@pytest.mark.parametrize("algorithm", ["CRC32", "ADLER32", "SHA256"])
@pytest.mark.parametrize("size", [0, 1, 3 * 4096 - 5, 5 * 4096, 9 * 4096 + 17])
def test_copy_file_across_chunks_and_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str, size: int
) -> None:
    import hashlib
    import zlib

    from dichroism_control.local.providers import verified_copy

    # tiny chunks/blocks: many chunks shared between the threads, sums combined
    monkeypatch.setattr(verified_copy, "COPY_CHUNK", 4096)
    monkeypatch.setattr(verified_copy, "COPY_BLOCK", 1000)
    data = bytes((i * 7 + i // 251) & 0xFF for i in range(size))
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    expected = {
        "CRC32": f"{zlib.crc32(data):08x}",
        "ADLER32": f"{zlib.adler32(data):08x}",
        "SHA256": hashlib.sha256(data).hexdigest(),
    }[algorithm]
    for verify in (True, False):
        result = copy_file(src, tmp_path / "dst.bin", algorithm=algorithm, verify=verify)
        assert result.checksum == expected
        assert (tmp_path / "dst.bin").read_bytes() == data


def test_checksum_combine_matches_zlib() -> None:
    import random
    import zlib

    from dichroism_control.local.providers.checksums import _adler32_combine, _crc32_combine

    rng = random.Random(6)
    for _ in range(50):
        a = rng.randbytes(rng.randrange(0, 3000))
        b = rng.randbytes(rng.randrange(0, 3000))
        assert _crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
        assert _adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256"])
def test_copy_file_corrupted_copy_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """A write that lands different bytes than it was given (the checksummed buffer) is
    caught by reading the copy back; the destination is left untouched."""
    import os

    from dichroism_control.local.providers import verified_copy

    monkeypatch.setattr(verified_copy, "COPY_CHUNK", 8192)
    monkeypatch.setattr(verified_copy, "COPY_BLOCK", 4096)
    real_pwrite = os.pwrite

    def corrupting_pwrite(fd: int, data: Any, offset: int) -> int:
        buf = bytearray(data)
        if offset <= 10_000 < offset + len(buf):
            buf[10_000 - offset] ^= 0x01  # one flipped bit in the copy only
        return real_pwrite(fd, buf, offset)

    monkeypatch.setattr(os, "pwrite", corrupting_pwrite)
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 200)
    dst = tmp_path / "out" / "dst.bin"
    dst.parent.mkdir()
    dst.write_bytes(b"old contents")
    with pytest.raises(verified_copy.ChecksumMismatch, match="checksum mismatch"):
        copy_file(src, dst, algorithm=algorithm)
    assert dst.read_bytes() == b"old contents"  # not replaced
    assert [p.name for p in dst.parent.iterdir()] == ["dst.bin"]  # temp removed
    # without verify the corruption goes unnoticed: the read-back is what catches it
    monkeypatch.setattr(os, "pwrite", corrupting_pwrite)
    copy_file(src, dst, algorithm=algorithm, verify=False)
    assert dst.read_bytes() != src.read_bytes()


def test_run_local_refuses_unknown_action_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dichroism_control.cli.main import app
    from dichroism_control.errors import DefinitionError

    monkeypatch.chdir(tmp_path)  # no ./config.yml: run-local needs none
    monkeypatch.delenv("DICHROISM_CONFIG", raising=False)

    flow = tmp_path / "flow.json"
    flow.write_text(
        '{"StartAt": "A", "States": {"A": {"Type": "Action", "ActionUrl": '
        '"https://example.org/no-such-provider", "Parameters": {}, "End": true}}}'
    )
    result = CliRunner().invoke(app, ["run-local", str(flow)])
    assert isinstance(result.exception, DefinitionError)
    assert "https://example.org/no-such-provider" in str(result.exception)
