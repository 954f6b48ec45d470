"""Where a scan goes: local path -> beamline, relative path, collection paths, proposal.

A scan at `{watch.root}/{rel}` is `{source.root_path}/{source_root}/{rel}` in the source
collection and `{destination.root_path}/{rel}` at CFS (DESIGN). The relative layout
(proposal / user directories) is kept. Paths that leave the watch root, including through a
symlink, are refused: the watcher must never ship a file it was not asked to watch.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dichroism_control.config import CANARY_DIR, Beamline, Config
from dichroism_control.errors import ConfigError

# The archive and prune schemas' limit on a path relative to a root (tools/gen_definitions.py
# REL_MAX): it keeps a batch's run state under the Flows cap.
REL_MAX = 240


class RouteError(ConfigError):
    """The path cannot be shipped (outside every watch root, escapes it, ignored name)."""


@dataclass(frozen=True)
class Route:
    beamline: str
    local_path: str  # absolute, as seen on the acquisition host
    rel: str  # relative to the watch root, POSIX separators
    source_collection: str
    source_path: str
    destination_collection: str
    destination_path: str
    destination_root: str
    proposal: str | None
    real_path: str = ""  # local_path with every symlink resolved (checked inside the root)


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    """A watch root's resolved path, once: it is resolved for every scan, twice (at detection
    and before sending). Should the root be re-pointed while the watcher runs, the stale value
    makes scans refused, never shipped from elsewhere."""
    return os.path.realpath(root)


def _join(root: str, *parts: str) -> str:
    return posixpath.normpath(posixpath.join(root, *(p.lstrip("/") for p in parts)))


def matches(beamline: Beamline, rel: str) -> bool:
    """Whether a relative path is a scan for this beamline (patterns, not ignored)."""
    parts = PurePosixPath(rel).parts
    name = parts[-1] if parts else rel
    if CANARY_DIR in parts:
        return False  # the flight check's canaries, whatever the ignore rules say
    # Ignore rules apply to every component: a hidden directory hides what is inside it.
    if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in beamline.watch.ignore):
        return False
    return any(
        fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)
        for pattern in beamline.watch.patterns
    )


def beamline_for(config: Config, path: str | Path) -> str:
    absolute = os.path.abspath(path)
    for name, beamline in config.beamlines.items():
        root = beamline.watch.root
        if absolute == root or absolute.startswith(root.rstrip("/") + "/"):
            return name
    roots = ", ".join(f"{n}: {b.watch.root}" for n, b in sorted(config.beamlines.items()))
    raise RouteError(f"{absolute}: not inside any beamline's watch root ({roots})")


def proposal_for(beamline: Beamline, rel: str) -> str | None:
    depth = beamline.scicat.proposal_depth
    directories = PurePosixPath(rel).parts[:-1]
    if depth and len(directories) >= depth:
        return directories[depth - 1]
    return beamline.scicat.default_proposal


def route(config: Config, path: str | Path, *, beamline: str | None = None) -> Route:
    """The route of one scan; raises RouteError naming the path when it must not be shipped."""
    absolute = os.path.abspath(path)
    name = beamline or beamline_for(config, absolute)
    settings = config.beamline(name)
    root = settings.watch.root
    if not (absolute == root or absolute.startswith(root.rstrip("/") + "/")):
        raise RouteError(f"{absolute}: outside the watch root of {name} ({root})")
    # A symlink (of the file or of a directory on the way) may point outside the root.
    real, real_root = os.path.realpath(absolute), _real_root(root)
    if not real.startswith(real_root.rstrip("/") + "/"):
        raise RouteError(f"{absolute}: resolves to {real}, outside the watch root of {name}")
    rel = PurePosixPath(os.path.relpath(absolute, root)).as_posix()
    if rel in ("", ".") or rel.startswith("../"):
        raise RouteError(f"{absolute}: not a file below the watch root of {name}")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        # Flow input is JSON text: a name that is not UTF-8 cannot be named to Globus.
        raise RouteError(f"{absolute!r}: the file name is not valid UTF-8") from None
    if "\n" in rel or "\r" in rel:
        # Globus refuses such names (docs.globus.org/api/transfer/file_operations, Path
        # Encoding), and the Compute verifiers refuse a batch that holds one.
        raise RouteError(f"{absolute!r}: a line break in the name; rename the file")
    if len(rel) > REL_MAX:
        raise RouteError(
            f"{absolute}: {len(rel)} characters below the watch root; the archive and prune"
            f" flows carry at most {REL_MAX} (their run state is capped): shorten the path"
        )
    source = config.endpoint(settings.source)
    destination = config.endpoint(settings.destination)
    return Route(
        beamline=name,
        local_path=absolute,
        rel=rel,
        source_collection=source.uuid,
        source_path=_join(source.root_path, settings.effective_source_root, rel),
        destination_collection=destination.uuid,
        destination_path=_join(destination.root_path, rel),
        destination_root=destination.root_path,
        proposal=proposal_for(settings, rel),
        real_path=real,
    )


def source_root_path(config: Config, beamline: str) -> str:
    """The watch root as a path in the source (compute-dtn) collection."""
    settings = config.beamline(beamline)
    return _join(config.endpoint(settings.source).root_path, settings.effective_source_root)


def cfs_root_path(config: Config, beamline: str) -> str:
    return config.endpoint(config.beamline(beamline).destination).root_path


def hpss_directory(config: Config, beamline: str) -> str:
    """`{hpss_root}/{beamline}/raw`: the tape mirror of the beamline's CFS root."""
    return _join(config.beamline(beamline).hpss_root, beamline, "raw")
