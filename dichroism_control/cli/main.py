"""`dichroism`: the entry point. Global options, command registration, error handling.

Command bodies never catch errors themselves: a `DichroismError` raised anywhere ends here
as one line on stderr and its exit code (0 ok, 1 operation failed, 2 bad usage/config/input).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from dichroism_control.cli.context import Context

app = typer.Typer(
    name="dichroism",
    help="Data movement for the ALS dichroism beamlines (4.0.2, 6.3.1) on Globus Flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# One module per command group; each exposes register(app).
COMMAND_MODULES = (
    "validate",
    "deploy",
    "watch",
    "status",
    "runs",
    "lifecycle",
    "timers",
    "doctor",
    "login",
    "run_local",
    "demo",
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="config.yml to use (default: $DICHROISM_CONFIG, else ./config.yml).",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="globus | local (default: the config's `backend`)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format: text | json.")] = "text",
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
) -> None:
    from dichroism_control.errors import ConfigError

    if fmt not in ("text", "json"):
        raise ConfigError(f"--format: must be text or json, not {fmt!r}")
    if backend is not None and backend not in ("globus", "local"):
        raise ConfigError(f"--backend: must be globus or local, not {backend!r}")
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The SDK logs request details at INFO/DEBUG; keep them out unless asked for twice.
    logging.getLogger("globus_sdk").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    ctx.obj = Context(config_path=config, backend_override=backend, fmt=fmt)  # type: ignore[arg-type]


for _name in COMMAND_MODULES:
    importlib.import_module(f"dichroism_control.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    from dichroism_control.errors import DichroismError
    from dichroism_control.output import error

    try:
        # Standalone mode handles --help, usage errors (exit 2) and success (exit 0) itself;
        # our own errors propagate here.
        app(args=argv, prog_name="dichroism")
    except DichroismError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # `dichroism runs list | head`: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
