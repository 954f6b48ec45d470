"""The registration model: each module's WHOLE source text is the registered unit.

Deploy registers a module's full text with the function name as entrypoint
(globus-compute-sdk ``register_source_code``); the endpoint execs the text in a fresh
namespace and calls the named function. These tests do the same, in an interpreter
where nothing of this project can be imported, and call the functions on real cases.
"""

from __future__ import annotations

import ast
import builtins
import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from .conftest import HPSS_DIR, METADATA, TOKEN, Cfs, FakeSciCat, Tape, archive_options, md5

MODULES = Path(__file__).resolve().parents[2] / "compute_functions"
PROJECT_PACKAGES = ("compute_functions", "dichroism_control", "tests")

# Runs in `python -I -S`: no site processing (so no editable-install finder), no cwd or
# PYTHONPATH on sys.path; only the stdlib plus the bare site-packages directory.
DRIVER = r"""
import importlib.util, json, sys

spec = json.loads(sys.argv[1])
sys.path.append(spec["site_packages"])
for name in spec["project"]:
    assert importlib.util.find_spec(name) is None, f"{name} is importable"

with open(spec["module_file"], encoding="utf-8") as fh:
    source = fh.read()
results = []
for call in spec["calls"]:
    if spec["loader"] == "sdk":  # the endpoint's own deserializer for source-text functions
        from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect

        payload = PureSourceTextInspect.identifier + call["entrypoint"] + ":" + source
        function = ComputeSerializer().deserialize(payload)
    else:
        namespace = {}
        exec(compile(source, "<registered>", "exec"), namespace)
        function = namespace[call["entrypoint"]]
    try:
        results.append({"result": function(**call["kwargs"])})
    except RuntimeError as exc:
        results.append({"error": str(exc)})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in spec["project"])
assert not loaded, f"project modules were imported: {loaded}"
print(json.dumps(results))
"""


