"""The Compute v3 action provider (`https://compute.actions.globus.org/v3`): the function
registered under `function_id` (its source text, as `deploy` registered it) runs in a fresh
Python subprocess with the fake `hsi`/`htar` on PATH, `FAKE_HPSS_ROOT` at `local.hpss_path`
and the SciCat stand-in (`SCICAT_URL=sqlite:///...`) at `local.catalogue_path`.

It answers synchronously, bounded by the state's `WaitTime`: past it (or when the run is
canceled) the subprocess is killed and the engine raises ActionTimeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dichroism_control.local.engine.actions import (
    FAILED,
    SUCCEEDED,
    ActionContext,
    ActionProvider,
    ActionStatus,
    ActionUnableToRun,
)
from dichroism_control.local.providers.documents import now_iso, require

if TYPE_CHECKING:
    from dichroism_control.config import Config

COMPUTE_URL = "https://compute.actions.globus.org/v3"
FAKE_HPSS_DIR = Path(__file__).resolve().parents[1] / "fake_hpss"

# Runs one registered function: the source is exec'd in a fresh namespace (as the Compute
# endpoint does with `register_source_code`), kwargs arrive as JSON on stdin and the result
# leaves as JSON on the saved stdout; anything the function prints goes to stderr.
_RUNNER = r"""
import json, sys, traceback
request = json.load(sys.stdin)
out = sys.stdout
sys.stdout = sys.stderr
try:
    namespace = {"__name__": "__compute_function__"}
    exec(compile(request["source"], "<" + request["name"] + ">", "exec"), namespace)
    result = namespace[request["name"]](*request["args"], **request["kwargs"])
    answer = {"ok": True, "result": result}
    text = json.dumps(answer)
except BaseException as exc:
    tail = "".join(traceback.format_exception(exc)[-3:])
    text = json.dumps({"ok": False, "type": type(exc).__name__, "error": str(exc),
                       "traceback": tail[-4000:]})
