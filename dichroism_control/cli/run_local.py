"""`dichroism run-local DEFINITION --input FILE`: run any flow definition offline.

Prints the final run document (status, details.output). Exit 0 when the run SUCCEEDED,
1 when it FAILED, 2 when the definition cannot run or the input does not match its schema.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from dichroism_control.cli.context import Context


def register(app: typer.Typer) -> None:
    app.command("run-local")(run_local)


def run_local(
    ctx: typer.Context,
    definition: Annotated[
        Path,
        typer.Argument(
            help="A flow file ({definition, input_schema}) or a bare definition.",
            show_default=False,
        ),
    ],
    *,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="The run input (JSON file; '-' reads stdin). Default: {}."),
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="Label of the run.")] = None,
    show_log: Annotated[
        bool, typer.Option("--log", help="Also print the run's log entries.")
    ] = False,
) -> None:
    """Run a flow definition on the local engine and print the final run document."""
    import json
    import sys

    from dichroism_control.definitions import load_document
    from dichroism_control.errors import ConfigError, DichroismError
    from dichroism_control.local.run_local import run_document

    state: Context = ctx.obj
    document = load_document(definition)
    if input_file is None:
        flow_input: Any = {}
    else:
        try:
            text = sys.stdin.read() if str(input_file) == "-" else input_file.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"{input_file}: cannot read ({exc.strerror})") from None
        try:
            flow_input = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{input_file}: not valid JSON (line {exc.lineno}: {exc.msg})"
            ) from None
    config = _optional_config(state)
    if config is not None:
        document = _bound(document, config)
    run = run_document(
        document.definition,
        document.input_schema,
        flow_input,
        config=config,
        title=document.name,
        label=label,
    )
    if not show_log:
        run.pop("log", None)
    state.emit(run, text=_text)
    if run["status"] != "SUCCEEDED":
        details = run.get("details") or {}
        raise DichroismError(
            f"run {run['status']}: {details.get('code')}: {details.get('description')}"
        )


def _bound(document: Any, config: Any) -> Any:
    """One of this deployment's flows (by name or by its definition) runs with its schema
    bound to the configured roots and functions, as the service would run it: a crafted
    input cannot pair a prune's target with the wrong safe copy or verifier here either."""
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import checksum, load_all
    from dichroism_control.deploy_state import Deployment

    shipped = load_all(config.definitions_path)
    name = next(
        (
            n
            for n, d in shipped.items()
            if n == document.name or checksum(d.definition) == checksum(document.definition)
        ),
        None,
    )
    if name is None:
        return document
    named = dataclasses.replace(document, name=name)
    return specialise(named, config, functions=Deployment.resolve(config).functions)


def _optional_config(state: Context) -> Any:
    """The config if there is one; without an explicit --config a missing file is fine
    (Hello World tutorials need none)."""
    from dichroism_control.config import default_config_path

    if state.config_path is None and not default_config_path().exists():
        return None
    return state.config()


def _text(run: dict[str, Any]) -> str:
    import json

    details = run.get("details") or {}
    lines = [
        f"run {run['run_id']}: {run['status']} ({details.get('code')}) after "
        f"{run.get('transitions')} transitions",
    ]
    if details.get("description"):
        lines.append(f"  {details['description']}")
    if run["status"] != "SUCCEEDED" and details.get("cause"):
        lines.append(f"  cause: {details['cause']}")
    lines.append("output: " + json.dumps(details.get("output"), indent=2, default=str))
    for entry in run.get("log") or []:
        lines.append(
            f"{entry.get('time', '')}  {entry.get('code', '')}: {entry.get('description', '')}"
        )
    return "\n".join(lines)
