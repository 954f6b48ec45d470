"""The deployed schemas bind what goes together: a run cannot mix roots, collections or
functions of different beamlines or places (binding.py). Expected values are written out."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.binding import input_validator
from dichroism_control.config import Config
from tests.conftest import IDS

FUNCTIONS = {
    "cfs_verify": "5c2d1e0f-0000-4000-8000-0000000000c1",
    "hpss_verify": "5c2d1e0f-0000-4000-8000-0000000000c2",
    "hpss_archive": "5c2d1e0f-0000-4000-8000-0000000000c3",
    "scicat_add_location": "5c2d1e0f-0000-4000-8000-0000000000c4",
    "scicat_ingest": "5c2d1e0f-0000-4000-8000-0000000000c5",
}
MD5 = "0" * 32
MTIME = "2026-11-29 12:00:00+00:00"


def _errors(config: Config, flow: str, body: dict[str, Any]) -> list[str]:
    validator = input_validator(config, flow, functions=FUNCTIONS)
    return [e.message for e in validator.iter_errors(body)]


def _prune(config: Config, location: str = "compute_dtn") -> dict[str, Any]:
    tmp = Path(config.base_dir)
    cfs402 = str(tmp / "cfs" / "4.0.2" / "raw")
    if location == "compute_dtn":
        target = {"collection_id": IDS["bl402_dtn"], "root": str(tmp / "data" / "bl402")}
        safe: dict[str, Any] = {"root": cfs402}
        function = FUNCTIONS["cfs_verify"]
    else:
        target = {"collection_id": IDS["bl402_cfs"], "root": cfs402}
        safe = {"root": "/home/a/alsdev/data_mover/4.0.2/bl402/raw", "archives": []}
        function = FUNCTIONS["hpss_verify"]
    file = {"path": "P1/a.h5", "size": 1, "mtime": MTIME, "checksum": MD5, "version": 1}
    return {
        "input": {
            "beamline": "bl402",
            "location": location,
            "target": {**target, "files": [file]},
            "safe": safe,
            "verify": {"endpoint_id": IDS["nersc"], "function_id": function},
            "deadline": "2026-12-01T00:00:00+00:00",
        }
    }


@pytest.mark.parametrize("location", ["compute_dtn", "cfs"])
def test_a_prune_as_the_lifecycle_builds_it_is_accepted(config: Config, location: str) -> None:
    assert _errors(config, "prune", _prune(config, location)) == []


def _mutated(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    node = changed["input"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


@pytest.mark.parametrize("deadline", ["tomorrow", "2026-12-01 00:00:00", "2026-13-01T00:00:00Z"])
def test_a_deadline_that_is_not_an_rfc3339_date_time_is_refused_before_sending(
    config: Config, deadline: str
) -> None:
    """The doubles refuse it as Flows would (400, `format: date-time`); the launcher's own
    pre-check must too (jsonschema skips date-time without an optional package)."""
    body = _mutated(_prune(config), ("deadline",), deadline)
    assert any("is not a 'date-time'" in e for e in _errors(config, "prune", body))


def test_a_prune_cannot_verify_a_file_against_itself(config: Config) -> None:
    body = _prune(config)
    cfs402 = body["input"]["safe"]["root"]
    assert _errors(config, "prune", _mutated(body, ("target", "root"), cfs402)) != []


def test_a_prune_cannot_take_another_beamlines_safe_copy(config: Config) -> None:
    other = str(Path(config.base_dir) / "cfs" / "6.3.1" / "raw")
    assert _errors(config, "prune", _mutated(_prune(config), ("safe", "root"), other)) != []


def test_a_prune_cannot_pair_a_location_with_another_locations_roots(config: Config) -> None:
    assert _errors(config, "prune", _mutated(_prune(config), ("location",), "cfs")) != []


def test_a_prune_cannot_target_another_collection(config: Config) -> None:
    body = _mutated(_prune(config), ("target", "collection_id"), IDS["bl631_dtn"])
    assert _errors(config, "prune", body) != []


def test_a_prune_cannot_choose_its_verifier(config: Config) -> None:
    """The verifier is the one deployed for that location; any other function (one that says
    every file is safe, say) is refused."""
    for function in (FUNCTIONS["hpss_verify"], FUNCTIONS["scicat_ingest"]):
        body = _mutated(_prune(config), ("verify", "function_id"), function)
        assert _errors(config, "prune", body) != []
    other_endpoint = _mutated(_prune(config), ("verify", "endpoint_id"), IDS["scicat"])
    assert _errors(config, "prune", other_endpoint) != []


def _new_file(config: Config) -> dict[str, Any]:
    tmp = Path(config.base_dir)
    return {
        "input": {
            "beamline": "bl402",
            "source": {
                "collection_id": IDS["bl402_dtn"],
                "path": str(tmp / "data" / "bl402" / "P1" / "a.h5"),
                "size": 1,
                "mtime": MTIME,
                "checksum": MD5,
                "version": 1,
            },
            "destination": {
                "collection_id": IDS["bl402_cfs"],
                "path": str(tmp / "cfs" / "4.0.2" / "raw" / "P1" / "a.h5"),
            },
            "deadline": "2026-12-01T00:00:00+00:00",
            "scicat": {
                "endpoint_id": IDS["scicat"],
                "function_id": FUNCTIONS["scicat_ingest"],
                "proposal": "P1",
                "metadata": {
                    "instrument_id": "4.0.2",
                    "owner_group": "als-4.0.2",
                    "access_groups": [],
                    "owner": "ALS",
                    "contact_email": "als-data@lbl.gov",
                    "principal_investigator": "unknown",
                },
            },
        }
    }


def test_new_file_binds_both_collections_and_path_prefixes(config: Config) -> None:
    body = _new_file(config)
    assert _errors(config, "new_file", body) == []
    tmp = Path(config.base_dir)
    refused = [
        (("destination", "path"), str(tmp / "data" / "bl402" / "P1" / "a.h5")),  # onto itself
        (("destination", "path"), str(tmp / "cfs" / "6.3.1" / "raw" / "P1" / "a.h5")),
        (("destination", "path"), str(tmp / "cfs" / "4.0.2" / "raw_old" / "a.h5")),  # sibling
        (("destination", "collection_id"), IDS["bl631_cfs"]),
        (("source", "path"), str(tmp / "data" / "bl631" / "P1" / "a.h5")),
        (("source", "collection_id"), IDS["bl631_dtn"]),
        (("scicat", "function_id"), FUNCTIONS["cfs_verify"]),
    ]
    for path, value in refused:
        assert _errors(config, "new_file", _mutated(body, path, value)) != [], (path, value)


def test_archive_binds_the_cfs_root_and_the_tape_directory(config: Config) -> None:
    body = {
        "input": {
            "beamline": "bl402",
            "proposal": "P1",
            "cfs_root": str(Path(config.base_dir) / "cfs" / "4.0.2" / "raw"),
            "files": [{"path": "P1/a.h5", "size": 1, "checksum": MD5, "version": 1}],
            "hpss": {
                "endpoint_id": IDS["nersc"],
                "function_id": FUNCTIONS["hpss_archive"],
                "directory": "/home/a/alsdev/data_mover/4.0.2/bl402/raw",
                "archive_name": "P1_2026-11-29_0123456789",
                "options": {
                    "bundle_max_bytes": 10,
                    "single_file_threshold_bytes": 10,
                    "max_sessions": 1,
                    "walltime_seconds": 10,
                },
            },
            "scicat": {
                "endpoint_id": IDS["scicat"],
                "function_id": FUNCTIONS["scicat_add_location"],
            },
        }
    }
    assert _errors(config, "archive", body) == []
    other_tape = "/home/a/alsdev/data_mover/6.3.1/bl631/raw"
    assert _errors(config, "archive", _mutated(body, ("hpss", "directory"), other_tape)) != []
    other_cfs = str(Path(config.base_dir) / "cfs" / "6.3.1" / "raw")
    assert _errors(config, "archive", _mutated(body, ("cfs_root",), other_cfs)) != []


def test_prune_bindings_written_out(config: Config) -> None:
    """Issue 13 (mutation testing): the prune binding of each (beamline, location), literally:
    a binding that swapped a root, a collection or a verifier would let a run verify a file
    against the wrong copy. Without function ids (before the first deploy) the verifier is
    left open and the rest is still bound."""
    from dichroism_control.binding import prune_bindings

    tmp = Path(config.base_dir)

    def const(value: str) -> dict[str, str]:
        return {"const": value}

    def binding(beamline: str, location: str, collection: str, target: str, safe: str) -> Any:
        verify: dict[str, Any] = {"endpoint_id": const(IDS["nersc"])}
        verifier = {"compute_dtn": "cfs_verify", "cfs": "hpss_verify"}[location]
        verify["function_id"] = const(FUNCTIONS[verifier])
        return {
            "properties": {
                "beamline": const(beamline),
                "location": const(location),
                "target": {
                    "properties": {"collection_id": const(collection), "root": const(target)}
                },
                "safe": {"properties": {"root": const(safe)}},
                "verify": {"properties": verify},
            }
        }

    expected = []
    for beamline, number in (("bl402", "4.0.2"), ("bl631", "6.3.1")):
        cfs = str(tmp / "cfs" / number / "raw")
        expected += [
            binding(
                beamline,
                "compute_dtn",
                IDS[f"{beamline}_dtn"],
                str(tmp / "data" / beamline),
                cfs,
            ),
            binding(
                beamline,
                "cfs",
                IDS[f"{beamline}_cfs"],
                cfs,
                f"/home/a/alsdev/data_mover/{number}/{beamline}/raw",
            ),
        ]
    assert prune_bindings(config, FUNCTIONS) == expected
    unbound = prune_bindings(config, None)
    assert [b["properties"]["verify"] for b in unbound] == [
        {"properties": {"endpoint_id": const(IDS["nersc"])}}
    ] * 4
