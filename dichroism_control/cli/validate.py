"""`dichroism validate [--remote]`: the config and every flow definition."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dichroism_control.cli.context import Context


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)


def validate(
    ctx: typer.Context,
    remote: Annotated[
        bool, typer.Option("--remote", help="Also ask the Flows service to validate each flow.")
    ] = False,
) -> None:
    """Check config.yml and flow_definitions/*.json (structure, schemas; --remote: the service)."""
    from dichroism_control.binding import specialise
    from dichroism_control.definitions import load_all, validate_document
    from dichroism_control.errors import ConfigError, DefinitionError

    state: Context = ctx.obj
    config = state.config()
    documents = {n: specialise(d, config) for n, d in load_all(config.definitions_path).items()}
    report: dict[str, Any] = {"config": str(state.config_path or "config.yml"), "flows": {}}
    problems: list[str] = []
    for name, document in documents.items():
        errors = validate_document(document)
        report["flows"][name] = {"local_errors": errors}
        problems.extend(errors)
    if remote:
        backend = state.backend()
        for name, document in documents.items():
            errors = backend.validate_flow(document.definition, document.input_schema)
            report["flows"][name]["remote_errors"] = errors
            problems.extend(f"{name}: (service) {e}" for e in errors)
    placeholders = config.placeholders()
    report["placeholders"] = placeholders
    try:
        config.check_watch_roots()
        report["config_errors"] = []
    except ConfigError as exc:
        report["config_errors"] = [str(exc)]
    report["warnings"] = config.warnings()
    report["valid"] = not problems and not report["config_errors"]
    for warning in report["warnings"]:
        state.warn(warning)
    state.emit(report, text=_text)
    if report["config_errors"]:
        raise ConfigError(report["config_errors"][0])
    if problems:
        raise DefinitionError(f"{len(problems)} problem(s) found")


def _text(report: dict[str, Any]) -> str:
    if report["config_errors"]:
        lines = [f"config: INVALID ({report['config']})"]
        lines.extend(f"  - {e}" for e in report["config_errors"])
    else:
        lines = [f"config: ok ({report['config']})"]
    if report["placeholders"]:
        lines.append(
            f"  note: {len(report['placeholders'])} placeholder id(s) "
            f"(e.g. {report['placeholders'][0]}): fine locally, refused by commands that "
            "talk to Globus"
        )
    for name, result in report["flows"].items():
        errors = result["local_errors"] + [
            f"(service) {e}" for e in result.get("remote_errors", [])
        ]
        checked = "structure + service" if "remote_errors" in result else "structure"
        lines.append(f"{name}: {'ok' if not errors else 'INVALID'} ({checked})")
        lines.extend(f"  - {e}" for e in errors)
    return "\n".join(lines)
