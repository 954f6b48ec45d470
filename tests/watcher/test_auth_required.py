"""An auth requirement in a non-interactive process is an error for a person, never a prompt.

With `auto_redrive_gares=True` the SDK answers a 403 auth requirements error by running a
login flow (globus_app/app.py:582-607, `_RedriveGlobusAppGARE`), and the default
`token_validation_error_handler` does the same for missing or insufficient stored tokens
(globus_app/config.py `resolve_by_login_flow`). For a UserApp that login flow prompts on
stdin (login_flows/command_line_login_flow_manager.py): from the watcher's worker threads
it would block forever.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from globus_sdk.testing import get_response_set

from dichroism_control.config import Config, load_config
from dichroism_control.deploy_state import Deployment
from dichroism_control.launcher import Launcher
from dichroism_control.ledger import Ledger
from tests.deploy.helpers import (
    NATIVE_ID,
    person_env,
    run_cli,
    started_mock,
    store_person_tokens,
)
from tests.watcher.conftest import FLOW_ID, pin_ids, write_file

USER_ID = "8ca28797-3541-4a5d-a264-05b00f91e608"
FLOWS_SCOPE = "https://auth.globus.org/scopes/eec9b274-0c81-4334-bdc2-54e90e689b9a/all"
FLOW_SCOPE = f"https://auth.globus.org/scopes/{FLOW_ID}/flow_{FLOW_ID.replace('-', '_')}_user"


def _gare_body() -> dict[str, Any]:
    """A Globus Auth requirements error, as the SDK's `timer.get_job:inactive_gare` fixture
    carries one (`inactive_reason.detail`: code ConsentRequired + authorization_parameters)."""
    job = get_response_set("timer.get_job").lookup("inactive_gare").json
    return dict(job["inactive_reason"]["detail"])  # type: ignore[index]


@pytest.fixture
def person(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any attempt to ask a person: the SDK's command-line login flow, input()."""
    asked: list[str] = []

    def login_flow(self: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append("login flow")
        raise AssertionError("a login flow was started")

    def read(*args: Any) -> str:
        asked.append("input")
        raise AssertionError("input() was called")

    monkeypatch.setattr(
        "globus_sdk.login_flows.CommandLineLoginFlowManager.run_login_flow", login_flow
    )
    monkeypatch.setattr("builtins.input", read)
    return asked


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    person_env(monkeypatch)
    with started_mock() as mock:
        yield mock


def _no_data_access(data: dict[str, Any]) -> None:
    pin_ids(data)
    data["globus"]["data_access"] = []


def _store_user_tokens(config: Config, scopes: dict[str, str]) -> None:
    store_person_tokens(config.state_path, USER_ID, scopes)


def _launcher(config: Config, ledger: Ledger) -> Launcher:
    from dichroism_control.backends import build_backend

    backend = build_backend(config, interactive=False)
    return Launcher(config, ledger, backend, Deployment.resolve(config))


def test_missing_login_in_the_watcher_is_an_error_not_a_prompt(
    user_env: responses.RequestsMock,
    person: list[str],
    write_config: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No stored token for the flow (never logged in since it was deployed): the SDK's
    validator raises MissingTokenError (token_storage/validating_token_storage/storage.py:
    84-94); the watcher must not start a login, and the scan stays queued, unharmed."""
    config = load_config(write_config(_no_data_access))
    _store_user_tokens(config, {"flows.globus.org": FLOWS_SCOPE})
    ledger = Ledger(config.ledger_path)
    launcher = _launcher(config, ledger)
    path = write_file(Path(config.beamlines["bl402"].watch.root) / "P1" / "a.h5")
    launcher.detect(str(path))

    caplog.set_level(logging.ERROR, logger="dichroism_control.launcher.submit")
    (claim,) = launcher.claim(limit=5)
    outcome = launcher.attempt(claim)

    assert person == []
    assert outcome.needs_person and outcome.state == "detected"
    assert outcome.pause_until is not None
    scan = ledger.get_scan(str(path))
    assert scan is not None and scan.state == "detected" and scan.attempts == 0
    assert scan.last_error is not None and scan.last_error.endswith("run `dichroism login`")
    assert "\n" not in scan.last_error
    assert [r.getMessage() for r in caplog.records] == [
        f"submissions paused, a person is needed: {scan.last_error}"
    ]
    assert [c for c in user_env.calls if "/run" in c.request.url] == []


def test_consent_required_on_run_start_is_an_error_not_a_redrive(
    user_env: responses.RequestsMock,
    person: list[str],
    write_config: Callable[..., Path],
) -> None:
    """`run_flow` answers 403 with a Globus Auth requirements error (ConsentRequired; the
    body of the SDK fixture `timer.get_job:inactive_gare`). With auto_redrive_gares the SDK
    would log the person in from this thread (globus_app/app.py:601-607); the watcher must
    not, and must not count it against the scan either."""
    from globus_sdk.config import get_service_url

    config = load_config(write_config(_no_data_access))
    _store_user_tokens(config, {FLOW_ID: FLOW_SCOPE})
    user_env.add(
        "POST", f"{get_service_url('flows')}flows/{FLOW_ID}/run", status=403, json=_gare_body()
    )
    ledger = Ledger(config.ledger_path)
    launcher = _launcher(config, ledger)
    path = write_file(Path(config.beamlines["bl631"].watch.root) / "P2" / "b.h5")
    launcher.detect(str(path))
    (claim,) = launcher.claim(limit=5)
    outcome = launcher.attempt(claim)

    assert person == []
    assert outcome.needs_person
    scan = ledger.get_scan(str(path))
    assert scan is not None and (scan.state, scan.attempts) == ("detected", 0)
    assert scan.last_error is not None and "403 ConsentRequired" in scan.last_error
    assert "run `dichroism login`" in scan.last_error
    assert len([c for c in user_env.calls if c.request.url.endswith("/run")]) == 1


def test_submit_without_a_terminal_fails_in_one_line_naming_the_login(
    user_env: responses.RequestsMock,
    person: list[str],
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any non-interactive run (here `submit` from cron: stdin is not a terminal) surfaces the
    requirement as one line and exit 1; the scan stays queued for the watcher."""
    config_path = write_config(_no_data_access)
    config = load_config(config_path)
    _store_user_tokens(config, {"flows.globus.org": FLOWS_SCOPE})
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    path = write_file(Path(config.beamlines["bl402"].watch.root) / "P1" / "c.h5")

    code, out, err = run_cli(
        ["--config", str(config_path), "submit", str(path), "--beamline", "bl402"], capsys
    )
    assert person == []
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[-1].startswith("dichroism: error: Globus login needed (MissingTokenError: ")
    assert lines[-1].endswith("run `dichroism login`")
    scan = Ledger(config.ledger_path).get_scan(str(path))
    assert scan is not None and scan.state == "detected"


def test_watch_never_lets_the_app_prompt_even_from_a_terminal(
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The watcher is a service whose submissions run on worker threads: its Globus app is
    built non-interactive (no GARE redrive, no login on a token problem) whatever stdin is."""
    from dichroism_control.cli.context import Context
    from dichroism_control.errors import DichroismError

    seen: dict[str, Any] = {}

    def build_backend(config: Config, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise DichroismError("stop here")

    monkeypatch.setattr("dichroism_control.backends.build_backend", build_backend)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    assert Context().interactive is None
    code, _, err = run_cli(["--config", str(write_config(pin_ids)), "watch"], capsys)
    assert code == 1 and err.endswith("dichroism: error: stop here\n")
    assert seen["interactive"] is False


def test_a_non_interactive_app_never_redrives(tmp_path: Path) -> None:
    """auth.build_app(interactive=False): GlobusAppConfig.auto_redrive_gares is off and the
    token validation handler raises instead of logging in (globus_app/config.py)."""
    from dichroism_control.auth import Credentials, build_app
    from dichroism_control.errors import AuthRequiredError

    app = build_app(Credentials(NATIVE_ID, None), token_dir=tmp_path, interactive=False)
    assert app.config.auto_redrive_gares is False
    with pytest.raises(AuthRequiredError, match=r"run `dichroism login`$"):
        app.get_authorizer("flows.globus.org")
    interactive = build_app(Credentials(NATIVE_ID, None), token_dir=tmp_path)
    assert interactive.config.auto_redrive_gares is True
