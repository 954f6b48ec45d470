"""Reading config.yml safely: bounded size and expansion, UTF-8, no duplicate keys, `${VAR}`.

A config file is small and written by a person, so anything else is a mistake to name, not
to guess about: a duplicate key (YAML keeps the last one silently), an alias "bomb" (a few
lines that expand into millions of nodes; PyYAML shares aliased objects, but everything that
walks the tree afterwards pays for every copy), a file that is not UTF-8, or a `${VAR}` that
expands to an empty path. Every error is one line naming the file and the key or line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from dichroism_control.errors import ConfigError

MAX_BYTES = 1 * 2**20
# Nodes visited while expanding `${VAR}` over the loaded tree, aliases counted every time
# they are reached: generous for any real config, small enough to stop a bomb at once.
MAX_NODES = 100_000
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Keys that hold a path: a `${VAR}` there that expands to nothing is refused.
PATH_KEYS = frozenset(
    {
        "root",
        "root_path",
        "local_path",
        "state_dir",
        "source_root",
        "hpss_root",
        "hpss_path",
        "catalogue_path",
        "flow_definitions_dir",
    }
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r}"
                f" (first at line {seen[key] + 1})"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping,
)


def read_yaml(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a config file is at most {MAX_BYTES}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_NODES

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ConfigError(
                f"config: more than {MAX_NODES} values once aliases are expanded"
                " (an alias bomb?); write the values out"
            )


def expand_env(node: Any, where: str = "", budget: _Budget | None = None) -> Any:
    """`${VAR}` and `${VAR:-default}` in every string, read from the environment."""
    budget = budget or _Budget()
    budget.spend()
    if isinstance(node, dict):
        return {
            k: expand_env(v, f"{where}.{k}" if where else str(k), budget) for k, v in node.items()
        }
    if isinstance(node, list):
        return [expand_env(v, f"{where}.{i}", budget) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    empty: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None and not value:
            value = default  # as in the shell: `:-` covers unset and empty
        elif value is None:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        if not value:
            empty.append(name)
        return value

    expanded = _ENV_RE.sub(substitute, node)
    key = where.rsplit(".", 1)[-1]
    if empty and key in PATH_KEYS:
        # `${BASE:-}/data` would quietly become `/data`, `${BASE:-}data` a relative path.
        raise ConfigError(
            f"{where}: ${{{empty[0]}}} expands to an empty string in a path ({node!r});"
            f" set {empty[0]}"
        )
    return expanded
