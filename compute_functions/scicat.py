"""Globus Compute functions for SciCat: register a scan, record its tape location.

**The whole module is the registered unit.** Deploy registers this file's full source text
with the function name as entrypoint (globus-compute-sdk ``register_source_code(source,
function_name)``); the endpoint execs that text in a fresh namespace and calls the named
function, so the private module-level ``_helpers`` below travel with each function. Keep
the module self-contained: standard library only at module level, pyscicat / requests /
h5py imported lazily inside functions, and nothing from this project.

Both functions share one small catalogue interface (``_open_catalogue``):

* **SciCat** (``SCICAT_URL`` = ``https://.../api/v3``): pyscicat's ``ScicatClient`` for
  ``datasets_create`` / ``datasets_origdatablock_create`` / ``datasets_origdatablocks_get_one``
  and plain ``requests`` with the same bearer token for what pyscicat 0.4.8 lacks
  (``GET /Datasets?filter=...`` with proper URL encoding, ``GET|POST
  /Datasets/{pid}/datablocks``). Credentials: ``SCICAT_TOKEN``, or ``SCICAT_TOKEN_FILE``,
  or ``SCICAT_USERNAME`` + ``SCICAT_PASSWORD`` (pyscicat's login), from the endpoint's
  environment only. They never appear in results, exceptions or log records: each call
  collects the credentials it sees in its own ``secrets`` list, which ``_scrub`` removes
  from error text.
* **Local stand-in** (``SCICAT_URL`` = ``sqlite:///abs/path/catalogue.sqlite``): NOT
  SciCat. An SQLite file for the offline local demo, storing the same record shapes
  (SciCat field names) as JSON documents in three tables: ``datasets(pid, source_folder,
  dataset_name, doc)``, ``origdatablocks(id, dataset_pid, doc)`` and ``datablocks(id,
  dataset_pid, archive_id, doc)``. Results then say ``"catalogue": "local stand-in"``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import posixpath
import re
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit


def scicat_ingest(
    *,
    beamline: str,
    file_path: str,
    size: int,
    proposal: str | None,
    metadata: dict[str, object],
    checksum: str | None = None,
) -> dict[str, object]:
    """Register one scan (a file on CFS) as a SciCat raw dataset with its OrigDatablock.

    The dataset: ``sourceFolder`` = dirname(file_path), ``datasetName`` = basename,
    ``creationLocation`` = ``/ALS/<beamline>``, owner/groups/instrument/PI/contact from
    ``metadata`` (keys instrument_id, owner_group, access_groups, owner, contact_email,
    principal_investigator), ``proposalId``, ``size``, ``numberOfFiles`` = 1,
    ``creationTime`` = the file's mtime (ISO, UTC) and ``scientificMetadata`` read
    cheaply from the file (HDF5 root attributes and a few dataset shapes when h5py is
    importable; ``#``/``key: value``/``key = value`` headers of text files; otherwise
    basic file facts). The OrigDatablock lists the file with size, time and ``chk`` when
    ``checksum`` is given (``"md5:<hex>"`` or ``"<hex>"``).

    Idempotent: an existing dataset with the same sourceFolder + datasetName is reused;
    if it already has an OrigDatablock nothing is created.

    Returns ``{"pid", "created": bool, "dataset_name", "source_folder",
    "origdatablock_created": bool, "catalogue": "scicat" | "local stand-in"}``.
    Raises ``RuntimeError`` (credentials scrubbed) on any failure.
    """
    secrets: list[str] = []  # credentials seen by this call, scrubbed from errors
    try:
        from pyscicat.model import CreateDatasetOrigDatablockDto, DataFile, RawDataset

        if not isinstance(file_path, str) or not file_path.startswith("/"):
            raise RuntimeError(f"file_path must be an absolute path: {file_path!r}")
        file_path = posixpath.normpath(file_path)
        required = (
            "instrument_id",
            "owner_group",
            "access_groups",
            "owner",
            "contact_email",
            "principal_investigator",
        )
        missing = [k for k in required if k not in (metadata or {})]
        if missing:
            raise RuntimeError(f"metadata is missing {', '.join(missing)}")
        try:
            st = os.stat(file_path)
        except FileNotFoundError:
            raise RuntimeError(f"{file_path} does not exist") from None
        if not os.path.isfile(file_path):
            raise RuntimeError(f"{file_path} is not a regular file")
        if st.st_size != size:
            raise RuntimeError(f"{file_path}: size differs (on disk {st.st_size}, expected {size})")
        source_folder = posixpath.dirname(file_path)
        dataset_name = posixpath.basename(file_path)
        mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC)
        when = mtime.isoformat(timespec="milliseconds").replace("+00:00", "Z")

        with _catalogue(secrets) as cat:
            existing = _find_dataset(cat, file_path)
            created = existing is None
            if existing is None:
                keywords = [beamline] + ([proposal] if proposal else [])
                dataset = RawDataset(
                    ownerGroup=metadata["owner_group"],
                    accessGroups=list(metadata["access_groups"]),
                    owner=metadata["owner"],
                    contactEmail=metadata["contact_email"],
                    principalInvestigator=metadata["principal_investigator"],
                    creationLocation=f"/ALS/{beamline}",
                    instrumentId=metadata["instrument_id"],
                    proposalId=proposal or None,
                    sourceFolder=source_folder,
                    datasetName=dataset_name,
                    description=f"Raw data {dataset_name} from ALS beamline {beamline}",
                    size=size,
                    numberOfFiles=1,
                    creationTime=when,
                    keywords=keywords,
                    scientificMetadata=_scientific_metadata(file_path, st),
                )
                pid = cat.create_dataset(dataset)
            else:
                pid = str(existing["pid"])
            odb_created = False
            if not cat.origdatablocks(pid):
                chk = None
                if checksum:
                    chk = checksum.split(":", 1)[1] if ":" in checksum else checksum
                dto = CreateDatasetOrigDatablockDto(
                    size=size,
                    dataFileList=[DataFile(path=dataset_name, size=size, time=when, chk=chk)],
                )
                cat.create_origdatablock(pid, dto)
                odb_created = True
            label = cat.label
    except Exception as exc:
        raise RuntimeError(
            _scrub(f"scicat_ingest failed for {file_path}: {exc}", secrets)
        ) from None
    return {
        "pid": pid,
        "created": created,
        "origdatablock_created": odb_created,
        "dataset_name": dataset_name,
        "source_folder": source_folder,
        "catalogue": label,
    }


def scicat_add_location(*, beamline: str, manifest: list[dict[str, object]]) -> dict[str, object]:
    """Record the verified tape location of each archived file on its SciCat dataset.

    For every manifest entry of ``hpss_archive`` (``path``, ``cfs_path``, ``size``,
    ``tape_path``, ``member``) the dataset is found as scicat_ingest does (sourceFolder =
    dirname(cfs_path), datasetName = basename) and gets a Datablock (``POST
    /api/v3/Datasets/{pid}/datablocks``) with ``archiveId`` = ``tape_path`` for a single
    file or ``tape_path:member`` for an htar member, ``size`` = ``packedSize`` = file
    size, ``version`` and ``dataFileList`` (member path or file name, size). Idempotent:
    a dataset that already has a datablock with that archiveId is left unchanged.

    All datasets are looked up first: if any is missing, raises ``RuntimeError`` naming the
    files and nothing is written. Returns ``{"updated": [pid], "unchanged": [pid],
    "catalogue": "scicat" | "local stand-in"}``.
    """
    secrets: list[str] = []  # credentials seen by this call, scrubbed from errors
    updated: list[str] = []
    unchanged: list[str] = []
    try:
        if not isinstance(manifest, list) or not manifest:
            raise RuntimeError("manifest is empty: nothing to record")
        for entry in manifest:
            for key in ("cfs_path", "size", "tape_path"):
                if not isinstance(entry, dict) or entry.get(key) in (None, ""):
                    raise RuntimeError(f"manifest entry without {key}: {entry!r}")
        with _catalogue(secrets) as cat:
            found: list[tuple[dict[str, Any], dict[str, Any]]] = []
            missing: list[str] = []
            for entry in manifest:
                cfs_path = posixpath.normpath(str(entry["cfs_path"]))
                ds = _find_dataset(cat, cfs_path)
                if ds is None:
                    missing.append(cfs_path)
                else:
                    found.append((entry, ds))
            if missing:
                more = f" ... and {len(missing) - 20} more" if len(missing) > 20 else ""
                raise RuntimeError(
                    f"no SciCat dataset for {len(missing)} archived file(s) (nothing was"
                    f" recorded): {', '.join(missing[:20])}{more}"
                )
            for entry, ds in found:
                pid = str(ds["pid"])
                member = entry.get("member")
                archive_id = str(entry["tape_path"]) + (f":{member}" if member else "")
                size = int(entry["size"])
                have = {b.get("archiveId") for b in cat.datablocks(pid)}
                if archive_id in have:
                    if pid not in unchanged and pid not in updated:
                        unchanged.append(pid)
                    continue
                body = {
                    "archiveId": archive_id,
                    "size": size,
                    "packedSize": size,
                    "version": "dichroism-flows/1",
                    "dataFileList": [
                        {
                            "path": str(member)
                            if member
                            else posixpath.basename(entry["cfs_path"]),
                            "size": size,
                            "time": datetime.datetime.now(datetime.UTC).isoformat(
                                timespec="milliseconds"
                            ),
                        }
                    ],
                }
                cat.create_datablock(pid, body)
                if pid in unchanged:
                    unchanged.remove(pid)
                if pid not in updated:
                    updated.append(pid)
            label = cat.label
    except Exception as exc:
        raise RuntimeError(
            _scrub(f"scicat_add_location failed ({beamline}): {exc}", secrets)
        ) from None
    return {"updated": updated, "unchanged": unchanged, "catalogue": label}


# --- catalogue client -----------------------------------------------------------------
def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` without the credentials in ``secrets`` (plain or URL-quoted) or in URLs."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
        text = text.replace(quote(secret, safe=""), "***")
    text = re.sub(r"(?i)(access_token|token|password)=[^&\s'\"]+", r"\1=***", text)
    return re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


@contextlib.contextmanager
def _quiet_transport() -> Iterator[None]:
    """Keep urllib3's DEBUG request lines (they carry pyscicat's ?access_token=) out."""
    logger = logging.getLogger("urllib3")
    before = logger.level
    if logger.getEffectiveLevel() < logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(before)


class _SqliteCatalogue:
    """LOCAL STAND-IN for SciCat (offline demo): an SQLite file, SciCat record shapes."""

    label = "local stand-in"

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS datasets (pid TEXT PRIMARY KEY,"
            " source_folder TEXT NOT NULL, dataset_name TEXT NOT NULL, doc TEXT NOT NULL);"
            "CREATE INDEX IF NOT EXISTS datasets_location"
            " ON datasets (source_folder, dataset_name);"
            "CREATE TABLE IF NOT EXISTS origdatablocks (id TEXT PRIMARY KEY,"
            " dataset_pid TEXT NOT NULL, doc TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS datablocks (id TEXT PRIMARY KEY,"
            " dataset_pid TEXT NOT NULL, archive_id TEXT NOT NULL, doc TEXT NOT NULL);"
        )

    @staticmethod
    def _now() -> str:
        return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")

    def _docs(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self.db.execute(sql, args)]

    def find(self, source_folder: str, dataset_name: str) -> list[dict[str, Any]]:
        return self._docs(
            "SELECT doc FROM datasets WHERE source_folder = ? AND dataset_name = ? ORDER BY rowid",
            (source_folder, dataset_name),
        )

    def create_dataset(self, model: Any) -> str:
        doc = model.model_dump(exclude_none=True, mode="json")
        pid = "local/" + str(uuid.uuid4())
        doc.update(pid=pid, createdAt=self._now(), updatedAt=self._now())
        with self.db:
            self.db.execute(
                "INSERT INTO datasets (pid, source_folder, dataset_name, doc) VALUES (?,?,?,?)",
                (pid, doc["sourceFolder"], doc.get("datasetName", ""), json.dumps(doc)),
            )
        return pid

    def _dataset(self, pid: str) -> dict[str, Any]:
        docs = self._docs("SELECT doc FROM datasets WHERE pid = ?", (pid,))
        if not docs:
            raise RuntimeError(f"dataset {pid} not found in the local stand-in catalogue")
        return docs[0]

    def origdatablocks(self, pid: str) -> list[dict[str, Any]]:
        return self._docs(
            "SELECT doc FROM origdatablocks WHERE dataset_pid = ? ORDER BY rowid", (pid,)
        )

    def _belonging_to(self, pid: str, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` as a new record of dataset ``pid``: id, the dataset's groups, time."""
        ds = self._dataset(pid)
        doc.update(
            _id=str(uuid.uuid4()),
            datasetId=pid,
            ownerGroup=ds["ownerGroup"],
            accessGroups=ds.get("accessGroups", []),
            createdAt=self._now(),
        )
        return doc

    def create_origdatablock(self, pid: str, model: Any) -> dict[str, Any]:
        doc = self._belonging_to(pid, model.model_dump(exclude_none=True, mode="json"))
        with self.db:
            self.db.execute(
                "INSERT INTO origdatablocks (id, dataset_pid, doc) VALUES (?,?,?)",
                (doc["_id"], pid, json.dumps(doc)),
            )
        return doc

    def datablocks(self, pid: str) -> list[dict[str, Any]]:
        return self._docs("SELECT doc FROM datablocks WHERE dataset_pid = ? ORDER BY rowid", (pid,))

    def create_datablock(self, pid: str, body: dict[str, Any]) -> dict[str, Any]:
        doc = self._belonging_to(pid, dict(body))
        with self.db:
            self.db.execute(
                "INSERT INTO datablocks (id, dataset_pid, archive_id, doc) VALUES (?,?,?,?)",
                (doc["_id"], pid, doc["archiveId"], json.dumps(doc)),
            )
        return doc

    def close(self) -> None:
        self.db.close()


