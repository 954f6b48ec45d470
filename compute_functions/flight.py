"""Globus Compute function for the flight check: can this endpoint do its pipeline work?

Called by the ``flight_check`` flow on each configured Compute endpoint: at NERSC with
``checks=["hsi", "htar", "hpss"]`` (the tape tools are on ``PATH`` and HPSS answers a
listing of the beamline's HPSS directory), on the SciCat endpoint with ``checks=["scicat"]``
(SciCat answers with the endpoint's credentials). It never raises for a failed check: it
reports each one, so the flow and ``dichroism check`` can give a verdict per step with the
remedy; it raises only on malformed input.

**The whole module is the registered unit** (deploy registers this file's source text with
``flight_check_endpoint`` as entrypoint, like ``cfs.py`` and ``hpss.py``): standard library
only, nothing from this project. Credentials (``SCICAT_TOKEN``, ``SCICAT_TOKEN_FILE``,
``SCICAT_USERNAME``/``SCICAT_PASSWORD``, a password in ``SCICAT_URL``) come from the
endpoint's environment and never appear in a result: every text leaving here is scrubbed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

_KNOWN = ("hsi", "htar", "hpss", "scicat")
_DETAIL_MAX = 300
_PATH_REMEDY = (
    "put {tool} on the NERSC Compute endpoint's PATH (its endpoint config: worker_init, e.g."
    " `module load hpss`, or PATH in its environment), then restart the endpoint"
)


def flight_check_endpoint(
    *, checks: list[str], hpss_dir: str | None = None, timeout_seconds: int = 120
) -> dict[str, Any]:
    """Run the named checks here; ``{"ok", "host", "checks": [{"name", "ok", "detail",
    "remedy"}]}`` (``ok``: every check passed). See the module docstring."""
    if not isinstance(checks, list) or not checks or any(c not in _KNOWN for c in checks):
        raise RuntimeError(f"checks must be a non-empty list of {', '.join(_KNOWN)}: {checks!r}")
    if "hpss" in checks and (not isinstance(hpss_dir, str) or not hpss_dir.startswith("/")):
        raise RuntimeError(f"the hpss check needs an absolute hpss_dir: {hpss_dir!r}")
    timeout = max(1, int(timeout_seconds))
    secrets: list[str] = []
    results = []
    for name in checks:
        if name in ("hsi", "htar"):
            result = _tool(name)
        elif name == "hpss":
            result = _hpss(str(hpss_dir), timeout)
        else:
            result = _scicat(secrets, timeout)
        result["detail"] = _scrub(str(result["detail"]), secrets)[:_DETAIL_MAX]
        results.append(result)
    return {
        "ok": all(r["ok"] for r in results),
        "host": socket.gethostname(),
        "checks": results,
    }


def _check(name: str, ok: bool, detail: str, remedy: str | None = None) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "remedy": None if ok else remedy}


# --- NERSC: the tape tools and HPSS ------------------------------------------------------
def _tool(name: str) -> dict[str, Any]:
    found = shutil.which(name)
    if found:
        return _check(name, True, found)
    path = os.environ.get("PATH", "")
    return _check(name, False, f"{name} is not on PATH ({path})", _PATH_REMEDY.format(tool=name))


def _hpss(hpss_dir: str, timeout: int) -> dict[str, Any]:
    hsi = shutil.which("hsi")
    if not hsi:
        return _check("hpss", False, "hsi is not on PATH", _PATH_REMEDY.format(tool="hsi"))
    try:
        done = subprocess.run(
            [hsi, "-q", "ls", "-d", hpss_dir],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _check(
            "hpss",
            False,
            f"`hsi -q ls -d {hpss_dir}` did not answer within {timeout} s",
            "HPSS is slow or down: check the NERSC status page, then run the check again",
        )
    # hsi writes listings and errors to stderr (both are read here).
    text = " ".join((done.stderr + " " + done.stdout).split())
    if done.returncode == 0:
        return _check("hpss", True, f"{hpss_dir} listed")
    if "HPSS_ENOENT" in text or "No such file" in text:
        # Reachable; the beamline's directory is created by its first archive run.
        return _check("hpss", True, f"HPSS answered; {hpss_dir} does not exist yet")
    return _check(
        "hpss",
        False,
        f"`hsi -q ls -d {hpss_dir}` exited {done.returncode}: {text[-200:]}",
        "check HPSS from the endpoint host (`hsi -q ls`), its keytab/credentials for the"
        " endpoint's account, and the NERSC status page",
    )


# --- SciCat ------------------------------------------------------------------------------
def _scicat(secrets: list[str], timeout: int) -> dict[str, Any]:
    url = os.environ.get("SCICAT_URL", "").strip()
    if not url:
        return _check(
            "scicat",
            False,
            "SCICAT_URL is not set in the endpoint's environment",
            "set SCICAT_URL (and SCICAT_TOKEN, SCICAT_TOKEN_FILE or SCICAT_USERNAME +"
            " SCICAT_PASSWORD) in the SciCat Compute endpoint's environment",
        )
    if url.startswith("sqlite:"):
        return _sqlite(url)
    secrets.append(url)
    parts = urllib.parse.urlsplit(url)
    secrets.extend(p for p in (parts.password, parts.username) if p)
    shown = f"{parts.scheme}://{parts.hostname or ''}"
    try:
        token = _token(url.rstrip("/"), secrets, timeout)
        query = urllib.parse.urlencode({"filter": json.dumps({"limit": 1})})
        _request(f"{url.rstrip('/')}/Datasets?{query}", token, timeout)
    except _Refused as exc:
        return _check("scicat", False, f"SciCat at {shown}: {exc}", exc.remedy)
    return _check("scicat", True, f"SciCat at {shown} answered with the configured credentials")


class _Refused(Exception):
    def __init__(self, message: str, remedy: str) -> None:
        super().__init__(message)
        self.remedy = remedy


_CREDENTIALS = (
    "renew the credentials in the SciCat Compute endpoint's environment (SCICAT_TOKEN,"
    " SCICAT_TOKEN_FILE, or SCICAT_USERNAME + SCICAT_PASSWORD)"
)


def _token(base: str, secrets: list[str], timeout: int) -> str:
    token = os.environ.get("SCICAT_TOKEN", "").strip()
    token_file = os.environ.get("SCICAT_TOKEN_FILE", "").strip()
    if token:
        secrets.append(token)
        return token
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise _Refused(
                f"cannot read SCICAT_TOKEN_FILE {token_file}: {exc.strerror}", _CREDENTIALS
            ) from None
        secrets.append(token)
        return token
    user = os.environ.get("SCICAT_USERNAME", "")
    password = os.environ.get("SCICAT_PASSWORD", "")
    secrets.extend(s for s in (password,) if s)
    if not (user and password):
        raise _Refused("no credentials in the endpoint's environment", _CREDENTIALS)
    # The login pyscicat 0.4.8 uses (get_token): POST auth/login, the token in "id".
    answer = _request(
        f"{base}/auth/login", None, timeout, body={"username": user, "password": password}
    )
    token = str(answer.get("id") or answer.get("access_token") or "") if answer else ""
    if not token:
        raise _Refused("the login answered without a token", _CREDENTIALS)
    secrets.append(token)
    return token


def _request(
    url: str, token: str | None, timeout: int, body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    headers = {"Accept": "application/json"}
    data = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise _Refused(f"refused the credentials (HTTP {exc.code})", _CREDENTIALS) from None
        raise _Refused(
            f"answered HTTP {exc.code}", "check SciCat's status and SCICAT_URL (…/api/v3)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Refused(
            f"unreachable ({reason})",
            "check SCICAT_URL and that the SciCat endpoint's host reaches it (proxy, DNS,"
            " firewall)",
        ) from None
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _sqlite(url: str) -> dict[str, Any]:
    """The local stand-in (offline demo): its catalogue file can be opened."""
    path = url[len("sqlite:") :]
    path = path[2:] if path.startswith("//") else path
    path = path[1:] if path.startswith("//") else path
    try:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise OSError(f"{directory} is not a directory")
        conn = sqlite3.connect(path, timeout=10)
        try:
            conn.execute("SELECT 1").fetchone()
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        return _check(
            "scicat",
            False,
            f"the local SciCat stand-in {path} cannot be opened: {exc}",
            "check local.catalogue_path in config.yml",
        )
    return _check("scicat", True, f"local SciCat stand-in {path} (not SciCat)")


def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` without the credentials in ``secrets`` (plain or URL-quoted)."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        for form in (secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)):
            text = text.replace(form, "***")
    text = re.sub(r"(?i)(access_token|token|password)=[^&\s'\"]+", r"\1=***", text)
    return re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)
