"""The local Transfer action providers behave as Globus Transfer's do for what the flows
send (dichroism_control.local.service_rules.transfer; each test names its source)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.config import Config, load_config
from dichroism_control.local.engine import ActionContext, ActionStatus, ActionUnableToRun
from dichroism_control.local.providers import TRANSFER_URLS, TaskQueue, TransferProvider
from tests.conftest import IDS

SRC, DST = IDS["bl402_dtn"], IDS["bl402_cfs"]


@dataclass
class Collections:
    config: Config
    src: Path  # the local directory standing in for the source collection's "/"
    dst: Path

    def provider(self, op: str, queue: TaskQueue | None = None) -> TransferProvider:
        return TransferProvider(self.config, op, queue)


@pytest.fixture
def cols(write_config: Callable[..., Path], tmp_path: Path) -> Collections:
    src, dst = tmp_path / "src-collection", tmp_path / "dst-collection"
    src.mkdir()
    dst.mkdir()

    def mutate(data: dict[str, Any]) -> None:
        endpoints = data["globus"]["endpoints"]
        endpoints["bl402-compute-dtn"]["local_path"] = str(src)
        endpoints["bl402-nersc_alsdev_raw"]["local_path"] = str(dst)

    return Collections(load_config(write_config(mutate, backend="local")), src, dst)


def ctx(op: str, user: str = "urn:globus:auth:identity:alice") -> ActionContext:
    return ActionContext("run-1", None, "S", TRANSFER_URLS[op], 600, "User", {"user_id": user})


def finish(provider: TransferProvider, status: ActionStatus, timeout: float = 20) -> ActionStatus:
    """Poll a task as the engine does until it is SUCCEEDED or FAILED."""
    deadline = time.monotonic() + timeout
    while status.status not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, f"task never finished: {status.details}"
        time.sleep(0.01)
        status = provider.status(status.action_id)
    return status


def write(path: Path, data: bytes = b"scan data", mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def transfer_body(**extra: Any) -> dict[str, Any]:
    item = {"source_path": "/a/scan.h5", "destination_path": "/b/scan.h5"}
    item.update(extra.pop("item", {}))
    return {"source_endpoint": SRC, "destination_endpoint": DST, "DATA": [item], **extra}


# ------------------------------------------------------------------------- transfer


@pytest.mark.parametrize("level", [0, 1, 2, 3, "exists", "size", "mtime", "checksum"])
def test_sync_level_is_an_integer_0_to_3_names_are_sugar(cols: Collections, level: Any) -> None:
    """timers.ts TransferTaskDocument: sync_level?: 0 | 1 | 2 | 3; the names are the SDK's
    (transfer_data.py _sync_level_dict), accepted as well. The task document shows the int."""
    write(cols.src / "a/scan.h5")
    provider = cols.provider("transfer")
    done = finish(provider, provider.run(transfer_body(sync_level=level), ctx("transfer")))
    assert done.status == "SUCCEEDED" and done.details["sync_level"] in (0, 1, 2, 3)
    assert (cols.dst / "b/scan.h5").read_bytes() == b"scan data"


@pytest.mark.parametrize("level", [4, -1, "fast", True, 2.0])
def test_other_sync_levels_are_refused(cols: Collections, level: Any) -> None:
    """timers.ts TransferTaskDocument: only 0-3 (Transfer refuses others at submission)."""
    with pytest.raises(ActionUnableToRun, match="sync_level must be 0-3"):
        cols.provider("transfer").run(transfer_body(sync_level=level), ctx("transfer"))


def test_external_md5_checksum_verifies_the_source(cols: Collections) -> None:
    """transfer_data.py add_item: external_checksum is "Assumed to be an MD5 checksum unless
    checksum_algorithm is also given" and verifies source and destination."""
    write(cols.src / "a/scan.h5", b"the bytes")
    provider = cols.provider("transfer")
    body = transfer_body(item={"external_checksum": md5(b"the bytes")}, sync_level=3)
    done = finish(provider, provider.run(body, ctx("transfer")))
    assert done.status == "SUCCEEDED" and done.details["files_transferred"] == 1
    assert (cols.dst / "b/scan.h5").read_bytes() == b"the bytes"


