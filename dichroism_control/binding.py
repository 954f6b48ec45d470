"""Bind each flow's input schema to this deployment: what goes together, goes together.

The generic schemas in `flow_definitions/` only say what a path or an id looks like. The
deployed schema adds, per beamline, `oneOf` a set of `const`s that tie every value a run of
that beamline may carry: for `prune`, (beamline, location) fixes the target collection, the
target root, the safe root, the Compute endpoint and the verifier function, so a run can
never verify a file against itself (target root == safe root) or against another beamline's
copy, and the verifier cannot be swapped for a function that says yes. For `new_file`, the
beamline fixes both collections, the path prefixes and the SciCat function; for `archive`,
the CFS root, the HPSS directory and both functions; for `flight_check`, both collections,
the canary directories (so its deletes reach nothing else), both endpoints and HPSS.

The Flows service validates every run's input against this schema (a 400 before anything
runs), the local backend does the same, and the launcher and lifecycle check bodies against
it before sending them. Function ids are bound once they are known (`functions`); without
them (`dichroism validate` before the first deploy) the rest is still bound.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.definitions import FlowDocument

LOCATION_VERIFIER = {"compute_dtn": "cfs_verify", "cfs": "hpss_verify"}


def _const(value: Any) -> dict[str, Any]:
    return {"const": value}


def _under(root: str) -> dict[str, Any]:
    """A path strictly below `root` (JSON Schema patterns are ECMA 262: escape by hand)."""
    escaped = re.sub(r"([\\^$.|?*+()\[\]{}/-])", r"\\\1", root.rstrip("/"))
    return {"pattern": f"^{escaped}/."}


def _obj(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"properties": properties}


def prune_bindings(config: Config, functions: Mapping[str, str] | None) -> list[dict[str, Any]]:
    from dichroism_control.routing import cfs_root_path, hpss_directory, source_root_path

    bindings = []
    nersc = config.globus.compute_endpoints.nersc
    for name in sorted(config.beamlines):
        settings = config.beamline(name)
        places = {
            "compute_dtn": (
                config.endpoint(settings.source).uuid,
                source_root_path(config, name),
                cfs_root_path(config, name),
            ),
            "cfs": (
                config.endpoint(settings.destination).uuid,
                cfs_root_path(config, name),
                hpss_directory(config, name),
            ),
        }
        for location, (collection, target_root, safe_root) in places.items():
            verify: dict[str, Any] = {"endpoint_id": _const(nersc)}
            function = (functions or {}).get(LOCATION_VERIFIER[location])
            if function:
                verify["function_id"] = _const(function)
            bindings.append(
                _obj(
                    beamline=_const(name),
                    location=_const(location),
                    target=_obj(collection_id=_const(collection), root=_const(target_root)),
                    safe=_obj(root=_const(safe_root)),
                    verify=_obj(**verify),
                )
            )
    return bindings


def new_file_bindings(config: Config, functions: Mapping[str, str] | None) -> list[dict[str, Any]]:
    from dichroism_control.routing import cfs_root_path, source_root_path

    bindings = []
    for name in sorted(config.beamlines):
        settings = config.beamline(name)
        scicat: dict[str, Any] = {"endpoint_id": _const(config.globus.compute_endpoints.scicat)}
        if (functions or {}).get("scicat_ingest"):
            scicat["function_id"] = _const(functions["scicat_ingest"])  # type: ignore[index]
        bindings.append(
            _obj(
                beamline=_const(name),
                source=_obj(
                    collection_id=_const(config.endpoint(settings.source).uuid),
                    path=_under(source_root_path(config, name)),
                ),
                destination=_obj(
                    collection_id=_const(config.endpoint(settings.destination).uuid),
                    path=_under(cfs_root_path(config, name)),
                ),
                scicat=_obj(**scicat),
            )
        )
    return bindings


def archive_bindings(config: Config, functions: Mapping[str, str] | None) -> list[dict[str, Any]]:
    from dichroism_control.routing import cfs_root_path, hpss_directory

    endpoints = config.globus.compute_endpoints
    known = functions or {}
    bindings = []
    for name in sorted(config.beamlines):
        hpss: dict[str, Any] = {
            "endpoint_id": _const(endpoints.nersc),
            "directory": _const(hpss_directory(config, name)),
        }
        scicat: dict[str, Any] = {"endpoint_id": _const(endpoints.scicat)}
        if known.get("hpss_archive"):
            hpss["function_id"] = _const(known["hpss_archive"])
        if known.get("scicat_add_location"):
            scicat["function_id"] = _const(known["scicat_add_location"])
        bindings.append(
            _obj(
                beamline=_const(name),
                cfs_root=_const(cfs_root_path(config, name)),
                hpss=_obj(**hpss),
                scicat=_obj(**scicat),
            )
        )
    return bindings


def flight_check_bindings(
    config: Config, functions: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    """Per beamline: both collections, the canary directories at each end (its deletes can
    reach nothing else), both Compute endpoints, the beamline's HPSS directory and the
    check function."""
    from dichroism_control.config import CANARY_DIR
    from dichroism_control.routing import cfs_root_path, hpss_directory, source_root_path

    endpoints = config.globus.compute_endpoints
    function = (functions or {}).get("flight_check_endpoint")
    bindings = []
    for name in sorted(config.beamlines):
        settings = config.beamline(name)
        nersc: dict[str, Any] = {
            "endpoint_id": _const(endpoints.nersc),
            "hpss_dir": _const(hpss_directory(config, name)),
        }
        scicat: dict[str, Any] = {"endpoint_id": _const(endpoints.scicat)}
        if function:
            nersc["function_id"] = scicat["function_id"] = _const(function)
        canaries = f"{source_root_path(config, name).rstrip('/')}/{CANARY_DIR}"
        bindings.append(
            _obj(
                beamline=_const(name),
                source=_obj(
                    collection_id=_const(config.endpoint(settings.source).uuid),
                    path=_under(canaries),
                ),
                destination=_obj(
                    collection_id=_const(config.endpoint(settings.destination).uuid),
                    directory=_const(f"{cfs_root_path(config, name).rstrip('/')}/{CANARY_DIR}"),
                ),
                nersc=_obj(**nersc),
                scicat=_obj(**scicat),
            )
        )
    return bindings


BINDINGS = {
    "new_file": new_file_bindings,
    "archive": archive_bindings,
    "prune": prune_bindings,
    "flight_check": flight_check_bindings,
}


def specialise(
    document: FlowDocument, config: Config, *, functions: Mapping[str, str] | None = None
) -> FlowDocument:
    """The document with its input schema bound to this deployment (see the docstring)."""
    make = BINDINGS.get(document.name)
    if make is None:
        return document
    schema = copy.deepcopy(document.input_schema)
    body = schema["properties"]["input"]
    body["properties"]["beamline"]["enum"] = sorted(config.beamlines)
    body["oneOf"] = make(config, functions)
    return dataclasses.replace(document, input_schema=schema)


def input_validator(
    config: Config, name: str, *, functions: Mapping[str, str] | None = None
) -> Any:
    """A jsonschema validator for run bodies of flow `name`: the schema as deployed (bound
    to this config and these function ids, `binding.specialise`), with format checks on."""
    import jsonschema

    from dichroism_control.definitions import load_document
    from dichroism_control.schema_formats import format_checker

    path = config.definitions_path / f"{name}.json"
    schema = specialise(load_document(path, name=name), config, functions=functions).input_schema
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=format_checker(cls))
