"""Fixtures for the Compute function tests: fake HPSS on PATH, a CFS tree, a fake SciCat."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import responses

FAKE_HPSS_DIR = Path(__file__).resolve().parents[2] / "dichroism_control" / "local" / "fake_hpss"

HPSS_DIR = "/home/a/alsdata/bl402/raw"
TOKEN = "tok-SECRET-7f3a9c1e"
PASSWORD = "pw-SECRET-b4d2e8"
BASE_URL = "https://scicat.test/api/v3"


@dataclass
class Tape:
    root: Path
    hpss_dir: str = HPSS_DIR

    def local(self, hpss_path: str) -> Path:
        return self.root / hpss_path.lstrip("/")


@pytest.fixture
def tape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tape:
    """Fake hsi/htar first on PATH, an empty tape tree and a private lock directory."""
    root = tmp_path / "tape"
    root.mkdir()
    # `#!/usr/bin/env python3` in the fakes finds this interpreter first (no slow shims)
    py_bin = tmp_path / "bin"
    py_bin.mkdir()
    (py_bin / "python3").symlink_to(sys.executable)
    path = os.pathsep.join([str(py_bin), str(FAKE_HPSS_DIR), os.environ.get("PATH", "")])
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("FAKE_HPSS_ROOT", str(root))
    monkeypatch.setenv("DICHROISM_HPSS_LOCK_DIR", str(tmp_path / "locks"))
    for name in ("FAKE_HPSS_FAIL", "FAKE_HPSS_TRUNCATE", "FAKE_HPSS_HANG"):
        monkeypatch.delenv(name, raising=False)
    return Tape(root)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def item(rel: str, data: bytes, version: int = 1, **extra: Any) -> dict[str, Any]:
    """A file item as the flows send it (path, size, checksum, version)."""
    return {"path": rel, "size": len(data), "checksum": md5(data), "version": version, **extra}


@dataclass
class Cfs:
    root: Path

    def write(
        self, rel: str, size: int | None = None, data: bytes | None = None, version: int = 1
    ) -> dict[str, Any]:
        """Write ``{root}/{rel}`` and return its file item (checksum of what was written)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            data = (rel.encode() * (1 + (size or 0) // max(len(rel), 1)))[: size or 0]
        path.write_bytes(data)
        return item(rel, data, version)


@pytest.fixture
def cfs(tmp_path: Path) -> Cfs:
    root = tmp_path / "cfs" / "als" / "4.0.2" / "raw"
    root.mkdir(parents=True)
    return Cfs(root)


def archive_options(**overrides: int) -> dict[str, int]:
    opts = {
        "bundle_max_bytes": 10_000,
        "single_file_threshold_bytes": 5_000,
        "max_sessions": 2,
        "walltime_seconds": 60,
    }
    opts.update(overrides)
    return opts


METADATA = {
    "instrument_id": "bl402-instrument",
    "owner_group": "als-402",
    "access_groups": ["als-402-staff"],
    "owner": "Beamline 4.0.2",
    "contact_email": "bl402@example.org",
    "principal_investigator": "A. Scientist",
}


@dataclass
class FakeSciCat:
    """In-memory SciCat v3 answering through `responses` in the real API's shapes."""

    token: str = TOKEN
    username: str = "ingestor"
    password: str = PASSWORD
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    origdatablocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    datablocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def _authorised(self, request: Any) -> bool:
        header = request.headers.get("Authorization", "")
        query = parse_qs(urlsplit(request.url).query).get("access_token", [""])[0]
        return header == f"Bearer {self.token}" or query == self.token

    def _answer(
        self, key: str, request: Any, handler: Callable[[], tuple[int, Any]]
    ) -> tuple[int, dict[str, str], str]:
        self.calls.append(f"{request.method} {key}")
        if key in self.fail:
            status, body = self.fail[key]
            return status, {}, body
        if key != "login" and not self._authorised(request):
            return 401, {}, json.dumps({"statusCode": 401, "message": "Unauthorized"})
        status, body = handler()
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    @staticmethod
    def _pid(request: Any) -> str:
        m = re.search(r"/Datasets/([^/?]+)/", urlsplit(request.url).path + "/")
        assert m
        return unquote(m.group(1))

    def login(self, request: Any) -> tuple[int, dict[str, str], str]:
        def handler() -> tuple[int, Any]:
            body = json.loads(request.body)
            if body == {"username": self.username, "password": self.password}:
                return 201, {"access_token": self.token, "id": self.token, "userId": "u1"}
            # some servers echo the rejected request; pyscicat logs and raises with it
            return 401, {"statusCode": 401, "message": "Unauthorized", "request": body}

        return self._answer("login", request, handler)

    def find(self, request: Any) -> tuple[int, dict[str, str], str]:
        def handler() -> tuple[int, Any]:
            raw = parse_qs(urlsplit(request.url).query).get("filter", ["{}"])[0]
            where = json.loads(raw).get("where", {})
            hits = [
                d for d in self.datasets.values() if all(d.get(k) == v for k, v in where.items())
            ]
            return 200, hits

        return self._answer("find", request, handler)

    def create(self, request: Any) -> tuple[int, dict[str, str], str]:
        def handler() -> tuple[int, Any]:
            doc = json.loads(request.body)
            required = [
                "ownerGroup",
                "contactEmail",
                "creationTime",
                "owner",
                "sourceFolder",
                "creationLocation",
                "principalInvestigator",
                "type",
            ]
            missing = [k for k in required if k not in doc]
            if missing:
                return 400, {"statusCode": 400, "message": [f"{k} missing" for k in missing]}
            pid = f"20.500.12269/{uuid.uuid4()}"
            doc["pid"] = pid
            self.datasets[pid] = doc
            return 201, doc

        return self._answer("create", request, handler)

    def patch_dataset(self, request: Any) -> tuple[int, dict[str, str], str]:
        def handler() -> tuple[int, Any]:
            pid = unquote(urlsplit(request.url).path.rsplit("/", 1)[1])
            if pid not in self.datasets:
                return 404, {"statusCode": 404, "message": "Dataset not found"}
            self.datasets[pid].update(json.loads(request.body))
            return 200, self.datasets[pid]

        return self._answer("patch-dataset", request, handler)

    def patch_origdatablock(self, request: Any) -> tuple[int, dict[str, str], str]:
        def handler() -> tuple[int, Any]:
            oid = unquote(urlsplit(request.url).path.rsplit("/", 1)[1])
            for blocks in self.origdatablocks.values():
                for block in blocks:
                    if block["_id"] == oid:
                        block.update(json.loads(request.body))
                        return 200, block
            return 404, {"statusCode": 404, "message": "Datablock not found"}

        return self._answer("patch-origdatablocks", request, handler)

    def _sub(self, kind: str, store: dict[str, list[dict[str, Any]]], request: Any) -> Any:
        def handler() -> tuple[int, Any]:
            pid = self._pid(request)
            if pid not in self.datasets:
                return 404, {"statusCode": 404, "message": "Dataset not found"}
            if request.method == "GET":
                return 200, store.get(pid, [])
            doc = json.loads(request.body)
            need = ["size", "dataFileList"]
            if kind == "datablocks":
                need += ["archiveId", "packedSize", "version"]
            if any(k not in doc for k in need) or not doc["dataFileList"]:
                return 400, {"statusCode": 400, "message": "invalid"}
            if "chkAlg" in doc and not isinstance(doc["chkAlg"], str):
                return 400, {"statusCode": 400, "message": ["chkAlg must be a string"]}
            doc.update(_id=str(uuid.uuid4()), datasetId=pid)
            store.setdefault(pid, []).append(doc)
            return 201, doc

        return self._answer(f"{request.method.lower()}-{kind}", request, handler)

    def register(self, rsps: responses.RequestsMock, base: str = BASE_URL) -> None:
        b = re.escape(base)
        rsps.add_callback("POST", re.compile(b + r"/auth/login(\?.*)?$"), self.login)
        rsps.add_callback("GET", re.compile(b + r"/Datasets(\?.*)?$"), self.find)
        rsps.add_callback("POST", re.compile(b + r"/Datasets(\?.*)?$"), self.create)
        rsps.add_callback("PATCH", re.compile(b + r"/Datasets/[^/?]+(\?.*)?$"), self.patch_dataset)
        rsps.add_callback(
            "PATCH", re.compile(b + r"/OrigDatablocks/[^/?]+(\?.*)?$"), self.patch_origdatablock
        )
        for kind, store in (
            ("origdatablocks", self.origdatablocks),
            ("datablocks", self.datablocks),
        ):
            pattern = re.compile(b + r"/Datasets/[^/?]+/" + kind + r"(\?.*)?$")

            def cb(request: Any, kind: str = kind, store: Any = store) -> Any:
                return self._sub(kind, store, request)

            rsps.add_callback("GET", pattern, cb)
            rsps.add_callback("POST", pattern, cb)


@pytest.fixture
def scicat(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSciCat]:
    """A fake SciCat at BASE_URL; SCICAT_URL + SCICAT_TOKEN set for the functions."""
    for name in ("SCICAT_TOKEN", "SCICAT_TOKEN_FILE", "SCICAT_USERNAME", "SCICAT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCICAT_URL", BASE_URL)
    monkeypatch.setenv("SCICAT_TOKEN", TOKEN)
    fake = FakeSciCat()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake.register(rsps)
        yield fake