def test_a_source_whose_md5_differs_fails_and_leaves_nothing(cols: Collections) -> None:
    """The SDK: with an external_checksum "a failure will cause the entire task to fail"; the
    task's fatal_error (docs.globus.org/api/transfer/task) carries Transfer's event code
    EXTERNAL_CHECKSUM_MISMATCH; the action is FAILED with the task document as details
    (docs.globus.org/api/transfer/action-providers/transfer). Nothing is left behind."""
    write(cols.src / "a/scan.h5", b"changed after detection")
    provider = cols.provider("transfer")
    body = transfer_body(
        item={"external_checksum": md5(b"as detected"), "checksum_algorithm": "MD5"},
        sync_level=3,
        verify_checksum=True,
    )
    done = finish(provider, provider.run(body, ctx("transfer")))
    assert done.status == "FAILED" and done.details["status"] == "FAILED"
    assert done.details["fatal_error"]["code"] == "EXTERNAL_CHECKSUM_MISMATCH"
    assert not (cols.dst / "b/scan.h5").exists()
    assert list((cols.dst / "b").iterdir()) == []  # no partial or temporary file either


def test_a_checksum_skip_still_checks_the_external_checksum(cols: Collections) -> None:
    """sync_level 3 skips a destination with the same checksum (transfer_data.py "Sync
    Levels"), but not past an external_checksum the bytes do not have."""
    write(cols.src / "a/scan.h5", b"same")
    write(cols.dst / "b/scan.h5", b"same")
    provider = cols.provider("transfer")
    good = transfer_body(item={"external_checksum": md5(b"same")}, sync_level=3)
    done = finish(provider, provider.run(good, ctx("transfer")))
    assert done.status == "SUCCEEDED" and done.details["files_skipped"] == 1
    bad = transfer_body(item={"external_checksum": md5(b"other")}, sync_level=3)
    refused = finish(provider, provider.run(bad, ctx("transfer")))
    assert refused.details["fatal_error"]["code"] == "EXTERNAL_CHECKSUM_MISMATCH"


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_timestamp_gives_the_copy_the_source_mtime(
    cols: Collections, preserve: bool
) -> None:
    """transfer_data.py: preserve_timestamp "will attempt to set file timestamps on the
    destination to match those on the origin" (default false: the copy's own time)."""
    old = datetime(2026, 2, 28, 12, 0, tzinfo=UTC).timestamp()
    write(cols.src / "a/scan.h5", mtime=old)
    provider = cols.provider("transfer")
    body = transfer_body(preserve_timestamp=preserve)
    done = finish(provider, provider.run(body, ctx("transfer")))
    assert done.status == "SUCCEEDED" and done.details["preserve_timestamp"] is preserve
    copied = (cols.dst / "b/scan.h5").stat().st_mtime
    assert (copied == old) is preserve


def test_a_name_of_255_bytes_is_copied(cols: Collections) -> None:
    """Issue 9 item 7: the copy's temp name (`.{name}.XXXXXXXX.part`) once overflowed
    NAME_MAX for a 255-byte name; the name must be copyable like any other."""
    name = "é" * 126 + "abc"  # 255 bytes in UTF-8
    assert len(os.fsencode(name)) == 255
    write(cols.src / "a" / name, b"long name")
    provider = cols.provider("transfer")
    body = transfer_body(item={"source_path": f"/a/{name}", "destination_path": f"/b/{name}"})
    done = finish(provider, provider.run(body, ctx("transfer")))
    assert done.status == "SUCCEEDED", done.details
    assert (cols.dst / "b" / name).read_bytes() == b"long name"
    assert sorted(p.name for p in (cols.dst / "b").iterdir()) == [name]  # no temp left


def test_a_past_deadline_is_refused(cols: Collections) -> None:
    """transfer_data.py: deadline, "At the deadline, even if the data transfer is not
    complete, the job will be canceled": one already past cannot be met (refused at
    submission, the closest reading)."""
    write(cols.src / "a/scan.h5")
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with pytest.raises(ActionUnableToRun, match="in the past"):
        cols.provider("transfer").run(transfer_body(deadline=past), ctx("transfer"))


