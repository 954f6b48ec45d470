"""Globus Compute functions for SciCat: register a scan, record its tape location.

**The whole module is the registered unit.** Deploy registers this file's full source text
with the function name as entrypoint (globus-compute-sdk ``register_source_code(source,
function_name)``); the endpoint execs that text in a fresh namespace and calls the named
function, so the private module-level ``_helpers`` below travel with each function. Keep
the module self-contained: standard library only at module level, pyscicat / requests /
h5py imported lazily inside functions, and nothing from this project.

Both functions share one small catalogue interface (``_open_catalogue``):

* **SciCat** (``SCICAT_URL`` = ``https://.../api/v3``): pyscicat 0.4.8 where it has the
  call (``get_token`` login, ``datasets_create``, ``datasets_origdatablocks_get_one``) and
  plain ``requests`` with the same bearer token for the rest: ``GET /Datasets?filter=...``
  (proper URL encoding), ``POST /Datasets/{pid}/origdatablocks`` (pyscicat's model types
  ``chkAlg`` as an int; SciCat takes ``"md5"``), ``PATCH /OrigDatablocks/{id}`` and
  ``PATCH /Datasets/{pid}`` (pyscicat has no datablock update, and its ``datasets_update``
  re-sends a whole Dataset model), ``GET|POST /Datasets/{pid}/datablocks``. Credentials:
  ``SCICAT_TOKEN``, or ``SCICAT_TOKEN_FILE``, or ``SCICAT_USERNAME`` + ``SCICAT_PASSWORD``
  (pyscicat's login), from the endpoint's environment only. They never appear in results,
  exceptions or log records: each call collects the credentials it sees in its own
  ``secrets`` list, which ``_scrub`` removes from error text, and pyscicat's and the HTTP
  stack's loggers are silenced for the call (pyscicat logs a failed login's answer, which
  can echo the password, and sends the token in every URL, which urllib3 logs).
* **Local stand-in** (``SCICAT_URL`` = ``sqlite:///abs/path/catalogue.sqlite``): NOT
  SciCat. An SQLite file for the offline local demo, storing the same record shapes
  (SciCat field names) as JSON documents in three tables: ``datasets(pid, source_folder,
  dataset_name, doc)``, ``origdatablocks(id, dataset_pid, doc)`` and ``datablocks(id,
  dataset_pid, archive_id, doc)``.
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
from typing import Any, TypeGuard
from urllib.parse import quote, quote_plus, urlsplit


def scicat_ingest(
    *,
    beamline: str,
    file_path: str,
    size: int,
    proposal: str | None,
    metadata: dict[str, object],
    checksum: str,
    version: int,
) -> dict[str, object]:
    """Register one scan (a file on CFS) as a SciCat raw dataset, or record its new version.

    The dataset: ``sourceFolder`` = dirname(file_path), ``datasetName`` = basename,
    ``creationLocation`` = ``/ALS/<beamline>``, owner/groups/instrument/PI/contact from
    ``metadata`` (keys instrument_id, owner_group, access_groups, owner, contact_email,
    principal_investigator), ``proposalId``, ``size``, ``numberOfFiles`` = 1,
    ``creationTime`` = the file's mtime (ISO, UTC) and ``scientificMetadata`` read
    cheaply from the file (HDF5 root attributes and a few dataset shapes when h5py is
    importable; ``#``/``key: value``/``key = value`` headers of text files; otherwise
    basic file facts) plus ``file_versions``: ``[{"version", "checksum", "size",
    "recorded"}]``. Its OrigDatablock (``chkAlg`` = ``"md5"``) lists the file with size,
    time and ``chk`` = ``checksum`` (MD5 hex recorded at detection).

    ``version`` (>= 1) is the n-th distinct content seen at this path. A newer version of
    a known dataset makes SciCat point at the new content: the OrigDatablock's file entry
    gets the new size/chk (``PATCH /OrigDatablocks/{id}``), the dataset the new ``size``
    and the version appended to ``file_versions`` (``PATCH /Datasets/{pid}``). An older
    version arriving late is only added to ``file_versions``. The same version again is a
    no-op; the same version with another checksum is refused (raise).

    Returns ``{"pid", "created": bool, "updated": bool, "dataset_name",
    "source_folder"}``. Raises ``RuntimeError`` (credentials scrubbed) on any failure.
    """
    secrets: list[str] = []  # credentials seen by this call, scrubbed from errors
    try:
        if not isinstance(file_path, str) or not file_path.startswith("/"):
            raise RuntimeError(f"file_path must be an absolute path: {file_path!r}")
        file_path = posixpath.normpath(file_path)
        _check_file_facts(file_path, size, checksum, version)
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
        groups = metadata["access_groups"]
        if not isinstance(groups, list):
            raise RuntimeError("metadata.access_groups must be a list of group names")
        source_folder = posixpath.dirname(file_path)
        dataset_name = posixpath.basename(file_path)
        record = {"version": version, "checksum": checksum, "size": size, "recorded": _now()}

        with _catalogue(secrets) as cat:
            existing = _find_dataset(cat, file_path)
            if existing is None:
                from pyscicat.model import RawDataset

                st, when = _file_on_disk(file_path, size)
                scientific = _scientific_metadata(file_path, st)
                scientific["file_versions"] = [record]
                keywords = [beamline] + ([proposal] if proposal else [])
                dataset = RawDataset(
                    ownerGroup=metadata["owner_group"],
                    accessGroups=[str(g) for g in groups],
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
                    scientificMetadata=scientific,
                )
                pid = cat.create_dataset(dataset)
                cat.create_origdatablock(pid, _origdatablock(dataset_name, size, when, checksum))
                created, updated = True, False
            else:
                pid = str(existing["pid"])
                created = False
                updated = _record_version(cat, existing, file_path, record)
    except Exception as exc:
        raise RuntimeError(
            _scrub(f"scicat_ingest failed for {file_path}: {exc}", secrets)
        ) from None
    return {
        "pid": pid,
        "created": created,
        "updated": updated,
        "dataset_name": dataset_name,
        "source_folder": source_folder,
    }


def scicat_add_location(
    *,
    beamline: str,
    cfs_root: str,
    hpss_dir: str,
    files: list[dict[str, object]],
    archive: dict[str, object],
) -> dict[str, object]:
    """Record the verified tape location of each archived file on its SciCat dataset.

    ``files`` is hpss_archive's input list (``path`` relative to ``cfs_root``, ``size``,
    ``checksum``, ``version``), ``archive`` its result. File ``i`` with
    ``archive["where"][i]`` = -1 is a single at ``{hpss_dir}/{rel}`` (version 1) or
    ``{hpss_dir}/{rel}@v{version}``; with ``k`` >= 0 it is member ``rel`` of
    ``archive["archives"][k]``; ``None`` (not archived) is skipped. Its dataset (found as
    scicat_ingest makes it: sourceFolder = ``{cfs_root}/{dirname(rel)}``, datasetName =
    basename) gets a Datablock (``POST /Datasets/{pid}/datablocks``) with ``archiveId``
    = the single's tape path or ``<archive>:<member>``, ``size`` = ``packedSize``,
    ``chkAlg`` = ``"md5"`` and one file entry with ``chk`` = the version's checksum, so
    each tape copy says which content it holds. Idempotent: a dataset that already has a
    datablock with that archiveId is left unchanged.

    Returns counts only: ``{"updated": n, "unchanged": n, "missing": n}`` (files whose
    dataset was not found are counted in ``missing`` and skipped). Raises
    ``RuntimeError`` on malformed input or any SciCat failure.
    """
    secrets: list[str] = []  # credentials seen by this call, scrubbed from errors
    updated = unchanged = missing = 0
    try:
        locations = _tape_locations(cfs_root, hpss_dir, files, archive)
        with _catalogue(secrets) as cat:
            have: dict[str, set[str]] = {}
            for loc in locations:
                ds = _find_dataset(cat, loc["cfs_path"])
                if ds is None:
                    missing += 1
                    continue
                pid = str(ds["pid"])
                if pid not in have:
                    have[pid] = {str(b.get("archiveId")) for b in cat.datablocks(pid)}
                if loc["archive_id"] in have[pid]:
                    unchanged += 1
                    continue
                cat.create_datablock(
                    pid,
                    {
                        "archiveId": loc["archive_id"],
                        "size": loc["size"],
                        "packedSize": loc["size"],
                        "chkAlg": "md5",
                        "version": "dichroism-flows/1",
                        "dataFileList": [
                            {
                                "path": loc["file"],
                                "size": loc["size"],
                                "time": _now(),
                                "chk": loc["checksum"],
                            }
                        ],
                    },
                )
                have[pid].add(loc["archive_id"])
                updated += 1
    except Exception as exc:
        raise RuntimeError(
            _scrub(f"scicat_add_location failed ({beamline}): {exc}", secrets)
        ) from None
    return {"updated": updated, "unchanged": unchanged, "missing": missing}


# --- versions and locations --------------------------------------------------------------
_MD5_HEX = re.compile(r"[0-9a-f]{32}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_file_facts(what: str, size: object, checksum: object, version: object) -> None:
    problems = []
    if not _is_int(size) or size < 0:
        problems.append(f"size {size!r} is not an integer >= 0")
    if not isinstance(checksum, str) or not _MD5_HEX.fullmatch(checksum):
        problems.append("checksum is not 32 lowercase hex digits (MD5)")
    if not _is_int(version) or version < 1:
        problems.append(f"version {version!r} is not an integer >= 1")
    if problems:
        raise RuntimeError(f"{what}: {', '.join(problems)}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _file_on_disk(file_path: str, size: int) -> tuple[os.stat_result, str]:
    """The file's stat and mtime (ISO, UTC); raises unless it is a regular file of ``size``."""
    try:
        st = os.stat(file_path)
    except FileNotFoundError:
        raise RuntimeError(f"{file_path} does not exist") from None
    if not os.path.isfile(file_path):
        raise RuntimeError(f"{file_path} is not a regular file")
    if st.st_size != size:
        raise RuntimeError(f"{file_path}: size differs (on disk {st.st_size}, expected {size})")
    mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC)
    return st, mtime.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _origdatablock(name: str, size: int, when: str, checksum: str) -> dict[str, Any]:
    """OrigDatablock body for one file, shaped by pyscicat's model. pyscicat 0.4.8 types
    ``chkAlg`` as an int while SciCat takes the algorithm's name, so it is added here."""
    from pyscicat.model import CreateDatasetOrigDatablockDto, DataFile

    dto = CreateDatasetOrigDatablockDto(
        size=size, dataFileList=[DataFile(path=name, size=size, time=when, chk=checksum)]
    )
    body: dict[str, Any] = dto.model_dump(exclude_none=True, mode="json")
    body["chkAlg"] = "md5"
    return body


