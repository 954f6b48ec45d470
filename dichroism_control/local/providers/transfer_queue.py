"""Transfer's task queue, locally: per user at most 3 transfer tasks and 3 delete tasks at
work, the rest queued in order (docs.globus.org/api/transfer/task_behavior, "Queuing"), each
task paying a fixed start-up overhead before its work, and each bounded by its deadline
(a task still queued or working at its deadline fails EXPIRED).

The overhead is what makes a backlog's drain time visible locally (a local copy of a small
file is instantaneous; a Globus task is not): `benchmarks/bench_transfer_backlog.py`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dichroism_control.local.service_rules import transfer as rules

log = logging.getLogger(__name__)

QUEUED, WORKING, SUCCEEDED, FAILED = "QUEUED", "WORKING", "SUCCEEDED", "FAILED"


class TaskFailed(Exception):
    """The task's fatal error: `code` as Transfer's fatal_error codes (service_rules)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass
class Task:
    """One Transfer task: its kind (TRANSFER/DELETE), owner, deadline and work."""

    kind: str
    owner: str
    deadline: datetime
    work: Callable[[Task], dict[str, Any]]  # returns extra fields of the task document
    label: str | None = None
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = QUEUED
    request_time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    completion_time: str | None = None
    fatal_error: dict[str, str] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)  # cancel or deadline
    stop_code: str | None = None

    @property
    def done(self) -> bool:
        return self.state in (SUCCEEDED, FAILED)

    def halt(self, code: str) -> None:
        """Ask the work to stop (it checks `stop` between blocks); the first reason wins."""
        if self.stop_code is None:
            self.stop_code = code
        self.stop.set()

    def check(self) -> None:
        """Raise the stop reason if the task was canceled or its deadline passed."""
        if self.stop.is_set():
            raise TaskFailed(self.stop_code or rules.CANCELED, self._stop_description())

    def _stop_description(self) -> str:
        if self.stop_code == rules.EXPIRED:
            return f"the task did not complete before its deadline {self.deadline.isoformat()}"
        return "the task was canceled"


class TaskQueue:
    """Per (owner, kind): `slots` tasks at work, the others queued first come first served."""

    def __init__(
        self,
        *,
        slots: int = rules.ACTIVE_TASKS_PER_USER,
        overhead: float = 0.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.slots = slots
        self.overhead = overhead  # seconds each task spends before its work begins
        self.now = now
        self._lock = threading.Lock()
        self._tasks: dict[str, Task] = {}
        self._waiting: dict[tuple[str, str], deque[Task]] = {}
        self._working: dict[tuple[str, str], int] = {}
        self.peak: dict[tuple[str, str], int] = {}  # most tasks ever at work at once

    def submit(self, task: Task) -> Task:
        with self._lock:
            self._tasks[task.task_id] = task
            self._waiting.setdefault((task.owner, task.kind), deque()).append(task)
            self._pump((task.owner, task.kind))
        return task

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and task.state == QUEUED and self.now() >= task.deadline:
                self._end_queued(task, rules.EXPIRED)
            return task

    def cancel(self, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.done:
                return task
            if task.state == QUEUED:
                self._end_queued(task, rules.CANCELED)
            else:
                task.halt(rules.CANCELED)
            return task

    def working(self, owner: str, kind: str) -> int:
        with self._lock:
            return self._working.get((owner, kind), 0)

    # ------------------------------------------------------------------ internals
    def _end_queued(self, task: Task, code: str) -> None:
        """End a task that never started (lock held)."""
        waiting = self._waiting.get((task.owner, task.kind))
        if waiting is not None and task in waiting:
            waiting.remove(task)
        task.halt(code)
        self._finish(task, TaskFailed(code, task._stop_description()))

    def _pump(self, key: tuple[str, str]) -> None:
        """Start queued tasks while slots are free (lock held)."""
        waiting = self._waiting.get(key)
        while waiting and self._working.get(key, 0) < self.slots:
            task = waiting.popleft()
            if self.now() >= task.deadline:
                task.halt(rules.EXPIRED)
                self._finish(task, TaskFailed(rules.EXPIRED, task._stop_description()))
                continue
            task.state = WORKING
            self._working[key] = self._working.get(key, 0) + 1
            self.peak[key] = max(self.peak.get(key, 0), self._working[key])
            thread = threading.Thread(
                target=self._run, args=(task,), name=f"transfer-{task.kind.lower()}", daemon=True
            )
            thread.start()

    def _run(self, task: Task) -> None:
        remaining = (task.deadline - self.now()).total_seconds()
        timer = threading.Timer(max(remaining, 0.0), task.halt, args=(rules.EXPIRED,))
        timer.daemon = True
        timer.start()
        outcome: TaskFailed | None = None
        try:
            # The service's own cost of a task (scheduling, sessions): interruptible.
            if self.overhead > 0:
                task.stop.wait(self.overhead)
            task.check()
            task.result = task.work(task)
        except TaskFailed as exc:
            outcome = exc
        except Exception as exc:  # a local failure the task must still report
            log.exception("local transfer task %s crashed", task.task_id)
            outcome = TaskFailed(rules.ENDPOINT_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            timer.cancel()
            key = (task.owner, task.kind)
            with self._lock:
                self._working[key] -= 1
                self._finish(task, outcome)
                self._pump(key)

    def _finish(self, task: Task, outcome: TaskFailed | None) -> None:
        task.completion_time = datetime.now(UTC).isoformat()
        if outcome is None:
            task.state = SUCCEEDED
        else:
            task.state = FAILED
            task.fatal_error = {"code": outcome.code, "description": outcome.description}


def wait_for(tasks: list[Task], timeout: float, poll: float = 0.01) -> bool:
    """True once every task is done (for benchmarks and tests; the engine polls instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(task.done for task in tasks):
            return True
        time.sleep(poll)
    return all(task.done for task in tasks)