def run_registered(
    module: str, calls: list[tuple[str, dict[str, Any]]], *, cwd: Path, loader: str = "compile"
) -> list[dict[str, Any]]:
    """Each (entrypoint, kwargs) called from module's full text, executed afresh per call."""
    spec = {
        "site_packages": sysconfig.get_paths()["purelib"],
        "project": PROJECT_PACKAGES,
        "module_file": str(MODULES / f"{module}.py"),
        "loader": loader,
        "calls": [{"entrypoint": name, "kwargs": kwargs} for name, kwargs in calls],
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", DRIVER, json.dumps(spec)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results


def test_hpss_module_registered_whole(cfs: Cfs, tape: Tape, tmp_path: Path) -> None:
    files = [cfs.write("P1/a.h5", 100), cfs.write("P1/big.h5", 6000)]
    archive_kwargs = {
        "beamline": "bl402",
        "cfs_root": str(cfs.root),
        "files": files,
        "hpss_dir": HPSS_DIR,
        "archive_name": "P1_src",
        "options": archive_options(),
    }
    tar = f"{HPSS_DIR}/P1/P1_src.tar"
    prune = [{**files[0], "archive": 0}, {**files[1], "archive": -1}]
    verify_kwargs = {
        "target_root": str(cfs.root),
        "safe_root": HPSS_DIR,
        "files": prune,
        "archives": [tar],
    }
    missing = [*prune, {**files[0], "path": "P1/none.h5", "archive": -1}]
    archived, verified, unverified, refused = run_registered(
        "hpss",
        [
            ("hpss_archive", archive_kwargs),
            ("hpss_verify", verify_kwargs),
            ("hpss_verify", {**verify_kwargs, "files": missing}),
            ("hpss_verify", {**verify_kwargs, "archives": ["/elsewhere/x.tar"]}),
        ],
        cwd=tmp_path,
    )
    assert archived["result"] == {
        "sent": 2,
        "skipped": 0,
        "archives": [tar],
        "where": [0, -1],
        "changed": [],
    }
    assert verified["result"] == {"algorithm": "md5", "checked": 2, "safe": [0, 1], "kept": []}
    assert unverified["result"]["safe"] == [0, 1]
    assert unverified["result"]["kept"] == [
        {"i": 2, "reason": "not_on_tape", "detail": f"nothing at {HPSS_DIR}/P1/none.h5"}
    ]
    assert refused["error"] == (
        f"1 archive path(s) not inside safe_root {HPSS_DIR} (nothing was checked):"
        " #0 '/elsewhere/x.tar'"
    )


def test_cfs_module_registered_whole(cfs: Cfs, tmp_path: Path) -> None:
    files = [cfs.write("P1/a.h5", 10)]
    kwargs = {"target_root": "/t", "safe_root": str(cfs.root), "files": files}
    ok, refused = run_registered(
        "cfs",
        [
            ("cfs_verify", kwargs),
            ("cfs_verify", {**kwargs, "files": [{**files[0], "path": "../x"}]}),
        ],
        cwd=tmp_path,
    )
    assert ok["result"] == {"algorithm": "md5", "checked": 1, "safe": [0], "kept": []}
    assert refused["error"] == (
        "1 of 1 file(s) refused (nothing was checked):"
        " #0 '../x': path outside root (absolute, '..', empty, NUL or newline)"
    )


def test_sdk_deserializer_runs_the_whole_module(cfs: Cfs, tmp_path: Path) -> None:
    """The endpoint's PureSourceTextInspect execs the module text, docstring and
    ``from __future__ import annotations`` included, and hands back the entrypoint."""
    files = [cfs.write("P1/a.h5", 10)]
    kwargs = {"target_root": "/t", "safe_root": str(cfs.root), "files": files}
    [ok] = run_registered("cfs", [("cfs_verify", kwargs)], cwd=tmp_path, loader="sdk")
    assert ok["result"]["safe"] == [0]


def test_scicat_module_registered_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfs: Cfs
) -> None:
    """Against the local stand-in catalogue (the subprocess cannot see the fake SciCat)."""
    monkeypatch.setenv("SCICAT_URL", f"sqlite:///{tmp_path / 'catalogue.sqlite'}")
    for name in ("SCICAT_TOKEN", "SCICAT_TOKEN_FILE", "SCICAT_USERNAME", "SCICAT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    item = cfs.write("P1/scan.dat", data=b"# energy: 700 eV\n1 2\n")
    ingest = {
        "beamline": "bl402",
        "file_path": f"{cfs.root}/P1/scan.dat",
        "size": item["size"],
        "proposal": "P1",
        "metadata": METADATA,
        "checksum": item["checksum"],
        "version": 1,
    }
    location = {
        "beamline": "bl402",
        "cfs_root": str(cfs.root),
        "hpss_dir": HPSS_DIR,
        "files": [item],
        "archive": {"archives": [f"{HPSS_DIR}/P1/x.tar"], "where": [0]},
    }
    ingested, again, added, orphan = run_registered(
        "scicat",
        [
            ("scicat_ingest", ingest),
            ("scicat_ingest", ingest),
            ("scicat_add_location", location),
            ("scicat_add_location", {**location, "files": [{**item, "path": "P2/none.dat"}]}),
        ],
        cwd=tmp_path,
    )
    pid = ingested["result"]["pid"]
    assert ingested["result"]["created"] is True
    assert again["result"] == {**ingested["result"], "created": False, "updated": False}
    assert added["result"] == {"updated": 1, "unchanged": 0, "missing": 0}
    assert orphan["result"] == {"updated": 0, "unchanged": 0, "missing": 1}
    assert pid.startswith("local/")


@pytest.fixture
def no_project_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any import of this project's packages (even ones already in sys.modules)."""
    real_import = builtins.__import__

    def guarded(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in PROJECT_PACKAGES:
            raise ImportError(f"registered code imported {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)


def registered(module: str, entrypoint: str) -> Any:
    """What the endpoint does: exec the module's full text in a fresh namespace."""
    source = (MODULES / f"{module}.py").read_text(encoding="utf-8")
    namespace: dict[str, Any] = {}
    exec(compile(source, "<registered>", "exec", dont_inherit=True), namespace)
    return namespace[entrypoint]


@pytest.mark.usefixtures("no_project_imports")
def test_scicat_http_path_registered_whole(tmp_path: Path, scicat: FakeSciCat) -> None:
    """The real-SciCat path (pyscicat + requests) from the module text, in process for the
    fake SciCat, with project imports refused."""
    path = tmp_path / "P1" / "scan.dat"
    path.parent.mkdir()
    path.write_bytes(b"# a: 1\n")
    item = {"path": "P1/scan.dat", "size": 7, "checksum": md5(b"# a: 1\n"), "version": 1}
    ingested = registered("scicat", "scicat_ingest")(
        beamline="bl402",
        file_path=str(path),
        size=7,
        proposal="P1",
        metadata=METADATA,
        checksum=item["checksum"],
        version=1,
    )
    assert ingested["created"] is True
    location = {
        "beamline": "bl402",
        "cfs_root": str(tmp_path),
        "hpss_dir": "/hpss",
        "files": [item],
        "archive": {"archives": ["/hpss/P1/x.tar"], "where": [0]},
    }
    added = registered("scicat", "scicat_add_location")(**location)
    assert added == {"updated": 1, "unchanged": 0, "missing": 0}
    scicat.fail["post-datablocks"] = (500, f"boom {TOKEN}")
    with pytest.raises(RuntimeError, match="scicat_add_location failed") as caught:
        registered("scicat", "scicat_add_location")(
            **{**location, "archive": {"archives": ["/hpss/P1/y.tar"], "where": [0]}}
        )
    assert "HTTP 500" in str(caught.value) and TOKEN not in str(caught.value)


# -- self-containment, statically (also covers branches the cases above do not reach) ---------
LAZY_ONLY = {"pyscicat", "requests", "h5py"}


@pytest.mark.parametrize("module", ["scicat", "hpss", "cfs"])
def test_module_imports_stdlib_or_lazy_optional_only(module: str) -> None:
    tree = ast.parse((MODULES / f"{module}.py").read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            top_level.add((node.module or "").split(".")[0])
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and node not in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            nested |= {(n or "").split(".")[0] for n in names}
    assert nested <= LAZY_ONLY, nested


def _path_safety_block(module: str) -> str:
    text = (MODULES / f"{module}.py").read_text(encoding="utf-8")
    start = text.index("# --- path safety")
    return text[start : text.index("# --- end path safety ---", start)]


def test_path_safety_copies_stay_identical() -> None:
    """cfs.py may not import hpss.py, so the path-safety helpers are one copied block."""
    assert _path_safety_block("cfs") == _path_safety_block("hpss")
