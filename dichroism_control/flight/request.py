"""The flight_check run request of one beamline: body, label, tags, roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dichroism_control.backend import RunRequest
from dichroism_control.flight.canary import Canary, cfs_directory

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.deploy_state import Deployment

FLOW = "flight_check"
TAG_PREFIX = "dichroism-flight:"
CHECK_TAG_PREFIX = "dichroism-check:"


def flight_tag(beamline: str) -> str:
    """The tag that finds a beamline's timer-started flight-check runs: Timers passes tags
    on to the runs it starts, but no label (FlowStartDocument). `dichroism check`'s runs
    carry `check_tag` instead: their canary is not the timer's, and they judge themselves."""
    return TAG_PREFIX + beamline


def check_tag(beamline: str) -> str:
    return CHECK_TAG_PREFIX + beamline


def body(
    config: Config, deployment: Deployment, canary: Canary, *, delete_source: bool
) -> dict[str, Any]:
    from dichroism_control.routing import hpss_directory

    beamline = canary.beamline
    settings = config.beamline(beamline)
    endpoints = config.globus.compute_endpoints
    function = deployment.function_id("flight_check_endpoint")
    return {
        "input": {
            "beamline": beamline,
            "source": {
                "collection_id": config.endpoint(settings.source).uuid,
                "path": canary.collection_path,
                "size": canary.size,
                "checksum": canary.md5,
                "delete": delete_source,
            },
            "destination": {
                "collection_id": config.endpoint(settings.destination).uuid,
                "directory": cfs_directory(config, beamline),
            },
            "nersc": {
                "endpoint_id": endpoints.nersc,
                "function_id": function,
                "hpss_dir": hpss_directory(config, beamline),
            },
            "scicat": {"endpoint_id": endpoints.scicat, "function_id": function},
        }
    }


def request(
    config: Config,
    deployment: Deployment,
    canary: Canary,
    *,
    delete_source: bool,
    label: str,
    tag: str,
) -> RunRequest:
    roles = config.globus.roles
    return RunRequest(
        flow_id=deployment.flow_id(FLOW),
        body=body(config, deployment, canary, delete_source=delete_source),
        label=label,
        tags=["dichroism", canary.beamline, FLOW, tag],
        run_monitors=list(roles.run_monitors),
        run_managers=list(roles.run_managers),
        notify_on=list(config.globus.notifications.status),
    )
