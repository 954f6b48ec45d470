"""Every run's state stays under the Flows cap of 200 KB at the largest input the schemas allow.

Flows caps a run's state at 200 KB (docs.globus.org/api/flows/limits), and the Compute
action provider stores each result twice, in details.result[i] and details.results[i].output
(globus-compute docs/actionprovider.rst). These runs use the largest input the shipped
schemas accept (most files, longest paths, most archives) and the largest results the
Compute functions return for it (every file kept with the longest reason), measure the
state after every transition and compare the peak with the cap.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from dichroism_control.local.engine import Engine

from .conftest import FakeClock
from .test_flow_definitions import (
    COMPUTE,
    F_ARCHIVE,
    F_INGEST,
    F_LOCATION,
    F_TAPE,
    F_VERIFY,
    INPUTS,
    MD5,
    MTIME,
    StubProvider,
    body,
    compute_result,
    load,
    providers,
)

CAP = 200_000  # 200 KB, read as decimal kilobytes: the stricter reading


def _schema_limits() -> dict[str, int]:
    prune = load("prune")["input_schema"]["properties"]["input"]["properties"]
    files = prune["target"]["properties"]["files"]
    return {
        "files": files["maxItems"],
        "rel": files["items"]["properties"]["path"]["maxLength"],
        "archives": prune["safe"]["properties"]["archives"]["maxItems"],
        "archive_path": prune["safe"]["properties"]["archives"]["items"]["maxLength"],
        "root": prune["target"]["properties"]["root"]["maxLength"],
    }


LIMITS = _schema_limits()


def _rel(i: int) -> str:
    stem = f"P{i:05d}/"
    return stem + "x" * (LIMITS["rel"] - len(stem))


def _root(prefix: str) -> str:
    # Roots come from config.yml: long but realistic (the schema allows 4096, the
    # deployment binds them to the configured values; 200 characters is generous).
    return prefix + "/r" * ((200 - len(prefix)) // 2)


def _big_size() -> int:
    return 10**15 - 1  # a petabyte scan: the longest size JSON will hold here


def _peak_state(name: str, stubs: dict[str, Any], flow_input: dict[str, Any]) -> int:
    """Run the flow; the JSON size of its final state. In these flows the state only grows
    (what is overwritten — $.stat, $.judge, $.check — is overwritten by its own kind), so
    the final state is the largest; and the engine itself fails a run whose state passes
    the cap at any transition, which the SUCCEEDED check catches."""
    clock = FakeClock()
    engine = Engine(stubs, sleep=clock.sleep, now=clock.now)
    definition = load(name)["definition"]
    outcome = engine.run(
        definition, body(flow_input), context={"run_id": "run-0001", "username": "alice"}
    )
    assert outcome.status == "SUCCEEDED", outcome.details
    return len(json.dumps(outcome.output).encode())


def _prune_input(location: str) -> dict[str, Any]:
    document = json.loads(json.dumps(INPUTS["prune"]))
    document["location"] = location
    document["target"]["root"] = _root("/data/bl402")
    document["safe"]["root"] = _root("/global/cfs/als/4.0.2/raw")
    files = []
    for i in range(LIMITS["files"]):
        item: dict[str, Any] = {
            "path": _rel(i),
            "size": _big_size(),
            "mtime": MTIME,
            "checksum": MD5,
            "version": 999_999,
        }
        if location == "cfs":
            item["archive"] = LIMITS["archives"] - 1
        files.append(item)
    document["target"]["files"] = files
    if location == "cfs":
        document["safe"]["archives"] = [
            "/" + "a" * (LIMITS["archive_path"] - 1) for _ in range(LIMITS["archives"])
        ]
        document["verify"]["function_id"] = F_TAPE
    jsonschema.validate(body(document), load("prune")["input_schema"])
    return document


def _worst_kept(kwargs: dict[str, Any]) -> dict[str, Any]:
    n = len(kwargs["files"])
    detail = "d" * 120  # the verifiers' longest detail
    return {
        "algorithm": "md5",
        "checked": n,
        "safe": [],
        "kept": [{"i": i, "reason": "tape_size_differs", "detail": detail} for i in range(n)],
    }


def _all_safe(kwargs: dict[str, Any]) -> dict[str, Any]:
    n = len(kwargs["files"])
    return {"algorithm": "md5", "checked": n, "safe": list(range(n)), "kept": []}


@pytest.mark.parametrize("location", ["compute_dtn", "cfs"])
@pytest.mark.parametrize("verdict", ["all_kept", "all_deleted"])
def test_prune_state_at_the_largest_batch(location: str, verdict: str) -> None:
    stubs = providers(stat_size=_big_size())
    respond = _worst_kept if verdict == "all_kept" else _all_safe
    stubs[COMPUTE] = StubProvider(compute_result({F_VERIFY: respond, F_TAPE: respond}))
    peak = _peak_state("prune", stubs, _prune_input(location))
    print(f"prune {location}/{verdict}: peak state {peak} bytes")
    assert peak < CAP, f"{location}/{verdict}: {peak} bytes"


def test_archive_state_at_the_largest_group() -> None:
    document = json.loads(json.dumps(INPUTS["archive"]))
    document["cfs_root"] = _root("/global/cfs/als/4.0.2/raw")
    document["hpss"]["directory"] = _root("/home/a/als/bl402/raw")
    document["files"] = [
        {"path": _rel(i), "size": _big_size(), "checksum": MD5, "version": 999_999}
        for i in range(LIMITS["files"])
    ]
    jsonschema.validate(body(document), load("archive")["input_schema"])

    def every_file_alone(kwargs: dict[str, Any]) -> dict[str, Any]:
        # The largest placement: no archive shared, every file a single (-1) or left out.
        n = len(kwargs["files"])
        return {
            "sent": n,
            "skipped": 0,
            "archives": [],
            "where": [-1] * (n // 2) + [None] * (n - n // 2),
            "changed": [{"i": i, "reason": "checksum_differs"} for i in range(n // 2, n)],
        }

    stubs = providers()
    stubs[COMPUTE] = StubProvider(
        compute_result(
            {
                F_ARCHIVE: every_file_alone,
                F_LOCATION: lambda kw: {"updated": 10**6, "unchanged": 10**6, "missing": 10**6},
                F_INGEST: lambda kw: {},
            }
        )
    )
    peak = _peak_state("archive", stubs, document)
    print(f"archive: peak state {peak} bytes")
    assert peak < CAP, f"archive: {peak} bytes"