def _record_version(
    cat: _SqliteCatalogue | _HttpCatalogue,
    dataset: dict[str, Any],
    file_path: str,
    record: dict[str, Any],
) -> bool:
    """Bring a known dataset up to ``record``'s version; True if anything was written."""
    pid = str(dataset["pid"])
    name = posixpath.basename(file_path)
    scientific = dict(dataset.get("scientificMetadata") or {})
    versions = [v for v in scientific.get("file_versions") or [] if isinstance(v, dict)]
    known = {v.get("version"): v for v in versions}
    same = known.get(record["version"])
    if same is not None and same.get("checksum") != record["checksum"]:
        raise RuntimeError(
            f"{file_path}: version {record['version']} is already recorded with checksum"
            f" {same.get('checksum')}, not {record['checksum']}; refusing to change it"
        )
    newest = max((v for v in known if _is_int(v)), default=0)
    fields: dict[str, Any] = {}
    if same is None:
        scientific["file_versions"] = [*versions, record]
        fields["scientificMetadata"] = scientific
    if record["version"] < newest:
        # an older version arriving late: history only, SciCat keeps the newest content
        if fields:
            cat.update_dataset(pid, fields)
        return bool(fields)

    _, when = _file_on_disk(file_path, record["size"])
    body = _origdatablock(name, record["size"], when, record["checksum"])
    wrote = False
    current = None
    for odb in cat.origdatablocks(pid):
        entries = odb.get("dataFileList") or []
        if any(isinstance(f, dict) and f.get("path") == name for f in entries):
            current = odb
            break
    if current is None:
        cat.create_origdatablock(pid, body)
        wrote = True
    else:
        entry = next(
            f for f in current["dataFileList"] if isinstance(f, dict) and f.get("path") == name
        )
        if entry.get("chk") != record["checksum"] or entry.get("size") != record["size"]:
            # the datablock first: SciCat adjusts the dataset size by the datablock's change,
            # then the absolute size below makes the result right either way
            cat.update_origdatablock(pid, str(current.get("_id") or current.get("id")), body)
            wrote = True
    if dataset.get("size") != record["size"]:
        fields["size"] = record["size"]
    if fields:
        cat.update_dataset(pid, fields)
        wrote = True
    return wrote