class _HttpCatalogue:
    """SciCat v3 REST API (pyscicat where it has the call, requests otherwise)."""

    label = "scicat"

    def __init__(self, base_url: str, secrets: list[str]) -> None:
        import requests
        from pyscicat.client import ScicatClient, get_token

        self.requests = requests
        self.base = base_url.rstrip("/")
        parts = urlsplit(self.base)
        secrets.extend(p for p in (parts.password, parts.username) if p)
        token = os.environ.get("SCICAT_TOKEN", "").strip()
        token_file = os.environ.get("SCICAT_TOKEN_FILE", "").strip()
        user = os.environ.get("SCICAT_USERNAME", "")
        password = os.environ.get("SCICAT_PASSWORD", "")
        secrets.extend(s for s in (token, password) if s)
        if not token and token_file:
            try:
                with open(token_file, encoding="utf-8") as fh:
                    token = fh.read().strip()
            except OSError as exc:
                raise RuntimeError(
                    f"cannot read SCICAT_TOKEN_FILE {token_file}: {exc.strerror}"
                ) from None
            secrets.append(token)
        if not token:
            if not (user and password):
                raise RuntimeError(
                    "SciCat credentials missing: set SCICAT_TOKEN, SCICAT_TOKEN_FILE or"
                    " SCICAT_USERNAME and SCICAT_PASSWORD in the endpoint's environment"
                )
            token = str(get_token(self.base, user, password))  # pyscicat's login
            secrets.append(token)
        if not token:
            raise RuntimeError("SciCat login returned no token")
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.client = ScicatClient(base_url=self.base, token=token, timeout_seconds=60)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self.base + "/" + path
        resp = self.requests.request(method, url, headers=self.headers, timeout=60, **kwargs)
        if not resp.ok:
            raise RuntimeError(
                f"SciCat {method} /{path.split('?')[0]} answered HTTP {resp.status_code}:"
                f" {resp.text[:500]}"
            )
        return resp.json() if resp.content else None

    def find(self, source_folder: str, dataset_name: str) -> list[dict[str, Any]]:
        where = {"sourceFolder": source_folder, "datasetName": dataset_name}
        found = self._call("GET", "Datasets", params={"filter": json.dumps({"where": where})})
        return list(found or [])

    def create_dataset(self, model: Any) -> str:
        return str(self.client.datasets_create(model))

    def origdatablocks(self, pid: str) -> list[dict[str, Any]]:
        return list(self.client.datasets_origdatablocks_get_one(pid) or [])

    def create_origdatablock(self, pid: str, model: Any) -> dict[str, Any]:
        return dict(self.client.datasets_origdatablock_create(pid, model))

    def datablocks(self, pid: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"Datasets/{quote(pid, safe='')}/datablocks") or [])

    def create_datablock(self, pid: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"Datasets/{quote(pid, safe='')}/datablocks"
        return dict(self._call("POST", path, json=body) or {})

    def close(self) -> None:
        pass


def _open_catalogue(secrets: list[str]) -> _SqliteCatalogue | _HttpCatalogue:
    """The catalogue ``SCICAT_URL`` names; credentials it uses are added to ``secrets``."""
    url = os.environ.get("SCICAT_URL", "").strip()
    if not url:
        raise RuntimeError("SCICAT_URL is not set in the Compute endpoint's environment")
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        path = path[2:] if path.startswith("//") else path
        path = path[1:] if path.startswith("//") else path
        if not path.startswith("/"):
            raise RuntimeError("a sqlite: SCICAT_URL needs an absolute path")
        return _SqliteCatalogue(path)
    secrets.append(url)
    return _HttpCatalogue(url, secrets)


@contextlib.contextmanager
def _catalogue(secrets: list[str]) -> Iterator[_SqliteCatalogue | _HttpCatalogue]:
    """The open catalogue (see ``_open_catalogue``), quiet transport, closed afterwards."""
    with _quiet_transport():
        cat = _open_catalogue(secrets)
        try:
            yield cat
        finally:
            cat.close()


def _find_dataset(cat: _SqliteCatalogue | _HttpCatalogue, cfs_path: str) -> dict[str, Any] | None:
    source_folder = posixpath.dirname(cfs_path)
    name = posixpath.basename(cfs_path)
    found = [
        d
        for d in cat.find(source_folder, name)
        if d.get("sourceFolder") == source_folder and d.get("datasetName") == name
    ]
    return found[0] if found else None


# --- scientific metadata ---------------------------------------------------------------
def _jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON value for SciCat (numpy scalars/arrays, bytes, nested containers)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | bool | int | float) or value is None:
        if isinstance(value, float) and value != value:  # NaN is not JSON
            return None
        return value
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        if getattr(value, "size", 0) > 32:
            return {"shape": list(value.shape), "dtype": str(getattr(value, "dtype", ""))}
        return _jsonable(value.tolist(), depth + 1)
    if hasattr(value, "item"):
        return _jsonable(value.item(), depth + 1)
    if isinstance(value, list | tuple) and depth < 4:
        return [_jsonable(v, depth + 1) for v in list(value)[:32]]
    if isinstance(value, dict) and depth < 4:
        return {str(k): _jsonable(v, depth + 1) for k, v in list(value.items())[:64]}
    return str(value)[:500]


