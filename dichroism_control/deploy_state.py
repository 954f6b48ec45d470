"""What `dichroism deploy` published: flow and function ids with their checksums.

Kept as JSON beside the rest of the state (`state_dir/deploy-state.json`). Ids pinned in
config.yml win over the file, so several hosts can share one deployment with only the config
copied between them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dichroism_control.config import Config
from dichroism_control.errors import ConfigError


@dataclass
class DeployState:
    path: Path
    backend: str = "globus"
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, *, backend: str) -> DeployState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path, backend)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable deploy state ({exc})") from None
        section = data.get(backend, {})
        return cls(
            path, backend, dict(section.get("flows", {})), dict(section.get("functions", {}))
        )

    def save(self) -> None:
        """Atomic replace: a crash mid-write never leaves a half-written state file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            existing = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            existing = {}
        existing[self.backend] = {"flows": self.flows, "functions": self.functions}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".deploy-state.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(existing, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class Deployment:
    """Resolved ids: config pins first, then the deploy-state file."""

    flows: dict[str, str]
    functions: dict[str, str]

    @classmethod
    def resolve(cls, config: Config) -> Deployment:
        state = DeployState.load(config.deploy_state_path, backend=config.backend)
        flows = {name: entry["id"] for name, entry in state.flows.items() if entry.get("id")}
        functions = {
            name: entry["id"] for name, entry in state.functions.items() if entry.get("id")
        }
        if config.backend == "globus":
            for name, settings in config.globus.flows.items():
                if settings.id:
                    flows[name] = settings.id
            functions.update(config.globus.functions)
        return cls(flows, functions)

    def flow_id(self, name: str) -> str:
        try:
            return self.flows[name]
        except KeyError:
            raise ConfigError(
                f"flow {name!r} is not deployed: run `dichroism deploy` (or pin "
                f"globus.flows.{name}.id in config.yml)"
            ) from None

    def function_id(self, name: str) -> str:
        try:
            return self.functions[name]
        except KeyError:
            raise ConfigError(
                f"Compute function {name!r} is not registered: run `dichroism deploy` (or pin "
                f"globus.functions.{name} in config.yml)"
            ) from None
