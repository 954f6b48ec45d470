"""config.yml: pydantic models, `${VAR}` expansion and one-line error messages.

Every error names the key path (``beamlines.bl402.retention_days.cfs: must be >= 0``) so an
operator can fix the file without reading a traceback. Nothing here talks to the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dichroism_control.errors import ConfigError

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# The shipped config.yml uses these so it validates; commands that reach Globus refuse them.
PLACEHOLDER_PREFIX = "00000000-0000-0000-0000-"
FLOW_NAMES = ("new_file", "archive", "prune")
FUNCTION_NAMES = (
    "scicat_ingest",
    "scicat_add_location",
    "hpss_archive",
    "hpss_verify",
    "cfs_verify",
)
_PRINCIPAL_RE = re.compile(r"^urn:globus:(auth:identity|groups:id):[0-9a-fA-F-]{36}$")
_SPECIAL_PRINCIPALS = {"public", "all_authenticated_users"}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]


def _abs_posix(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    if ".." in path.parts:
        raise ValueError("must not contain '..'")
    return str(path)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    flows: dict[Literal["new_file", "archive", "prune"], FlowSettings] = {}
    # Pinned Compute function ids, by function name (see FUNCTION_NAMES).
    functions: dict[str, Uuid] = {}
    subscription_id: Uuid | None = None
    notifications: Notifications = Notifications()
    # `public` / `all_authenticated_users` as flow_starters are refused unless this is true.
    allow_public_starters: bool = False

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
    local: Local = Local()
    # Set by load_config, not by the file: the directory relative paths resolve against.
    base_dir: str = Field(default=".", exclude=True)

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
        roots = [(b.watch.root, n) for n, b in self.beamlines.items()]
        for root, name in roots:
            for other_root, other in roots:
                if name != other and PurePosixPath(root).is_relative_to(other_root):
                    raise ValueError(
                        f"beamlines.{name}.watch.root: lies inside beamlines.{other}.watch.root"
                    )
        return self

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

    def require_real_ids(self) -> None:
        found = self.placeholders()
        if found:
            raise ConfigError(
                f"{found[0]}: placeholder UUID; set the real id before talking to Globus"
                + (f" ({len(found) - 1} more placeholder(s))" if len(found) > 1 else "")
            )


# -- loading -----------------------------------------------------------------------------
def default_config_path() -> Path:
    return Path(os.environ.get("DICHROISM_CONFIG", "config.yml"))


def _expand_env(node: Any, where: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{where}.{i}") for i, v in enumerate(node)]
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if value is None:
                if default is None:
                    raise ConfigError(f"{where}: environment variable {name} is not set")
                return default
            return value

        return _ENV_RE.sub(substitute, node)
    return node


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
    more = len(error.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{loc}: {message}{suffix}" if loc else f"{message}{suffix}"


def parse_config(data: Any, *, base_dir: Path) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config: the top level must be a mapping")
    expanded = _expand_env(data, "")
    try:
        return Config.model_validate({**expanded, "base_dir": str(base_dir)})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: Path | str | None = None) -> Config:
    config_path = Path(path) if path is not None else default_config_path()
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{config_path}:{where} not valid YAML") from None
    return parse_config(data, base_dir=config_path.resolve().parent)