def _tape_locations(
    cfs_root: object, hpss_dir: object, files: object, archive: object
) -> list[dict[str, Any]]:
    """Where each archived file is on tape (archive id, file entry, size, checksum)."""
    for value, what in ((cfs_root, "cfs_root"), (hpss_dir, "hpss_dir")):
        if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
            raise RuntimeError(f"{what} must be an absolute path without '..': {value!r}")
    cfs = posixpath.normpath(str(cfs_root))
    hpss = posixpath.normpath(str(hpss_dir))
    if not isinstance(files, list) or not files:
        raise RuntimeError("files is empty: nothing to record")
    archives = archive.get("archives") if isinstance(archive, dict) else None
    where = archive.get("where") if isinstance(archive, dict) else None
    if not isinstance(archives, list) or not isinstance(where, list) or len(where) != len(files):
        raise RuntimeError(
            "archive must be hpss_archive's result, with 'archives' and one 'where' per file"
        )
    for k, path in enumerate(archives):
        if not isinstance(path, str) or not path.startswith(hpss.rstrip("/") + "/"):
            raise RuntimeError(f"archive #{k} {path!r} is not inside hpss_dir {hpss}")
    locations: list[dict[str, Any]] = []
    refused: list[str] = []
    for i, (item, w) in enumerate(zip(files, where, strict=True)):
        if w is None:
            continue
        raw = item.get("path") if isinstance(item, dict) else None
        rel = posixpath.normpath(raw) if isinstance(raw, str) else ""
        if (
            not rel
            or rel == "."
            or rel.startswith(("/", "../"))
            or ".." in rel.split("/")
            or "\x00" in rel
            or "\n" in rel
        ):
            refused.append(f"#{i} {str(raw)[:200]!r}: not a safe relative path")
            continue
        try:
            _check_file_facts(
                f"#{i} {rel}", item.get("size"), item.get("checksum"), item.get("version")
            )
        except RuntimeError as exc:
            refused.append(str(exc))
            continue
        if not _is_int(w) or not (w == -1 or 0 <= w < len(archives)):
            refused.append(f"#{i} {rel}: where {w!r} is neither -1, null nor an archive index")
            continue
        version = item["version"]
        if w == -1:
            tape = f"{hpss}/{rel}" + (f"@v{version}" if version >= 2 else "")
            archive_id, file_entry = tape, posixpath.basename(rel)
        else:
            archive_id, file_entry = f"{archives[w]}:{rel}", rel
        locations.append(
            {
                "cfs_path": f"{cfs}/{rel}",
                "archive_id": archive_id,
                "file": file_entry,
                "size": item["size"],
                "checksum": item["checksum"],
            }
        )
    if refused:
        more = f"; ... and {len(refused) - 20} more" if len(refused) > 20 else ""
        raise RuntimeError(
            f"{len(refused)} of {len(files)} file(s) refused (nothing was recorded): "
            + "; ".join(refused[:20])
            + more
        )
    return locations