def _scientific_metadata(path: str, st: os.stat_result) -> dict[str, Any]:
    ext = os.path.splitext(path)[1].lower()
    facts: dict[str, Any] = {
        "file": {
            "name": os.path.basename(path),
            "extension": ext,
            "size_bytes": st.st_size,
            "modified": datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC).isoformat(),
        }
    }
    if ext in (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".he5"):
        try:
            import h5py
        except ImportError:
            facts["reader"] = "h5py not importable: basic facts only"
            return facts
        try:
            with h5py.File(path, "r") as h5:
                facts["hdf5_attributes"] = {
                    str(k): _jsonable(v) for k, v in list(h5.attrs.items())[:64]
                }
                shapes: dict[str, Any] = {}

                def visit(name: str, obj: Any) -> bool | None:
                    if isinstance(obj, h5py.Dataset):
                        shapes[name] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
                    return True if len(shapes) >= 20 else None

                h5.visititems(visit)
                facts["hdf5_datasets"] = shapes
        except Exception as exc:
            facts["reader"] = f"HDF5 not readable: {type(exc).__name__}"
        return facts
    if ext in (".txt", ".dat", ".csv", ".xy", ".tsv", ".log"):
        header: dict[str, Any] = {}
        comments: list[str] = []
        pattern = re.compile(r"^\s*([A-Za-z_][\w .()/-]{0,63}?)\s*[:=]\s*(.*?)\s*$")
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for lineno, line in enumerate(fh):
                    if lineno >= 100 or len(header) >= 64:
                        break
                    is_comment = line.lstrip().startswith("#")
                    text = line.strip().lstrip("#").strip() if is_comment else line.strip()
                    m = pattern.match(text)
                    if m:
                        header[m.group(1).strip()] = m.group(2)[:500]
                    elif is_comment:
                        if text and len(comments) < 10:
                            comments.append(text[:500])
                    elif text:
                        break  # first data line ends the header
        except OSError as exc:
            facts["reader"] = f"text not readable: {exc.strerror}"
            return facts
        facts["header"] = header
        if comments:
            facts["header_comments"] = comments
    return facts
