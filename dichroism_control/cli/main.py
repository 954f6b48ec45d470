"""`dichroism`: the entry point. Global options, command registration, error handling.

Command bodies never catch errors themselves: a `DichroismError` raised anywhere ends here
as one line on stderr and its exit code (0 ok, 1 operation failed, 2 bad usage/config/input);
under `--format json` it is a JSON document on stdout instead (`{"error": {...}}`), unless
the command already printed its document.

Habits of `globus` CLI users: `-h` as well as `--help`, `--version`, `-F json` also after the
subcommand (`dichroism status -F json`), shell completion (`--install-completion`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dichroism_control.cli.context import Context

_GLOBAL_WITH_VALUE = ("--config", "--backend", "--format", "-F")


def hoist_format(args: list[str]) -> list[str]:
    """Move `-F X` / `--format X` / `--format=X` / `-FX` found after the subcommand to just
    before it, so the global option parses wherever a `globus` user types it."""
    head: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--" or not arg.startswith("-"):
            break
        head.append(arg)
        if arg in _GLOBAL_WITH_VALUE and index + 1 < len(args):
            head.append(args[index + 1])
            index += 1
        index += 1
    hoisted: list[str] = []
    rest: list[str] = []
    tail = args[index:]
    position = 0
    while position < len(tail):
        arg = tail[position]
        if arg == "--":
            rest.extend(tail[position:])
            break
        if arg in ("-F", "--format") and position + 1 < len(tail):
            hoisted += ["--format", tail[position + 1]]
            position += 2
            continue
        if arg.startswith("--format="):
            hoisted += ["--format", arg.split("=", 1)[1]]
        elif arg.startswith("-F") and len(arg) > 2:
            hoisted += ["--format", arg[2:]]
        else:
            rest.append(arg)
        position += 1
    return head + hoisted + rest


def requested_format(args: list[str]) -> str:
    """The output format the command line asks for (the last one wins, as when parsed)."""
    fmt = "text"
    hoisted = hoist_format(args)
    for index, arg in enumerate(hoisted):
        if arg == "--":
            break
        if arg in ("--format", "-F") and index + 1 < len(hoisted):
            fmt = hoisted[index + 1]
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
    return fmt


class DichroismGroup(TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_format(list(args)))


app = typer.Typer(
    name="dichroism",
    cls=DichroismGroup,
    help="Data movement for the ALS dichroism beamlines (4.0.2, 6.3.1) on Globus Flows.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
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
    "failures",
    "scan",
    "check",
    "lifecycle",
    "timers",
    "doctor",
    "login",
    "run_local",
    "demo",
)


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    from dichroism_control import __version__

    try:
        sdk = f", globus-sdk {version('globus-sdk')}"
    except PackageNotFoundError:
        sdk = ""
    sys.stdout.write(f"dichroism {__version__} (python {sys.version.split()[0]}{sdk})\n")
    raise typer.Exit()


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
    fmt: Annotated[
        str,
        typer.Option("--format", "-F", help="Output format: text | json (also after the command)."),
    ] = "text",
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
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


def _fail(message: str, exit_code: int, fmt: str, **extra: Any) -> None:
    from dichroism_control import output

    if fmt == "json" and not output.emitted():
        output.error_document(message, exit_code, **extra)
    else:
        output.error(message)
    sys.exit(exit_code)


def _click_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(usage-error types, abort types): click's own, and the copy newer typers vendor."""
    import click

    errors: list[type[Exception]] = [click.exceptions.ClickException]
    try:
        from typer._click import exceptions as vendored  # newer typers ship their own click
    except ImportError:
        pass
    else:
        errors.append(vendored.ClickException)
    return tuple(errors), (click.exceptions.Abort, typer.Abort)


def main(argv: list[str] | None = None) -> None:
    from dichroism_control import output
    from dichroism_control.errors import DichroismError

    args = list(sys.argv[1:] if argv is None else argv)
    fmt = requested_format(args)
    output.reset()
    try:
        # Not standalone: usage errors come here too, so `--format json` reports them as JSON.
        result = app(args=args, prog_name="dichroism", standalone_mode=False)
    except DichroismError as exc:
        extra: dict[str, Any] = {"kind": type(exc).__name__}
        status = getattr(exc, "http_status", None)
        if status is not None:
            extra["http_status"] = status
        _fail(str(exc), exc.exit_code, fmt, **extra)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # `dichroism runs list | head`: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:
        # click is imported only now: `--help` must not pay for it.
        usage_errors, aborts = _click_errors()
        if isinstance(exc, aborts):
            sys.exit(130)
        if not isinstance(exc, usage_errors):
            raise
        code = int(getattr(exc, "exit_code", 2))
        if fmt == "json":
            _fail(str(getattr(exc, "format_message", exc.__str__)()), code, fmt, kind="usage")
        getattr(exc, "show")()  # noqa: B009 - click's own "Usage: ... Error: ..." on stderr
        sys.exit(code)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
