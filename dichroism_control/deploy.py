"""`dichroism deploy`: register the Compute functions and publish the flows, checksum-gated.

Functions first (the flows take function ids in their input, so flows never embed them):
each function is identified by a sha256 of its name and source text (not of dill bytes, so a
new Python or dill version does not re-register) and registered only when that changed or no
id is known. Pinned ids in config.yml are used as they are.

Then each flow: the specialised definition must pass `validate_document`; its checksum
covers the canonical definition, input schema, metadata and roles. With no known id the flow
is created. With a known id the service's document is fetched and compared with two
baselines kept in the deploy state: what we sent (local change -> update, with a short
diff) and what the service answered after our last write (remote change -> drift, which only
`force` overwrites). A 404 recreates the flow. Nothing changed -> no write at all.

Only the `Backend` protocol is used, so this is the same code for Globus and the local backend.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dichroism_control.binding import specialise
from dichroism_control.config import FLOW_NAMES, FUNCTION_NAMES, Config
from dichroism_control.definitions import (
    FlowDocument,
    canonical,
    load_all,
    validate_document,
)
from dichroism_control.errors import ConfigError, DefinitionError

if TYPE_CHECKING:
    from dichroism_control.backend import Backend, FlowSpec
    from dichroism_control.deploy_state import DeployState

# Which module of `compute_functions` holds each function.
FUNCTION_MODULES: dict[str, str] = {
    "scicat_ingest": "scicat",
    "scicat_add_location": "scicat",
    "hpss_archive": "hpss",
    "hpss_verify": "hpss",
    "cfs_verify": "cfs",
    "flight_check_endpoint": "flight",
}
SPECIAL_STARTERS = ("public", "all_authenticated_users")
ROLE_FIELDS = (
    "flow_administrators",
    "flow_starters",
    "flow_viewers",
    "run_managers",
    "run_monitors",
)
FLOW_FIELDS = (
    "definition",
    "input_schema",
    "title",
    "subtitle",
    "description",
    "keywords",
    "subscription_id",
    *ROLE_FIELDS,
)
DIFF_ORDER = (
    "title",
    "subtitle",
    "description",
    "keywords",
    "subscription_id",
    *ROLE_FIELDS,
    "input_schema",
    "definition",
)
DIFF_CONTEXT = 2
DIFF_MAX_LINES = 40

FunctionTable = Mapping[str, Callable[..., Any]]


@dataclass
class Result:
    """What happened to one function or flow (`action` is past tense even on --dry-run)."""

    kind: str  # "function" | "flow"
    name: str
    id: str | None
    action: str  # registered | pinned | unchanged | created | updated | recreated | drift | error
    note: str | None = None
    diff: str | None = None
    drift_fields: list[str] = field(default_factory=list)
    previous_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    backend: str
    dry_run: bool
    functions: list[Result] = field(default_factory=list)
    flows: list[Result] = field(default_factory=list)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.functions + self.flows if r.action in ("drift", "error")]

    @property
    def writes(self) -> int:
        changing = ("registered", "created", "updated", "recreated")
        return sum(r.action in changing for r in self.functions + self.flows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "dry_run": self.dry_run,
            "functions": [r.as_dict() for r in self.functions],
            "flows": [r.as_dict() for r in self.flows],
            "ok": not self.failed,
        }


# -- checksums ---------------------------------------------------------------------------
def _sha(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def function_checksum(name: str, source: str) -> str:
    """sha256 of the name and source text: stable across Python and dill versions."""
    return hashlib.sha256(f"{name}\0{source}".encode()).hexdigest()


def flow_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a deploy owns, normalised (role lists sorted, empty text as "")."""
    fields: dict[str, Any] = {}
    for name in FLOW_FIELDS:
        value = document.get(name)
        if name in ROLE_FIELDS:
            value = sorted(value or [])
        elif name == "keywords":
            value = list(value or [])
        elif name in ("subtitle", "description"):
            value = value or ""
        elif name in ("definition", "input_schema"):
            value = value if value is not None else {}
        fields[name] = value
    return fields


def field_checksums(document: Mapping[str, Any]) -> dict[str, str]:
    """Per-field sha256 of the fields present in `document` (absent ones are unknown)."""
    normalised = flow_fields(document)
    return {name: _sha(normalised[name]) for name in FLOW_FIELDS if name in document}


def total_checksum(checksums: Mapping[str, str]) -> str:
    return _sha(dict(sorted(checksums.items())))


