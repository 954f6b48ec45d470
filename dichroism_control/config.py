"""config.yml: pydantic models, `${VAR}` expansion and one-line error messages.

Every error names the key path (``beamlines.bl402.retention_days.cfs: must be >= 0``) so an
operator can fix the file without reading a traceback. Nothing here talks to the network.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dichroism_control.config_yaml import expand_env, read_yaml
from dichroism_control.errors import ConfigError

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# The shipped config.yml uses these so it validates; commands that reach Globus refuse them.
PLACEHOLDER_PREFIX = "00000000-0000-0000-0000-"
FLOW_NAMES = ("new_file", "archive", "prune", "flight_check")
FUNCTION_NAMES = (
    "scicat_ingest",
    "scicat_add_location",
    "hpss_archive",
    "hpss_verify",
    "cfs_verify",
    "flight_check_endpoint",
)
# The flight check's reserved directory, in the watch root and at CFS: never a scan
# (routing.matches refuses it whatever the ignore rules say); the flight_check schema lets
# the flow delete nothing outside it (tools/gen_definitions.py CANARY_DIR).
CANARY_DIR = ".dichroism-canary"
# A flow missing from globus.flows is deployed with this title (configs written before the
# flow existed keep working).
DEFAULT_FLOW_TITLES = {"flight_check": "Dichroism: flight check"}
_PRINCIPAL_RE = re.compile(r"^urn:globus:(auth:identity|groups:id):[0-9a-fA-F-]{36}$")
_SPECIAL_PRINCIPALS = {"public", "all_authenticated_users"}
# What the flow schemas accept as a beamline name (flow_definitions/*.json, BEAMLINE).
BEAMLINE_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
# Globus Timers accepts a start at most one year after the timer is submitted (Timers
# OpenAPI, `POST /jobs/`). A year is read as 365 days, and one day is kept for batching: a
# prune batch collects a whole UTC day of scans and fires at its newest member's retention,
# up to a day after its first member's.
MAX_RETENTION_DAYS = 364

Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]


def _abs_posix(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    if ".." in path.parts:
        raise ValueError("must not contain '..'")
    return str(path)


_NUMBERS: tuple[Any, ...] = (int, float, int | None, float | None)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        # pydantic reads `true` as 1 for an int or float field; in a config that is a typo.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(name), bool) and field.annotation in _NUMBERS:
                    raise ValueError(f"{name}: must be a number, not {str(data[name]).lower()}")
        return data


class Endpoint(Strict):
    """A Globus collection, in the ALS endpoint schema (plus `local_path` for the local backend)."""

    root_path: str
    uri: str
    uuid: Uuid
    name: str
    # Local backend only: the directory standing in for the collection's "/".
    local_path: str = "/"

    _abs = field_validator("root_path")(classmethod(lambda cls, v: _abs_posix(v)))


class Roles(Strict):
    flow_administrators: list[str] = []
    flow_starters: list[str] = []
    flow_viewers: list[str] = []
    run_managers: list[str] = []
    run_monitors: list[str] = []

    @field_validator("*")
    @classmethod
    def _principals(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in _SPECIAL_PRINCIPALS and not _PRINCIPAL_RE.match(value):
                raise ValueError(
                    f"{value!r} is not a principal URN (urn:globus:auth:identity:<id> or "
                    "urn:globus:groups:id:<id>)"
                )
        return values


class ComputeEndpoints(Strict):
    # The NERSC endpoint runs hpss_* and cfs_verify (it sees CFS and reaches HPSS);
    # the SciCat one runs scicat_* (it holds the SciCat credentials in its environment).
    nersc: Uuid
    scicat: Uuid


class FlowSettings(Strict):
    title: str
    subtitle: str = ""
    description: str = ""
    keywords: list[str] = []
    # Pin the flow id so several hosts share one deployment.
    id: Uuid | None = None


class Notifications(Strict):
    """The run's activity_notification_policy: which statuses e-mail the run's owner."""

    status: list[Literal["INACTIVE", "SUCCEEDED", "FAILED"]] = ["INACTIVE", "FAILED"]


class GlobusSettings(Strict):
    endpoints: dict[str, Endpoint]
    compute_endpoints: ComputeEndpoints
    roles: Roles = Roles()
    flows: dict[Literal["new_file", "archive", "prune", "flight_check"], FlowSettings] = {}
    # Pinned Compute function ids, by function name (see FUNCTION_NAMES).
    functions: dict[str, Uuid] = {}
    subscription_id: Uuid | None = None
    notifications: Notifications = Notifications()
    # `public` / `all_authenticated_users` as flow_starters are refused unless this is true.
    allow_public_starters: bool = False
    # GCSv5 mapped collections that the runs' Transfer steps touch need a `data_access`
    # consent in the flow's scope (see auth.scope_requirements): endpoint names, or "all"
    # (every endpoint a beamline uses as source or destination). Guest collections have no
    # data_access scope: asking for one fails the login, so list only mapped collections.
    data_access: list[str] | str = "all"

    @field_validator("data_access", mode="before")
    @classmethod
    def _data_access_names(cls, value: Any, info: ValidationInfo) -> list[str] | str:
        if value == "all":
            return "all"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be `all` or a list of endpoint names, not {value!r}")
        known = info.data.get("endpoints") or {}
        for name in value:
            if name not in known:
                raise ValueError(
                    f"unknown endpoint {name!r} (known: {', '.join(sorted(known)) or 'none'})"
                )
        return value

    @field_validator("functions")
    @classmethod
    def _known_functions(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name not in FUNCTION_NAMES:
                raise ValueError(f"unknown function {name!r} (known: {', '.join(FUNCTION_NAMES)})")
        return value

    @model_validator(mode="after")
    def _endpoint_names(self) -> GlobusSettings:
        for key, endpoint in self.endpoints.items():
            if endpoint.name != key:
                raise ValueError(f"endpoints.{key}.name: must equal its key {key!r}")
        return self


class Watch(Strict):
    root: str
    patterns: list[str] = ["*"]
    ignore: list[str] = [".*", "*.tmp", "*.part", "*~"]
    settle_seconds: float = Field(default=2.0, ge=0)
    poll: bool = False
    poll_interval_seconds: float = Field(default=1.0, gt=0)

    _abs = field_validator("root")(classmethod(lambda cls, v: _abs_posix(v)))


class Retention(Strict):
    compute_dtn: int = Field(default=180, ge=0)
    cfs: int = Field(default=180, ge=0)


class Scicat(Strict):
    instrument_id: str
    owner_group: str
    access_groups: list[str] = []
    owner: str = "ALS"
    contact_email: str = "als-data@lbl.gov"
    principal_investigator: str = "unknown"
    # Which directory level below the watch root names the proposal (1 = first level);
    # 0 means "use default_proposal".
    proposal_depth: int = Field(default=1, ge=0)
    default_proposal: str | None = None


class Beamline(Strict):
    watch: Watch
    source: str
    destination: str
    source_root: str | None = None
    retention_days: Retention = Retention()
    hpss_root: str
    scicat: Scicat

    _abs_hpss = field_validator("hpss_root")(classmethod(lambda cls, v: _abs_posix(v)))

    @field_validator("source_root")
    @classmethod
    def _abs_source_root(cls, value: str | None) -> str | None:
        return None if value is None else _abs_posix(value)

    @property
    def effective_source_root(self) -> str:
        return self.source_root or self.watch.root


class Archive(Strict):
    # Tape wants big objects: bundle small files, send large ones alone (GLOBUS_NOTES: NERSC).
    bundle_max_bytes: int = Field(default=1_000_000_000_000, gt=0)
    single_file_threshold_bytes: int = Field(default=65 * 2**30, gt=0)
    max_hpss_sessions: int = Field(default=4, ge=1, le=15)
    walltime_seconds: int = Field(default=6 * 3600, gt=0)


class Lifecycle(Strict):
    poll_seconds: float = Field(default=60.0, gt=0)
    archive_quiet_seconds: float = Field(default=3600.0, ge=0)
    max_archive_runs_in_flight: int = Field(default=10, ge=1, le=15)
    max_attempts: int = Field(default=3, ge=1)
    # "days" in production; the local demo uses "seconds" so prunes fire while you watch.
    retention_unit: Literal["days", "seconds"] = "days"
    # Prune batches normally close when their UTC day ends; with retention 0 or in seconds
    # mode they close once no scan has joined them for this long (see lifecycle.py).
    prune_batch_quiet_seconds: float = Field(default=60.0, ge=0)
    archive: Archive = Archive()


class Submit(Strict):
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    # new_file runs started and not yet seen finished by the lifecycle. Transfer works on 3
    # transfer tasks per user at a time and queues the rest (docs.globus.org/api/transfer/
    # task_behavior); 12 keeps those 3 busy while other runs are in their stat and SciCat
    # steps, queued at Transfer, or finished but not yet seen (the lifecycle looks once per
    # `lifecycle.poll_seconds`), and keeps a catch-up of thousands of scans in the ledger
    # (`detected`) instead of in Transfer's queue.
    max_runs_in_flight: int = Field(default=12, ge=1)
    # run_flow calls per second, across the process. Transfer allows about 20 API requests
    # per second per user, and every run started makes Transfer requests as the same identity
    # (the action provider's task submission and polling): start at half that.
    max_run_starts_per_second: float = Field(default=10.0, gt=0)


class BacklogAges(Strict):
    """Per stage: the oldest scan waiting longer than this (seconds) is a health problem."""

    detected: float = Field(default=900.0, gt=0)  # not yet sent (retries back off <= 5 min)
    submitting: float = Field(default=900.0, gt=0)  # a run_flow call whose outcome is unknown
    submitted: float = Field(default=86400.0, gt=0)  # a new_file run (transfer + ingest)
    transferred: float = Field(default=172800.0, gt=0)  # waiting for its archive run
    archive_submitted: float = Field(default=172800.0, gt=0)  # an archive run to tape


class Health(Strict):
    """What `status`, `status --check`, `doctor`, alerts and metrics call unhealthy."""

    # `watch` writes a heartbeat into the ledger this often; older than the stale threshold
    # means the watcher is dead or hung.
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    heartbeat_stale_seconds: float = Field(default=60.0, gt=0)
    # No lifecycle pass for this long (keep it above lifecycle.poll_seconds).
    lifecycle_stale_seconds: float = Field(default=900.0, gt=0)
    backlog_age_warn_seconds: BacklogAges = BacklogAges()
    # A copy still not pruned this long after its retention ended.
    prune_overdue_seconds: float = Field(default=172800.0, ge=0)
    # A flight check older than this is a problem (once one has ever run).
    flight_check_max_age_seconds: float = Field(default=86400.0, gt=0)

    @model_validator(mode="after")
    def _stale_after_interval(self) -> Health:
        if self.heartbeat_stale_seconds <= self.heartbeat_seconds:
            raise ValueError(
                "health.heartbeat_stale_seconds: must be greater than health.heartbeat_seconds"
            )
        return self


_APPRISE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Notify(Strict):
    """Alert digests through Apprise. URLs hold secrets: put them in the environment
    (`${DICHROISM_NOTIFY_URL}`); they are never printed or logged."""

    urls: list[str] = []
    # At most one digest per this many minutes (a burst of failures is one message).
    interval_minutes: float = Field(default=60.0, gt=0)
    # Alert on a backlog older than this (seconds) in any stage before archiving; default:
    # the health thresholds (health.backlog_age_warn_seconds).
    backlog_age_seconds: float | None = Field(default=None, gt=0)
    title: str = "dichroism"
    # Items listed per section of a digest (the rest are counted).
    max_items: int = Field(default=20, ge=1)

    @field_validator("urls")
    @classmethod
    def _urls(cls, values: list[str]) -> list[str]:
        # `${VAR:-}` for an optional URL expands to "": no target, not an error.
        kept = [v.strip() for v in values if v.strip()]
        for index, value in enumerate(kept):
            if not _APPRISE_URL.match(value):
                # Never echo the value: it may hold a token.
                raise ValueError(f"entry {index} is not an Apprise URL (scheme://...)")
        return kept


class FlightCheck(Strict):
    """The recurring flight check (a Globus Timer per beamline) and `dichroism check`."""

    enabled: bool = True
    interval_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # How long `dichroism check` waits for its runs before it reports them as unfinished.
    timeout_seconds: float = Field(default=900.0, gt=0)


class Local(Strict):
    """Local backend: where HPSS and the SciCat stand-in live (relative: to config.yml)."""

    hpss_path: str = "local/hpss"
    catalogue_path: str = "local/scicat.sqlite"


class Config(Strict):
    backend: Literal["globus", "local"] = "globus"
    state_dir: str = "~/.local/state/dichroism"
    flow_definitions_dir: str | None = None
    globus: GlobusSettings
    beamlines: dict[str, Beamline]
    lifecycle: Lifecycle = Lifecycle()
    submit: Submit = Submit()
    health: Health = Health()
    notify: Notify = Notify()
    flight_check: FlightCheck = FlightCheck()
    local: Local = Local()
    # Set by load_config, not by the file: the directory relative paths resolve against.
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _retention_bound(self) -> Config:
        seconds_mode = self.lifecycle.retention_unit == "seconds"
        limit = MAX_RETENTION_DAYS * 86400 if seconds_mode else MAX_RETENTION_DAYS
        bound = f"{limit} seconds ({MAX_RETENTION_DAYS} days)" if seconds_mode else f"{limit} days"
        for name, beamline in self.beamlines.items():
            for location in ("compute_dtn", "cfs"):
                if getattr(beamline.retention_days, location) > limit:
                    raise ValueError(
                        f"beamlines.{name}.retention_days.{location}: must be <= {bound}:"
                        " Globus Timers refuses a schedule more than a year out, and a prune"
                        " batch closes only at the end of its UTC day"
                    )
        return self

    @model_validator(mode="after")
    def _references(self) -> Config:
        endpoints = self.globus.endpoints
        for name, beamline in self.beamlines.items():
            for role in ("source", "destination"):
                ref = getattr(beamline, role)
                if ref not in endpoints:
                    raise ValueError(
                        f"beamlines.{name}.{role}: unknown endpoint {ref!r} "
                        f"(known: {', '.join(sorted(endpoints)) or 'none'})"
                    )
        for name in self.beamlines:
            if not BEAMLINE_NAME.match(name):
                raise ValueError(
                    f"beamlines.{name}: a beamline name is 1-32 of a-z 0-9 _ - (the flows'"
                    " input schemas accept nothing else)"
                )
        roots = [(b.watch.root, n) for n, b in self.beamlines.items()]
        for root, name in roots:
            for other_root, other in roots:
                if name != other and PurePosixPath(root).is_relative_to(other_root):
                    raise ValueError(
                        f"beamlines.{name}.watch.root: lies inside beamlines.{other}.watch.root"
                    )
        problem = self._layout_problem()
        if problem:
            raise ValueError(problem)
        return self

    def _layout_problem(self) -> str | None:
        """A destination that overlaps what it copies or another beamline's destination.

        Paths are compared in each collection's own namespace when two roots are in the same
        collection, and as local directories (`local_path` + collection path: the local
        backend, and any collection mounted where the watcher runs) in every case."""
        places: list[tuple[str, str, str, str, str]] = []  # (key, kind, uuid, path, local)
        for name, b in self.beamlines.items():
            src, dst = self.globus.endpoints[b.source], self.globus.endpoints[b.destination]
            source_root = posixpath.join(src.root_path, b.effective_source_root.lstrip("/"))
            places.append((f"beamlines.{name}.watch.root", "watch", "", "", b.watch.root))
            places.append(
                (
                    f"beamlines.{name}.source",
                    "source",
                    src.uuid,
                    source_root,
                    _local(src, source_root),
                )
            )
            places.append(
                (
                    f"beamlines.{name}.destination",
                    "destination",
                    dst.uuid,
                    dst.root_path,
                    _local(dst, dst.root_path),
                )
            )
        for key, kind, uuid, path, local in places:
            if kind != "destination":
                continue
            for other_key, other_kind, other_uuid, other_path, other_local in places:
                if other_key == key:
                    continue
                same = (uuid == other_uuid and _overlap(path, other_path)) or _overlap(
                    local, other_local
                )
                if not same:
                    continue
                what = {
                    "watch": "the watched directory: the copy would land on what it copies",
                    "source": "the source root: the copy would land on what it copies",
                    "destination": "another beamline's destination: one overwrites the other",
                }[other_kind]
                return f"{key}: its root {path} overlaps {other_key} ({what})"
        return None

    def check_watch_roots(self, names: list[str] | None = None) -> None:
        """Each watched root exists and is a directory. `watch` never creates one: an NFS
        share that is not mounted must stop the watcher, not be replaced by an empty
        directory on the local disk."""
        for name in names or sorted(self.beamlines):
            root = self.beamline(name).watch.root
            if not os.path.lexists(root):
                raise ConfigError(
                    f"beamlines.{name}.watch.root: {root} does not exist (not mounted?);"
                    " create or mount it first, `dichroism watch` never creates it"
                )
            if not os.path.isdir(root):
                raise ConfigError(f"beamlines.{name}.watch.root: {root} is not a directory")

    # -- derived paths -------------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        expanded = Path(os.path.expanduser(path))
        return expanded if expanded.is_absolute() else Path(self.base_dir) / expanded

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)

    @property
    def ledger_path(self) -> Path:
        return self.state_path / "ledger.sqlite"

    @property
    def deploy_state_path(self) -> Path:
        return self.state_path / "deploy-state.json"

    @property
    def definitions_path(self) -> Path:
        if self.flow_definitions_dir:
            return self.resolve(self.flow_definitions_dir)
        return Path(__file__).resolve().parent.parent / "flow_definitions"

    def endpoint(self, name: str) -> Endpoint:
        return self.globus.endpoints[name]

    def data_access_endpoints(self) -> list[str]:
        """Names of the collections whose `data_access` consent the runs need, sorted.

        `all` means every endpoint a beamline uses (the only collections our Transfer steps
        touch). Placeholder ids are left out: there is no such scope to consent to yet.
        """
        selected = self.globus.data_access
        if selected == "all":
            names = {n for b in self.beamlines.values() for n in (b.source, b.destination)}
        else:
            names = set(selected)
        return sorted(n for n in names if not self.endpoint(n).uuid.startswith(PLACEHOLDER_PREFIX))

    def data_access_collections(self) -> list[str]:
        """The collection ids of `data_access_endpoints()`, in the same order."""
        return [self.endpoint(name).uuid for name in self.data_access_endpoints()]

    def beamline(self, name: str) -> Beamline:
        try:
            return self.beamlines[name]
        except KeyError:
            known = ", ".join(sorted(self.beamlines))
            raise ConfigError(f"unknown beamline {name!r} (configured: {known})") from None

    def placeholders(self) -> list[str]:
        """Key paths that still hold a placeholder UUID from the shipped config."""
        found: list[str] = []
        for key, endpoint in self.globus.endpoints.items():
            if endpoint.uuid.startswith(PLACEHOLDER_PREFIX):
                found.append(f"globus.endpoints.{key}.uuid")
        for key in ("nersc", "scicat"):
            if getattr(self.globus.compute_endpoints, key).startswith(PLACEHOLDER_PREFIX):
                found.append(f"globus.compute_endpoints.{key}")
        return found

    def warnings(self) -> list[str]:
        """Settings that validate but will hurt on the real service (one line each)."""
        found: list[str] = []
        if self.backend == "globus" and not self.globus.subscription_id:
            # docs.globus.org/api/flows/limits: flows without a subscription expire after 30
            # days, and a user may own only one such flow; we deploy three that live 180 days.
            found.append(
                "globus.subscription_id is not set: flows without a subscription expire after"
                " 30 days and an identity may own only one such flow, so the four flows need"
                " one (docs.globus.org/api/flows/limits)"
            )
        return found

    def require_real_ids(self) -> None:
        found = self.placeholders()
        if found:
            raise ConfigError(
                f"{found[0]}: placeholder UUID; set the real id before talking to Globus"
                + (f" ({len(found) - 1} more placeholder(s))" if len(found) > 1 else "")
            )


def _overlap(a: str, b: str) -> bool:
    """One path equal to, inside, or containing the other (lexically, normalised)."""
    if not a or not b:
        return False
    a, b = posixpath.normpath(a), posixpath.normpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _local(endpoint: Endpoint, path: str) -> str:
    return posixpath.normpath(posixpath.join(endpoint.local_path, path.lstrip("/")))


# -- loading -----------------------------------------------------------------------------
def default_config_path() -> Path:
    return Path(os.environ.get("DICHROISM_CONFIG", "config.yml"))


_MESSAGES: dict[str, str] = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "string_pattern_mismatch": "must be a UUID",
    "literal_error": "must be one of {expected}",
}


def format_validation_error(error: ValidationError) -> str:
    """The first error as one line: ``key.path: message``."""
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    template = _MESSAGES.get(first["type"])
    ctx = first.get("ctx") or {}
    if template is not None:
        message = template.format(**ctx)
    else:
        message = str(first["msg"]).removeprefix("Value error, ")
        # Model-level validators already put the key path in their message.
        if message.startswith(("beamlines.", "endpoints.", "globus.", "health.")):
            return message if not loc or message.startswith(loc) else f"{loc}.{message}"
        # A model validator naming one of its own fields: `field: message`.
        field = re.match(r"^([a-z_]+): ", message)
        if field:
            return f"{loc}.{message}" if loc else message
    more = len(error.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{loc}: {message}{suffix}" if loc else f"{message}{suffix}"


def parse_config(data: Any, *, base_dir: Path) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config: the top level must be a mapping")
    expanded = expand_env(data)
    try:
        return Config.model_validate({**expanded, "base_dir": str(base_dir)})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: Path | str | None = None) -> Config:
    config_path = Path(path) if path is not None else default_config_path()
    data = read_yaml(config_path)
    return parse_config(data, base_dir=config_path.resolve().parent)