def test_a_task_past_its_deadline_fails_expired(cols: Collections) -> None:
    """docs.globus.org/api/transfer/task_events: EXPIRED, "Task failed to complete before
    deadline". Here the task's start-up overhead outlasts its deadline."""
    write(cols.src / "a/scan.h5")
    provider = cols.provider("transfer", TaskQueue(overhead=30))
    soon = (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()
    done = finish(provider, provider.run(transfer_body(deadline=soon), ctx("transfer")))
    assert done.status == "FAILED" and done.details["fatal_error"]["code"] == "EXPIRED"
    assert not (cols.dst / "b/scan.h5").exists()


def test_label_and_notifications_are_taken_as_transfer_takes_them(cols: Collections) -> None:
    """docs.globus.org/api/transfer/task_submit, label: at most 128 characters, no newlines,
    no leading or trailing whitespace; notify_on_succeeded is a task option (default true)."""
    write(cols.src / "a/scan.h5")
    provider = cols.provider("transfer")
    body = transfer_body(label="run-1234", notify_on_succeeded=False)
    done = finish(provider, provider.run(body, ctx("transfer")))
    assert done.details["label"] == "run-1234" and done.details["notify_on_succeeded"] is False
    assert done.details["notify_on_failed"] is True
    for label, why in (("x" * 129, "at most 128"), ("a\nb", "newlines"), (" a", "whitespace")):
        with pytest.raises(ActionUnableToRun, match=why):
            provider.run(transfer_body(label=label), ctx("transfer"))


# ------------------------------------------------------------------------- delete


def delete_body(*paths: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint": SRC, "DATA": [{"path": p} for p in paths], **extra}


def test_deleting_a_missing_path_fails_without_ignore_missing(cols: Collections) -> None:
    """delete_data.py: ignore_missing "Ignore nonexistent files and directories instead of
    treating them as errors" (default false). Everything is checked before anything goes."""
    kept = write(cols.src / "P1/a.h5")
    provider = cols.provider("delete")
    done = finish(provider, provider.run(delete_body("/P1/a.h5", "/P1/gone.h5"), ctx("delete")))
    assert done.status == "FAILED" and done.details["fatal_error"]["code"] == "FILE_NOT_FOUND"
    assert kept.exists()
    body = delete_body("/P1/a.h5", "/P1/gone.h5", ignore_missing=True)
    done = finish(provider, provider.run(body, ctx("delete")))
    assert done.status == "SUCCEEDED" and done.details["files_deleted"] == 1
    assert not kept.exists()


def test_delete_never_goes_through_a_directory_symlink(cols: Collections, tmp_path: Path) -> None:
    """A delete never leaves the collection's real root: a path through a symlinked
    directory is refused, not followed (our safety rule; Globus: "no other symbolic links
    are followed", docs.globus.org/cli/reference/transfer)."""
    outside = write(tmp_path / "elsewhere/precious.h5")
    (cols.src / "P1").mkdir()
    (cols.src / "P1/link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    provider = cols.provider("delete")
    done = finish(provider, provider.run(delete_body("/P1/link/precious.h5"), ctx("delete")))
    assert done.status == "FAILED" and done.details["fatal_error"]["code"] == "PERMISSION_DENIED"
    assert "symlink" in done.details["fatal_error"]["description"] and outside.exists()
    # Named itself, the link is removed; what it points to is not touched.
    body = delete_body("/P1/link", recursive=True)
    done = finish(provider, provider.run(body, ctx("delete")))
    assert done.status == "SUCCEEDED" and not (cols.src / "P1/link").is_symlink()
    assert outside.exists()


# ------------------------------------------------------------------------- stat

TRANSFER_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\+00:00$")


def test_stat_reports_type_size_and_transfer_time(cols: Collections) -> None:
    """docs.globus.org/api/transfer/file_operations, File document: type ("file", "dir",
    "invalid_symlink", ...), size, last_modified "YYYY-MM-DD HH:MM:SS+00:00" (UTC, whole
    seconds); the stat action provider returns it as details
    (docs.globus.org/api/transfer/action-providers/stat)."""
    when = datetime(2026, 2, 28, 12, 0, 7, 900_000, tzinfo=UTC)
    write(cols.src / "P1/a.h5", b"12345", mtime=when.timestamp())
    (cols.src / "P1/broken").symlink_to(cols.src / "P1/nowhere")
    provider = cols.provider("stat")
    found = provider.run({"endpoint_id": SRC, "path": "/P1/a.h5"}, ctx("stat"))
    assert found.status == "SUCCEEDED"
    assert found.details["type"] == "file" and found.details["size"] == 5
    assert found.details["last_modified"] == "2026-02-28 12:00:07+00:00"
    assert TRANSFER_TIME.match(found.details["last_modified"])
    folder = provider.run({"endpoint_id": SRC, "path": "/P1"}, ctx("stat"))
    assert folder.details["type"] == "dir"
    broken = provider.run({"endpoint_id": SRC, "path": "/P1/broken"}, ctx("stat"))
    assert broken.details["type"] == "invalid_symlink"


def test_stat_of_a_missing_path_succeeds_with_code_not_found(cols: Collections) -> None:
    """Globus's own example flows stat a path that may not exist with the default
    ExceptionOnActionFailure and test details.code != 'NotFound' (globus-flows-examples
    transfer_examples/move/definition.json, two_hop/definition.json): a missing path is a
    SUCCEEDED stat whose details.code is "NotFound", not a FAILED action."""
    missing = cols.provider("stat").run({"endpoint_id": SRC, "path": "/P1/none"}, ctx("stat"))
    assert missing.status == "SUCCEEDED" and missing.details["code"] == "NotFound"
    assert "type" not in missing.details and "size" not in missing.details


# ------------------------------------------------------------------------- throughput


def test_three_transfer_and_three_delete_tasks_per_user_at_a_time(cols: Collections) -> None:
    """docs.globus.org/api/transfer/task_behavior, Queuing: "only work on 3 transfer tasks and
    3 delete tasks per user at a time. Additional tasks will be queued"; a queued task's
    nice_status is "Queued". Another user's tasks are not behind them."""
    queue = TaskQueue(overhead=0.4)
    transfer, delete = cols.provider("transfer", queue), cols.provider("delete", queue)
    for i in range(5):
        write(cols.src / f"a/{i}.h5")
    started = [
        transfer.run(
            transfer_body(item={"source_path": f"/a/{i}.h5", "destination_path": f"/b/{i}.h5"}),
            ctx("transfer"),
        )
        for i in range(5)
    ]
    assert [s.details["nice_status"] for s in started] == ["OK"] * 3 + ["Queued"] * 2
    write(cols.src / "d/x.h5")
    removal = delete.run(delete_body("/d/x.h5"), ctx("delete"))
    assert removal.details["nice_status"] == "OK"  # its own three slots
    bob = transfer.run(
        transfer_body(item={"source_path": "/a/0.h5", "destination_path": "/c/0.h5"}),
        ctx("transfer", user="urn:globus:auth:identity:bob"),
    )
    assert bob.details["nice_status"] == "OK"
    done = [finish(transfer, s) for s in started]
    assert {d.status for d in done} == {"SUCCEEDED"}
    assert finish(delete, removal).status == "SUCCEEDED"
    alice = "urn:globus:auth:identity:alice"
    assert queue.peak[(alice, "TRANSFER")] == 3 and queue.peak[(alice, "DELETE")] == 1


def test_a_queued_task_can_be_canceled(cols: Collections) -> None:
    """docs.globus.org/api/transfer/task_events: CANCELED, "Task canceled before completion";
    a run's cancel reaches its action (the engine calls the provider's cancel)."""
    queue = TaskQueue(slots=1, overhead=30)
    transfer = cols.provider("transfer", queue)
    write(cols.src / "a/scan.h5")
    first = transfer.run(transfer_body(), ctx("transfer"))
    second = transfer.run(transfer_body(), ctx("transfer"))
    assert second.details["nice_status"] == "Queued"
    canceled = transfer.cancel(second.action_id)
    assert canceled is not None and canceled.status == "FAILED"
    assert canceled.details["fatal_error"]["code"] == "CANCELED"
    transfer.cancel(first.action_id)
    assert finish(transfer, first).details["fatal_error"]["code"] == "CANCELED"