out.write(text)
out.flush()
"""

# What of our own environment a function sees: enough to run Python and the fake HPSS
# tools, never tokens or passwords (the real Compute endpoint's environment is its own).
_PASSED_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER")
_PASSED_PREFIXES = ("FAKE_HPSS_",)


class FunctionLookup(Protocol):
    def get_function(self, function_id: str) -> tuple[str, str] | None:
        """(name, source) of a registered function, or None."""
        ...


@dataclass
class _Finished:
    status: ActionStatus


class ComputeProvider(ActionProvider):
    """Compute v3 tasks run as local subprocesses (synchronously, bounded by WaitTime)."""

    url = COMPUTE_URL

    def __init__(self, config: Config, functions: FunctionLookup) -> None:
        self.config = config
        self.functions = functions
        self._env: dict[str, str] | None = None
        self._lock = threading.Lock()

    # -- environment -------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        with self._lock:
            if self._env is None:
                self._env = self._build_env()
            env = dict(self._env)
        # Failure injection (FAKE_HPSS_FAIL, ...) is read per call so tests can flip it.
        for key in [k for k in env if k.startswith(_PASSED_PREFIXES) and k != "FAKE_HPSS_ROOT"]:
            del env[key]
        env.update(
            {
                k: v
                for k, v in os.environ.items()
                if k.startswith(_PASSED_PREFIXES) and k != "FAKE_HPSS_ROOT"
            }
        )
        return env

    def _build_env(self) -> dict[str, str]:
        config = self.config
        hpss = config.resolve(config.local.hpss_path)
        hpss.mkdir(parents=True, exist_ok=True)
        catalogue = config.resolve(config.local.catalogue_path).resolve()
        catalogue.parent.mkdir(parents=True, exist_ok=True)
        locks = config.state_path / "hpss-locks"
        locks.mkdir(parents=True, exist_ok=True)
        shims = _python_shim(config.state_path / "local-bin")
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        path = [str(FAKE_HPSS_DIR), str(shims), os.environ.get("PATH", os.defpath)]
        env.update(
            {
                "PATH": os.pathsep.join(path),
                "FAKE_HPSS_ROOT": str(hpss.resolve()),
                "SCICAT_URL": "sqlite:///" + str(catalogue),
                "DICHROISM_HPSS_LOCK_DIR": str(locks),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        return env

    # -- the action --------------------------------------------------------------------
    def run(self, body: dict[str, Any], ctx: ActionContext) -> ActionStatus:
        endpoint_id = require(body, "endpoint_id")
        endpoints = self.config.globus.compute_endpoints
        allowed = {endpoints.nersc.lower(): "nersc", endpoints.scicat.lower(): "scicat"}
        if str(endpoint_id).lower() not in allowed:
            raise ActionUnableToRun(
                f"unknown Compute endpoint {endpoint_id!r} (config.globus.compute_endpoints: "
                f"nersc {endpoints.nersc}, scicat {endpoints.scicat})",
                code="EndpointNotFound",
            )
        tasks = require(body, "tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ActionUnableToRun("tasks must be a non-empty list", code="BadRequest")
        prepared: list[tuple[str, str, str, list[Any], dict[str, Any]]] = []
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise ActionUnableToRun(f"tasks[{i}] must be an object", code="BadRequest")
            function_id = str(task.get("function_id"))
            found = self.functions.get_function(function_id)
            if found is None:
                raise ActionUnableToRun(
                    f"unknown function_id {function_id!r} in tasks[{i}]: not registered on the "
                    "local backend (run `dichroism --backend local deploy`)",
                    code="FunctionNotFound",
                )
            args = task.get("args", [])
            kwargs = task.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ActionUnableToRun(
                    f"tasks[{i}]: args must be a list and kwargs an object", code="BadRequest"
                )
            prepared.append((function_id, found[0], found[1], args, kwargs))
        started = now_iso()
        deadline = time.monotonic() + ctx.wait_time
        results: list[dict[str, Any]] = []
        outputs: list[Any] = []
        for function_id, name, source, args, kwargs in prepared:
            task_id = str(uuid.uuid4())
            outcome = self._call(name, source, args, kwargs, deadline, ctx.cancel)
            if isinstance(outcome, _Finished):
                return outcome.status  # timed out or canceled: ACTIVE, the engine decides
            ok, value = outcome
            if not ok:
                results.append({"task_id": task_id, "status": "failed", "exception": value})
                return ActionStatus(
                    status=FAILED,
                    details={
                        "code": "TaskFailed",
                        "description": f"{name} raised {value['type']}: {value['error']}",
                        "error": value["error"],
                        "exception": value,
                        "results": results,
                    },
                    display_status="TaskFailed",
                    start_time=started,
                )
            outputs.append(value)
            results.append(
                {
                    "task_id": task_id,
                    "function_id": function_id,
                    "status": "success",
                    "output": value,
                }
            )
        return ActionStatus(
            status=SUCCEEDED,
            details={"result": outputs, "results": results},
            start_time=started,
        )

    def status(self, action_id: str) -> ActionStatus:
        # Only reached after a timeout/cancel return (the engine then stops polling).
        return ActionStatus(
            status=FAILED,
            action_id=action_id,
            details={"code": "Gone", "description": "the task was stopped"},
        )

    def _call(
        self,
        name: str,
        source: str,
        args: list[Any],
        kwargs: dict[str, Any],
        deadline: float,
        cancel: threading.Event | None,
    ) -> tuple[bool, Any] | _Finished:
        request = json.dumps({"name": name, "source": source, "args": args, "kwargs": kwargs})
        process = subprocess.Popen(
            [sys.executable, "-c", _RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment(),
            cwd=str(self.config.state_path),
            start_new_session=True,  # so a kill reaches hsi/htar children too
        )
        box: dict[str, Any] = {}

        def communicate() -> None:
            box["out"], box["err"] = process.communicate(request.encode())

        talker = threading.Thread(target=communicate, name=f"compute-{name}", daemon=True)
        talker.start()
        while talker.is_alive():
            talker.join(0.05)
            stop = cancel is not None and cancel.is_set()
            if stop or time.monotonic() >= deadline:
                _kill_group(process)
                talker.join(5)
                # ACTIVE past the deadline makes the engine raise ActionTimeout; with the
                # cancel event set it ends the run as canceled.
                return _Finished(
                    ActionStatus(status="ACTIVE", details={"code": "Stopped", "function": name})
                )
        out = (box.get("out") or b"").decode("utf-8", "replace")
        err = (box.get("err") or b"").decode("utf-8", "replace")
        try:
            answer = json.loads(out)
        except json.JSONDecodeError:
            return False, {
                "type": "WorkerError",
                "error": f"the function process exited with status {process.returncode} "
                f"without a result",
                "stderr": err[-2000:],
            }
        if answer.get("ok"):
            return True, answer.get("result")
        return False, {k: answer.get(k) for k in ("type", "error", "traceback")}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.kill()


def _python_shim(directory: Path) -> Path:
    """A directory with `python3` -> this interpreter, so the fake tools'
    `#!/usr/bin/env python3` finds a Python quickly and the same one."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "python3"
    target = Path(sys.executable)
    try:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return directory
        tmp = directory / f".python3.{os.getpid()}.{threading.get_ident()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, link)
    except OSError:
        pass  # best effort: PATH still has the system python3
    return directory
