"""Routing of roots: where a prune deletes, where it looks for the safe copy, and which
paths are refused before anything is shipped (or re-identified after a prune kept a file).

Issue 13 (mutation testing of the deletion path): every expected root is written out
literally, never computed with the routing functions under test, so a routing bug that
moved a root (e.g. `cfs_root_path` answering the compute-dtn root, which makes target and
safe the same place) fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dichroism_control.config import Config, load_config
from dichroism_control.routing import (
    REL_MAX,
    RouteError,
    beamline_for,
    cfs_root_path,
    hpss_directory,
    route,
    source_root_path,
)
from tests.conftest import IDS


def test_the_three_roots_of_each_beamline(config: Config, tmp_path: Path) -> None:
    """Prune target and safe roots, written out: DTN root = source root_path + watch root,
    CFS root = destination root_path, HPSS = {hpss_root}/{beamline}/raw."""
    assert source_root_path(config, "bl402") == f"{tmp_path}/data/bl402"
    assert source_root_path(config, "bl631") == f"{tmp_path}/data/bl631"
    assert cfs_root_path(config, "bl402") == f"{tmp_path}/cfs/4.0.2/raw"
    assert cfs_root_path(config, "bl631") == f"{tmp_path}/cfs/6.3.1/raw"
    assert hpss_directory(config, "bl402") == "/home/a/alsdev/data_mover/4.0.2/bl402/raw"
    assert hpss_directory(config, "bl631") == "/home/a/alsdev/data_mover/6.3.1/bl631/raw"


def test_source_root_below_a_collection_root_path(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """A source collection rooted at /data with `source_root` /bl402/raw: the DTN root is
    their join (a root_path of "/" only hides a dropped component)."""

    def mutate(data: dict[str, Any]) -> None:
        data["globus"]["endpoints"]["bl402-compute-dtn"]["root_path"] = "/data/"
        data["beamlines"]["bl402"]["source_root"] = "/Xbl402/raw/"
        data["beamlines"]["bl402"]["hpss_root"] = "/home/a/alsdev/"

    config = load_config(write_config(mutate))
    assert source_root_path(config, "bl402") == "/data/Xbl402/raw"
    assert hpss_directory(config, "bl402") == "/home/a/alsdev/bl402/raw"
    found = route(config, f"{tmp_path}/data/bl402/P1/a.h5")
    assert found.source_path == "/data/Xbl402/raw/P1/a.h5"


def test_route_of_a_scan(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "data" / "bl402" / "P1" / "scan_001.h5"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    found = route(config, str(path))
    assert found.beamline == "bl402"
    assert found.local_path == str(path)
    assert found.rel == "P1/scan_001.h5"
    assert found.source_collection == IDS["bl402_dtn"]
    assert found.source_path == f"{tmp_path}/data/bl402/P1/scan_001.h5"
    assert found.destination_collection == IDS["bl402_cfs"]
    assert found.destination_path == f"{tmp_path}/cfs/4.0.2/raw/P1/scan_001.h5"
    assert found.destination_root == f"{tmp_path}/cfs/4.0.2/raw"
    assert found.real_path == str(path)
    assert found.proposal == "P1"  # proposal_depth 1: the first directory


def test_a_sibling_root_sharing_the_prefix_is_not_the_beamline(
    config: Config, tmp_path: Path
) -> None:
    """`.../bl402_old/x` starts with the characters of `.../bl402` but is not inside it."""
    sibling = f"{tmp_path}/data/bl402_old/P1/a.h5"
    with pytest.raises(RouteError) as info:
        beamline_for(config, sibling)
    assert str(info.value) == (
        f"{sibling}: not inside any beamline's watch root"
        f" (bl402: {tmp_path}/data/bl402, bl631: {tmp_path}/data/bl631)"
    )
    with pytest.raises(RouteError, match=r"outside the watch root of bl402 \("):
        route(config, sibling, beamline="bl402")
    assert beamline_for(config, f"{tmp_path}/data/bl631/P1/a.h5") == "bl631"
    assert beamline_for(config, f"{tmp_path}/data/bl402") == "bl402"  # the root itself


def test_route_refuses_the_root_itself(config: Config, tmp_path: Path) -> None:
    with pytest.raises(RouteError, match=r"resolves to .*, outside the watch root of bl402"):
        route(config, f"{tmp_path}/data/bl402")


def test_route_refuses_a_directory_symlink_leaving_the_root(config: Config, tmp_path: Path) -> None:
    """A directory link inside the watch root pointing to a sibling with a shared prefix."""
    elsewhere = tmp_path / "data" / "bl402_old"
    elsewhere.mkdir(parents=True)
    (elsewhere / "a.h5").write_bytes(b"x")
    (tmp_path / "data" / "bl402" / "P1").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RouteError, match=f"resolves to {elsewhere}/a.h5, outside"):
        route(config, f"{tmp_path}/data/bl402/P1/a.h5")


def test_route_follows_a_directory_symlink_that_stays_inside(
    config: Config, tmp_path: Path
) -> None:
    root = tmp_path / "data" / "bl402"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.h5").write_bytes(b"x")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    found = route(config, f"{root}/alias/a.h5")
    assert found.rel == "alias/a.h5"
    assert found.real_path == f"{root}/real/a.h5"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a\nb.h5", "a line break in the name"),
        ("a\rb.h5", "a line break in the name"),
        ("a\udcffb.h5", "the file name is not valid UTF-8"),
    ],
)
def test_route_refuses_names_globus_cannot_carry(
    config: Config, tmp_path: Path, name: str, message: str
) -> None:
    with pytest.raises(RouteError, match=message):
        route(config, f"{tmp_path}/data/bl402/P1/{name}")


def test_route_path_length_limit_is_inclusive(config: Config, tmp_path: Path) -> None:
    """REL_MAX characters below the root are carried; one more is refused."""
    root = f"{tmp_path}/data/bl402"
    longest = "P/" + "a" * (REL_MAX - 2)
    assert route(config, f"{root}/{longest}").rel == longest
    with pytest.raises(RouteError, match=f"{REL_MAX + 1} characters below the watch root"):
        route(config, f"{root}/{longest}b")


def test_route_with_an_explicit_beamline_still_checks_the_root(
    config: Config, tmp_path: Path
) -> None:
    with pytest.raises(RouteError, match="outside the watch root of bl631"):
        route(config, f"{tmp_path}/data/bl402/P1/a.h5", beamline="bl631")


def test_a_watch_root_reached_through_a_symlink(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """The root's own symlink is resolved too: files below it are inside it."""
    real = tmp_path / "real402"
    real.mkdir()
    (real / "a.h5").write_bytes(b"x")
    link = tmp_path / "link402"
    link.symlink_to(real, target_is_directory=True)

    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["watch"]["root"] = str(link)

    config = load_config(write_config(mutate))
    found = route(config, f"{link}/a.h5")
    assert found.rel == "a.h5"
    assert found.real_path == f"{real}/a.h5"


@pytest.mark.parametrize("name", ["spoolX", "spool "], ids=["ends-in-X", "ends-in-space"])
def test_a_watch_root_is_taken_as_named(
    write_config: Callable[..., Path], tmp_path: Path, name: str
) -> None:
    """Only a trailing '/' is trimmed from a root: a root whose name ends in another
    character (a letter, even a space) keeps it, and files below it are inside it."""
    root = tmp_path / "data" / name

    def mutate(data: dict[str, Any]) -> None:
        data["beamlines"]["bl402"]["watch"]["root"] = str(root)

    config = load_config(write_config(mutate))
    (root / "P1").mkdir(parents=True, exist_ok=True)
    (root / "P1" / "a.h5").write_bytes(b"x")
    assert beamline_for(config, f"{root}/P1/a.h5") == "bl402"
    found = route(config, f"{root}/P1/a.h5")
    assert (found.rel, found.real_path) == ("P1/a.h5", f"{root}/P1/a.h5")
