"""The Transfer action providers (`https://transfer.actions.globus.org/{transfer,delete,
stat,ls,mkdir}`) over local directories standing in for collections (`collections.py`).

transfer and delete are asynchronous, as the real ones are: `run` checks the request (what
Transfer refuses at submission is ActionUnableToRun: a bad sync_level or label, a deadline
already past, an unknown collection), queues a task (`transfer_queue.py`: 3 transfer and 3
delete tasks per user at work, a per-task overhead, deadlines) and answers ACTIVE; the
engine polls `status` until the task document says SUCCEEDED or FAILED (with its
`fatal_error`). What the tasks do is `transfer_tasks.py`. stat, ls and mkdir answer at once
(`file_ops.py`); a stat of a missing path SUCCEEDS with details.code "NotFound".

The request keys are the task document's (timers.ts TransferTaskDocument): `sync_level` is
an integer 0-3 (the names "exists", "size", "mtime", "checksum" are the SDK's sugar and are
accepted too); per item `external_checksum` and `checksum_algorithm`; `preserve_timestamp`,
`verify_checksum`, `deadline`, `label`, `notify_on_*`. A body-level `checksum_algorithm` is
accepted as the default for items that name none (older local flows sent it there).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.local.engine.actions import (
    ACTIVE,
    FAILED,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
)
from dichroism_control.local.providers import file_ops
from dichroism_control.local.providers.checksums import CHECKSUM_ALGORITHMS, DEFAULT_CHECKSUM
from dichroism_control.local.providers.collections import (
    CollectionError,
    collection_path,
    find_endpoint,
)
from dichroism_control.local.providers.documents import require
from dichroism_control.local.providers.transfer_queue import Task, TaskQueue
from dichroism_control.local.providers.transfer_tasks import (
    DeleteItem,
    TransferItem,
    TransferOptions,
    delete_work,
    new_counters,
    task_document,
    transfer_work,
)
from dichroism_control.local.service_rules import transfer as rules

if TYPE_CHECKING:
    from dichroism_control.config import Config, Endpoint

TRANSFER_BASE = "https://transfer.actions.globus.org"
TRANSFER_OPERATIONS = ("transfer", "delete", "stat", "ls", "mkdir")
TRANSFER_URLS = {op: f"{TRANSFER_BASE}/{op}" for op in TRANSFER_OPERATIONS}
SYNC_LEVELS = rules.SYNC_LEVELS


def _data_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = require(body, "DATA")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ActionUnableToRun("DATA must be a non-empty list of objects", code="BadRequest")
    return items


def _algorithm(value: Any) -> str:
    name = str(value).upper()
    if name not in CHECKSUM_ALGORITHMS:
        raise ActionUnableToRun(
            f"checksum_algorithm {value!r} is not one of {CHECKSUM_ALGORITHMS}",
            code="BadRequest",
        )
    return name


def _owner(ctx: ActionContext) -> str:
    """Whose task it is: Transfer's queue is per user."""
    return str(ctx.context.get("user_id") or ctx.username or "local")