def canonical_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], names: Iterable[str], *, labels: tuple[str, str]
) -> str:
    """A short unified diff of the named fields as canonical, indented JSON.

    Metadata and roles come first and the big documents last, so a small change is not
    pushed past the cap by a large one.
    """
    wanted = set(names)
    order = [n for n in DIFF_ORDER if n in wanted] + sorted(wanted - set(DIFF_ORDER))

    def render(doc: Mapping[str, Any]) -> list[str]:
        ordered = {n: json.loads(canonical(doc.get(n))) for n in order}
        return json.dumps(ordered, indent=2, ensure_ascii=False).splitlines()

    lines = list(
        difflib.unified_diff(
            render(old),
            render(new),
            fromfile=labels[0],
            tofile=labels[1],
            n=DIFF_CONTEXT,
            lineterm="",
        )
    )
    if len(lines) > DIFF_MAX_LINES:
        lines = [*lines[:DIFF_MAX_LINES], f"... ({len(lines) - DIFF_MAX_LINES} more diff lines)"]
    return "\n".join(lines)


# -- inputs ------------------------------------------------------------------------------
def default_function_table() -> dict[str, Callable[..., Any]]:
    """compute_functions.<module>.<name> for every FUNCTION_NAMES entry."""
    import importlib

    table: dict[str, Callable[..., Any]] = {}
    for name in FUNCTION_NAMES:
        module_name = f"compute_functions.{FUNCTION_MODULES[name]}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{module_name}: cannot import ({exc})") from None
        function = getattr(module, name, None)
        if not callable(function):
            raise ConfigError(f"{module_name}.{name}: no such function")
        table[name] = function
    return table


def function_source(function: Callable[..., Any]) -> str:
    """The registered unit: the function's whole module, entered by the function's name.

    compute_functions modules keep their helpers at module level, so registering only the
    function's own lines would leave them undefined at NERSC.
    """
    try:
        module = inspect.getmodule(function)
        if module is None:
            raise TypeError("no module")
        return inspect.getsource(module)
    except (OSError, TypeError) as exc:
        raise ConfigError(f"{function.__qualname__}: source not available ({exc})") from None


def _description(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function) or ""
    return doc.strip().splitlines()[0] if doc.strip() else function.__name__


def public_starters(config: Config) -> list[str]:
    return [p for p in config.globus.roles.flow_starters if p in SPECIAL_STARTERS]


def flow_spec(config: Config, document: FlowDocument) -> FlowSpec:
    from dichroism_control.backend import FlowSpec
    from dichroism_control.config import DEFAULT_FLOW_TITLES, FlowSettings

    settings = config.globus.flows.get(document.name)  # type: ignore[call-overload]
    if settings is None and document.name in DEFAULT_FLOW_TITLES:
        settings = FlowSettings(title=DEFAULT_FLOW_TITLES[document.name])
    if settings is None:
        raise ConfigError(f"globus.flows.{document.name}: required to deploy (at least a title)")
    roles = config.globus.roles
    return FlowSpec(
        title=settings.title,
        definition=document.definition,
        input_schema=document.input_schema,
        subtitle=settings.subtitle,
        description=settings.description,
        keywords=list(settings.keywords),
        flow_viewers=list(roles.flow_viewers),
        flow_starters=list(roles.flow_starters),
        flow_administrators=list(roles.flow_administrators),
        run_managers=list(roles.run_managers),
        run_monitors=list(roles.run_monitors),
        subscription_id=config.globus.subscription_id,
    )


