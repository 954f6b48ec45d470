"""Per-invocation state shared by the commands: config path, backend choice, output format.

Everything is loaded on first use so `dichroism --help` imports none of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dichroism_control.output import Format, emit

if TYPE_CHECKING:
    from collections.abc import Callable

    from dichroism_control.backend import Backend
    from dichroism_control.config import Config
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.ledger import Ledger


@dataclass
class Context:
    config_path: Path | None = None
    backend_override: str | None = None
    fmt: Format = "text"
    # May the Globus app start a login (a prompt on this terminal)? None: only when stdin
    # is a terminal. Long-running commands (watch, the lifecycle loop) set False.
    interactive: bool | None = None
    _config: Config | None = field(default=None, repr=False)
    _ledger: Ledger | None = field(default=None, repr=False)

    def config(self) -> Config:
        if self._config is None:
            from dichroism_control.config import load_config

            config = load_config(self.config_path)
            if self.backend_override and self.backend_override != config.backend:
                config = config.model_copy(update={"backend": self.backend_override})
            self._config = config
        return self._config

    def ledger(self) -> Ledger:
        if self._ledger is None:
            from dichroism_control.ledger import Ledger

            self._ledger = Ledger(self.config().ledger_path)
        return self._ledger

    def deployment(self) -> Deployment:
        from dichroism_control.deploy_state import Deployment

        return Deployment.resolve(self.config())

    def timer_flows(self) -> list[str]:
        """Ids of the deployed flows that timers start (auth.TIMER_FLOWS): the Timers consent
        must name each before the first Timers token is fetched (GLOBUS_NOTES)."""
        from dichroism_control.auth import TIMER_FLOWS
        from dichroism_control.errors import ConfigError

        try:
            flows = self.deployment().flows
        except ConfigError:
            return []
        return [flows[name] for name in TIMER_FLOWS if name in flows]

    def backend(self, *, timer_flows: list[str] | None = None) -> Backend:
        import sys

        from dichroism_control.backends import build_backend

        interactive = self.interactive if self.interactive is not None else sys.stdin.isatty()
        return build_backend(self.config(), timer_flow_ids=timer_flows, interactive=interactive)

    def emit(self, data: Any, text: Callable[[Any], str] | None = None) -> None:
        emit(data, fmt=self.fmt, text=text)

    def warn(self, message: str) -> None:
        """One line on stderr, whatever the format (stdout stays one JSON document)."""
        import sys

        sys.stderr.write(f"dichroism: warning: {message}\n")
