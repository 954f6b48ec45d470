"""Each function works when registered from its source text alone (as Globus Compute does)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compute_functions import cfs as cfs_module
from compute_functions import hpss
from compute_functions import scicat as scicat_module

from .conftest import HPSS_DIR, METADATA, Cfs, FakeSciCat, Tape, archive_options


def from_source(func: Callable[..., Any]) -> Callable[..., Any]:
    """exec the function's source in a namespace without the module's globals."""
    source = inspect.getsource(func)
    namespace: dict[str, Any] = {"__name__": "registered_from_source"}
    exec(compile(source, f"<registered {func.__name__}>", "exec"), namespace)
    registered = namespace[func.__name__]
    assert registered is not func
    assert set(namespace) == {"__name__", "__builtins__", func.__name__}
    return registered  # type: ignore[no-any-return]


def test_hpss_functions_from_source(cfs: Cfs, tape: Tape) -> None:
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/big.h5", 6000)]
    archive = from_source(hpss.hpss_archive)(
        beamline="bl402",
        cfs_root=str(cfs.root),
        files=files,
        hpss_dir=HPSS_DIR,
        archive_name="P1_src",
        options=archive_options(),
    )
    assert archive["sent"] == 2
    verified = from_source(hpss.hpss_verify)(target_root="/t", safe_root=HPSS_DIR, files=files)
    assert verified["all_verified"] is True and verified["verified"] == 2


def test_cfs_verify_from_source(cfs: Cfs) -> None:
    files = [cfs.write("P1/a.h5", 10)]
    verify = from_source(cfs_module.cfs_verify)
    assert verify(target_root="/t", safe_root=str(cfs.root), files=files)["verified"] == 1


def test_scicat_functions_from_source(tmp_path: Path, scicat: FakeSciCat) -> None:
    path = tmp_path / "P1" / "scan.dat"
    path.parent.mkdir()
    path.write_bytes(b"# a: 1\n")
    ingested = from_source(scicat_module.scicat_ingest)(
        beamline="bl402",
        file_path=str(path),
        size=path.stat().st_size,
        proposal="P1",
        metadata=METADATA,
    )
    assert ingested["created"] is True
    manifest = [
        {
            "path": "P1/scan.dat",
            "cfs_path": str(path),
            "size": path.stat().st_size,
            "tape_path": "/hpss/P1/x.tar",
            "member": "P1/scan.dat",
        }
    ]
    added = from_source(scicat_module.scicat_add_location)(beamline="bl402", manifest=manifest)
    assert added["updated"] == [ingested["pid"]]


def _block(func: Callable[..., Any], marker: str) -> str:
    source = inspect.getsource(func)
    m = re.search(rf"# --- {marker}.*?\n(.*)# --- end {marker} ---", source, re.S)
    assert m, f"{func.__name__} has no '{marker}' block"
    return m.group(1)


@pytest.mark.parametrize(
    ("first", "second", "marker"),
    [
        (hpss.hpss_archive, hpss.hpss_verify, "hpss session helpers"),
        (scicat_module.scicat_ingest, scicat_module.scicat_add_location, "catalogue client"),
    ],
)
def test_shared_blocks_stay_identical(
    first: Callable[..., Any], second: Callable[..., Any], marker: str
) -> None:
    assert _block(first, marker) == _block(second, marker)