# -- the deploy --------------------------------------------------------------------------
@dataclass
class Deployer:
    config: Config
    backend: Backend
    state: DeployState
    dry_run: bool = False
    force: bool = False
    allow_public_starters: bool = False
    functions: FunctionTable | None = None
    documents: Mapping[str, FlowDocument] | None = None
    only: list[str] | None = None
    report: Report = field(init=False)

    def __post_init__(self) -> None:
        self.report = Report(backend=self.backend.kind, dry_run=self.dry_run)

    # The pins only apply to Globus: the local backend keeps its own ids.
    @property
    def _pins_apply(self) -> bool:
        return self.config.backend == "globus"

    def run(self) -> Report:
        flows, functions = self._selection()
        self._check(flows)  # every refusal happens before the first write
        for name in functions:
            self.report.functions.append(self._function(name))
        # The flows' input schemas bind the function ids (binding.py): bind the ones just
        # registered, not the ones known before.
        specs = self._check(flows)
        for name, spec in specs.items():
            self.report.flows.append(self._flow(name, spec))
        return self.report

    def _selection(self) -> tuple[list[str], list[str]]:
        if not self.only:
            return list(FLOW_NAMES), list(FUNCTION_NAMES)
        known = (*FLOW_NAMES, *FUNCTION_NAMES)
        for name in self.only:
            if name not in known:
                raise ConfigError(f"--only: unknown flow or function {name!r}")
        return (
            [n for n in FLOW_NAMES if n in self.only],
            [n for n in FUNCTION_NAMES if n in self.only],
        )

    def _check(self, flows: list[str]) -> dict[str, FlowSpec]:
        special = public_starters(self.config)
        if special and not (self.allow_public_starters or self.config.globus.allow_public_starters):
            raise ConfigError(
                f"globus.roles.flow_starters: {', '.join(special)} would let anyone start the "
                "flows; set globus.allow_public_starters or pass --allow-public-starters"
            )
        documents = self.documents
        if documents is None:
            documents = load_all(self.config.definitions_path)
        specs: dict[str, FlowSpec] = {}
        problems: list[str] = []
        for name in flows:
            if name not in documents:
                raise DefinitionError(f"{name}: no flow definition")
            document = specialise(documents[name], self.config, functions=self._function_ids())
            problems.extend(validate_document(document))
            specs[name] = flow_spec(self.config, document)
        if problems:
            shown = "; ".join(problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise DefinitionError(f"refusing to deploy: {shown}{more}")
        return specs

    # functions -------------------------------------------------------------------------
    def _function(self, name: str) -> Result:
        pinned = self.config.globus.functions.get(name) if self._pins_apply else None
        if pinned:
            return Result("function", name, pinned, "pinned", note="id pinned in config.yml")
        table = self.functions if self.functions is not None else self._default_table()
        if name not in table:
            raise ConfigError(f"Compute function {name!r}: not in the function table")
        function = table[name]
        source = function_source(function)
        digest = function_checksum(name, source)
        entry = self.state.functions.get(name, {})
        if entry.get("id") and entry.get("checksum") == digest:
            return Result("function", name, entry["id"], "unchanged")
        note = "source changed" if entry.get("id") else "new"
        if self.dry_run:
            return Result("function", name, entry.get("id"), "registered", note=note)
        function_id = self.backend.register_function(
            name=name, source=source, description=_description(function)
        )
        self.state.functions[name] = {"id": function_id, "checksum": digest}
        self.state.save()
        return Result("function", name, function_id, "registered", note=note)

    def _function_ids(self) -> dict[str, str]:
        ids = {n: e["id"] for n, e in self.state.functions.items() if e.get("id")}
        if self._pins_apply:
            ids.update(self.config.globus.functions)
        return ids

    def _default_table(self) -> FunctionTable:
        if self.functions is None:
            self.functions = default_function_table()
        return self.functions

    # flows -----------------------------------------------------------------------------
    def _flow(self, name: str, spec: FlowSpec) -> Result:
        local_doc = spec.fields()
        local_fields = field_checksums({**local_doc, "subscription_id": spec.subscription_id})
        entry = self.state.flows.get(name, {})
        pinned = None
        if self._pins_apply:
            settings = self.config.globus.flows.get(name)  # type: ignore[call-overload]
            pinned = settings.id if settings is not None else None
        flow_id = pinned or entry.get("id")
        if not flow_id:
            return self._write(name, spec, local_fields, action="created")

        remote = self.backend.get_flow(flow_id)
        if remote is None:
            if pinned:
                return Result(
                    "flow",
                    name,
                    flow_id,
                    "error",
                    note=f"pinned id answers 404: fix or remove globus.flows.{name}.id",
                )
            result = self._write(name, spec, local_fields, action="recreated", note="was 404")
            result.previous_id = flow_id
            return result

        remote_fields = field_checksums(remote)
        local_view = flow_fields({**local_doc, "subscription_id": spec.subscription_id})
        remote_view = flow_fields(remote)
        baseline = entry if entry.get("id") == flow_id else {}
        last_remote: dict[str, str] = dict(baseline.get("remote_fields") or {})
        last_local: dict[str, str] = dict(baseline.get("fields") or {})

        if last_remote:
            drifted = sorted(
                n
                for n, digest in remote_fields.items()
                if n in last_remote and last_remote[n] != digest
            )
        else:
            drifted = []
        if drifted:
            diff = canonical_diff(
                remote_view,
                local_view,
                drifted,
                labels=(f"{name} (service, edited)", f"{name} (local)"),
            )
            if not self.force:
                return Result(
                    "flow",
                    name,
                    flow_id,
                    "drift",
                    note="edited on the service since the last deploy; --force overwrites",
                    diff=diff,
                    drift_fields=drifted,
                )
            result = self._write(
                name,
                spec,
                local_fields,
                action="updated",
                flow_id=flow_id,
                note="drift overwritten",
            )
            result.diff, result.drift_fields = diff, drifted
            return result

        if last_local:
            changed = sorted(n for n, d in local_fields.items() if last_local.get(n) != d)
        else:
            # No record of our own write for this id (a pin shared with another host, or a
            # lost state file): compare the service's document with ours directly.
            changed = sorted(n for n in local_fields if remote_view.get(n) != local_view.get(n))
        if not changed:
            if not baseline and not self.dry_run:
                self._remember(name, flow_id, local_fields, remote_fields)
            return Result("flow", name, flow_id, "unchanged")
        diff = canonical_diff(
            remote_view, local_view, changed, labels=(f"{name} (deployed)", f"{name} (local)")
        )
        result = self._write(name, spec, local_fields, action="updated", flow_id=flow_id)
        result.diff = diff
        return result

    def _write(
        self,
        name: str,
        spec: FlowSpec,
        local_fields: dict[str, str],
        *,
        action: str,
        flow_id: str | None = None,
        note: str | None = None,
    ) -> Result:
        if self.dry_run:
            return Result("flow", name, flow_id, action, note=note)
        if flow_id is None:
            answer = self.backend.create_flow(spec)
            new_id = str(answer.get("id") or "")
            if not new_id:
                raise DefinitionError(f"{name}: the service answered create_flow without an id")
        else:
            answer = self.backend.update_flow(flow_id, spec)
            new_id = flow_id
        self._remember(name, new_id, local_fields, field_checksums(answer))
        return Result("flow", name, new_id, action, note=note)

    def _remember(
        self, name: str, flow_id: str, local_fields: dict[str, str], remote_fields: dict[str, str]
    ) -> None:
        self.state.flows[name] = {
            "id": flow_id,
            "checksum": total_checksum(local_fields),
            "fields": local_fields,
            "remote_checksum": total_checksum(remote_fields),
            "remote_fields": remote_fields,
        }
        self.state.save()


def deploy(
    config: Config,
    backend: Backend,
    *,
    dry_run: bool = False,
    force: bool = False,
    allow_public_starters: bool = False,
    functions: FunctionTable | None = None,
    documents: Mapping[str, FlowDocument] | None = None,
    only: list[str] | None = None,
    state: DeployState | None = None,
) -> Report:
    """Register functions and publish flows; see the module docstring for the rules."""
    from dichroism_control.deploy_state import DeployState

    if state is None:
        state = DeployState.load(config.deploy_state_path, backend=config.backend)
    return Deployer(
        config,
        backend,
        state,
        dry_run=dry_run,
        force=force,
        allow_public_starters=allow_public_starters,
        functions=functions,
        documents=documents,
        only=only,
    ).run()


# -- text rendering ----------------------------------------------------------------------
_FUTURE = {
    "registered": "would register",
    "created": "would create",
    "updated": "would update",
    "recreated": "would recreate",
}


def render_text(report: Mapping[str, Any]) -> str:
    lines: list[str] = []
    if report["dry_run"]:
        lines.append("dry run: nothing was written")
    for item in [*report["functions"], *report["flows"]]:
        action = item["action"]
        shown = _FUTURE.get(action, action) if report["dry_run"] else action
        if action == "drift":
            shown = f"DRIFT ({', '.join(item['drift_fields'])})"
        note = f" ({item['note']})" if item.get("note") and action != "drift" else ""
        ident = item["id"] or "(new)"
        lines.append(f"{item['kind']:<8} {item['name']:<20} {shown}{note}  {ident}")
        if action == "drift" and item.get("note"):
            lines.append(f"  {item['note']}")
        if item.get("diff"):
            lines.extend(f"  {line}" for line in item["diff"].splitlines())
    return "\n".join(lines)