class TransferProvider(ActionProvider):
    """One Transfer operation (`op`) over local directories standing in for collections."""

    def __init__(self, config: Config, op: str, queue: TaskQueue | None = None) -> None:
        if op not in TRANSFER_OPERATIONS:
            raise ValueError(f"unknown Transfer operation {op!r}")
        self.config = config
        self.op = op
        self.url = TRANSFER_URLS[op]
        self.queue = queue if queue is not None else TaskQueue()
        self._extra: dict[str, dict[str, Any]] = {}

    def _path(self, endpoint: Endpoint, path: Any) -> Path:
        try:
            return collection_path(self.config, endpoint, path)
        except CollectionError as exc:
            raise ActionUnableToRun(str(exc), code="BadRequest") from None

    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        try:
            if self.op == "transfer":
                return self._submit(self._transfer_task(body, ctx), body)
            if self.op == "delete":
                return self._submit(self._delete_task(body, ctx), body)
        except rules.RequestRefused as exc:
            raise ActionUnableToRun(str(exc), code="BadRequest") from None
        endpoint = find_endpoint(self.config, require(body, "endpoint_id"))
        shown = require(body, "path")
        path = self._path(endpoint, shown)
        if self.op == "stat":
            return file_ops.stat_path(path, shown)
        if self.op == "ls":
            show_hidden = bool(body.get("show_hidden", True))
            return file_ops.list_directory(path, shown, endpoint.uuid, show_hidden)
        return file_ops.make_directory(path, shown, endpoint.uuid)

    # ---------------------------------------------------------------- asynchronous tasks
    def _submit(
        self, task_and_extra: tuple[Task, dict[str, Any]], body: dict[str, Any]
    ) -> ActionStatus:
        task, extra = task_and_extra
        for key in ("notify_on_succeeded", "notify_on_failed", "notify_on_inactive"):
            # task_submit: notification flags default to true; accepted, nobody is mailed.
            extra[key] = bool(body.get(key, True))
        self._extra[task.task_id] = extra
        self.queue.submit(task)
        return self.status(task.task_id)

    def status(self, action_id: str) -> ActionStatus:
        task = self.queue.get(action_id)
        if task is None:
            raise ActionUnableToRun(f"no task {action_id}", code="NotFound")
        doc = task_document(task, self._extra.get(action_id, {}))
        state = doc["status"] if doc["status"] in (SUCCEEDED, FAILED) else ACTIVE
        shown = (task.fatal_error or {}).get("code") if state == FAILED else None
        return ActionStatus(
            status=state,
            details=doc,
            action_id=task.task_id,
            display_status=shown or state,
            label=task.label,
        )

    def cancel(self, action_id: str) -> ActionStatus | None:
        task = self.queue.cancel(action_id)
        return None if task is None else self.status(action_id)

    def _new_task(self, kind: str, body: dict[str, Any], ctx: ActionContext, work: Any) -> Task:
        now = datetime.now(UTC)
        task = Task(
            kind=kind,
            owner=_owner(ctx),
            deadline=rules.deadline(body.get("deadline"), now),
            work=work,
            label=rules.task_label(body.get("label")),
        )
        task.result = new_counters()
        return task

    def _transfer_task(
        self, body: dict[str, Any], ctx: ActionContext
    ) -> tuple[Task, dict[str, Any]]:
        source = find_endpoint(self.config, require(body, "source_endpoint"))
        destination = find_endpoint(self.config, require(body, "destination_endpoint"))
        level = rules.sync_level(body.get("sync_level"))
        default = body.get("checksum_algorithm")
        items = []
        for entry in _data_items(body):
            external = entry.get("external_checksum")
            if external is not None and not isinstance(external, str):
                raise rules.RequestRefused("external_checksum must be a string")
            named = entry.get("checksum_algorithm") or default
            if named is not None:
                algorithm = _algorithm(named)
            else:
                algorithm = rules.EXTERNAL_CHECKSUM_ALGORITHM if external else DEFAULT_CHECKSUM
            items.append(
                TransferItem(
                    src=self._path(source, entry.get("source_path")),
                    dst=self._path(destination, entry.get("destination_path")),
                    shown=str(entry.get("source_path")),
                    recursive=bool(entry.get("recursive", False)),
                    algorithm=algorithm,
                    external=external,
                )
            )
        options = TransferOptions(
            sync_level=level,
            verify=bool(body.get("verify_checksum", False)),
            preserve_timestamp=bool(body.get("preserve_timestamp", False)),
        )
        task = self._new_task("TRANSFER", body, ctx, transfer_work(items, options))
        extra = {
            "source_endpoint_id": source.uuid,
            "destination_endpoint_id": destination.uuid,
            "sync_level": level,
            "verify_checksum": options.verify,
            "preserve_timestamp": options.preserve_timestamp,
        }
        return task, extra

    def _delete_task(self, body: dict[str, Any], ctx: ActionContext) -> tuple[Task, dict[str, Any]]:
        endpoint = find_endpoint(self.config, body.get("endpoint", body.get("endpoint_id")))
        recursive = bool(body.get("recursive", False))
        ignore_missing = bool(body.get("ignore_missing", False))
        items = [
            DeleteItem(self._path(endpoint, entry.get("path")), str(entry.get("path")))
            for entry in _data_items(body)
        ]
        root = self.config.resolve(endpoint.local_path)
        work = delete_work(root, items, recursive=recursive, ignore_missing=ignore_missing)
        task = self._new_task("DELETE", body, ctx, work)
        extra = {"endpoint_id": endpoint.uuid, "recursive": recursive}
        return task, extra