# --- catalogue client -----------------------------------------------------------------
def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` without the credentials in ``secrets`` (as they appear plain, URL-quoted,
    JSON-escaped or in a bytes repr) and without tokens or passwords in URLs."""
    forms: set[str] = set()
    for secret in (s for s in secrets if s and len(s) >= 4):
        forms |= {
            secret,
            quote(secret, safe=""),
            quote_plus(secret),
            json.dumps(secret)[1:-1],
            repr(secret.encode())[2:-1],
        }
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    text = re.sub(r"(?i)(access_token|token|password)=[^&\s'\"]+", r"\1=***", text)
    return re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


# pyscicat logs the server's answer to a failed login (which can echo the credentials) and
# puts the token in every request URL, which urllib3 logs at DEBUG.
_NOISY_LOGGERS = ("pyscicat", "urllib3", "urllib3.connectionpool", "requests")


class _ScrubFilter(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _scrub(record.getMessage(), self.secrets)
        record.args = None
        return True


@contextlib.contextmanager
def _quiet_transport(secrets: list[str]) -> Iterator[None]:
    """Silence pyscicat's and the HTTP stack's loggers for the call; anything that still
    gets through (a level lowered meanwhile) is scrubbed of ``secrets``."""
    saved: list[tuple[logging.Logger, int]] = []
    scrubber = _ScrubFilter(secrets)
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.CRITICAL + 1)
        logger.addFilter(scrubber)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
            logger.removeFilter(scrubber)


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

    def create_origdatablock(self, pid: str, body: dict[str, Any]) -> dict[str, Any]:
        doc = self._belonging_to(pid, dict(body))
        with self.db:
            self.db.execute(
                "INSERT INTO origdatablocks (id, dataset_pid, doc) VALUES (?,?,?)",
                (doc["_id"], pid, json.dumps(doc)),
            )
        return doc

    def update_origdatablock(self, pid: str, oid: str, body: dict[str, Any]) -> dict[str, Any]:
        docs = self._docs(
            "SELECT doc FROM origdatablocks WHERE id = ? AND dataset_pid = ?", (oid, pid)
        )
        if not docs:
            raise RuntimeError(f"origdatablock {oid} of {pid} not found in the local stand-in")
        doc = {**docs[0], **body, "updatedAt": self._now()}
        with self.db:
            self.db.execute(
                "UPDATE origdatablocks SET doc = ? WHERE id = ?", (json.dumps(doc), oid)
            )
        return doc

    def update_dataset(self, pid: str, fields: dict[str, Any]) -> None:
        doc = {**self._dataset(pid), **fields, "updatedAt": self._now()}
        with self.db:
            self.db.execute("UPDATE datasets SET doc = ? WHERE pid = ?", (json.dumps(doc), pid))

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

    def create_origdatablock(self, pid: str, body: dict[str, Any]) -> dict[str, Any]:
        # not pyscicat's datasets_origdatablock_create: its model cannot carry chkAlg="md5"
        path = f"Datasets/{quote(pid, safe='')}/origdatablocks"
        return dict(self._call("POST", path, json=body) or {})

    def update_origdatablock(self, pid: str, oid: str, body: dict[str, Any]) -> dict[str, Any]:
        # pyscicat 0.4.8 has no call for this; SciCat's PATCH also re-sums the dataset size
        del pid  # the datablock id alone names it
        return dict(self._call("PATCH", f"OrigDatablocks/{quote(oid, safe='')}", json=body) or {})

    def update_dataset(self, pid: str, fields: dict[str, Any]) -> None:
        # pyscicat's datasets_update PATCHes a whole Dataset model; send only what changes
        self._call("PATCH", f"Datasets/{quote(pid, safe='')}", json=fields)

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
    with _quiet_transport(secrets):
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
