"""The new_file run request for one scan: body, label, tags, roles; checked against the
deployed input schema before anything is sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dichroism_control.backend import RunRequest
from dichroism_control.binding import input_validator
from dichroism_control.definitions import wait_time
from dichroism_control.identity import iso_utc, transfer_time
from dichroism_control.launcher.labels import FLOW_NAME, run_label, run_tags

if TYPE_CHECKING:
    from dichroism_control.config import Config
    from dichroism_control.deploy_state import Deployment
    from dichroism_control.ledger import Scan
    from dichroism_control.routing import Route


class RequestBuilder:
    """Builds and validates new_file run requests (metadata per beamline, computed once)."""

    def __init__(self, config: Config, deployment: Deployment) -> None:
        self.config = config
        self.flow_id = deployment.flow_id(FLOW_NAME)
        self.function_id = deployment.function_id("scicat_ingest")
        self._validator = input_validator(config, FLOW_NAME, functions=deployment.functions)
        self._transfer_wait = wait_time(config, FLOW_NAME, "TransferToCFS")
        self._metadata = {
            name: {
                "instrument_id": b.scicat.instrument_id,
                "owner_group": b.scicat.owner_group,
                "access_groups": list(b.scicat.access_groups),
                "owner": b.scicat.owner,
                "contact_email": b.scicat.contact_email,
                "principal_investigator": b.scicat.principal_investigator,
            }
            for name, b in config.beamlines.items()
        }

    def request_for(self, scan_route: Route, scan: Scan, *, now: float) -> RunRequest:
        """The run request of one scan version; `now` fixes the Transfer deadline."""
        beamline = scan_route.beamline
        if scan.checksum is None or scan.mtime_ns is None:
            raise ValueError(f"{scan.path}: version {scan.version} has no content identity")
        body = {
            "input": {
                "beamline": beamline,
                "source": {
                    "collection_id": scan_route.source_collection,
                    "path": scan_route.source_path,
                    "size": scan.size,
                    "mtime": transfer_time(scan.mtime_ns),
                    "checksum": scan.checksum,
                    "version": scan.version,
                },
                "destination": {
                    "collection_id": scan_route.destination_collection,
                    "path": scan_route.destination_path,
                },
                # Transfer gives a task ~24 h unless told (GLOBUS_NOTES); the flow waits
                # the state's WaitTime for it, so the task may run that long and no longer.
                "deadline": iso_utc(now + self._transfer_wait),
                "scicat": {
                    "endpoint_id": self.config.globus.compute_endpoints.scicat,
                    "function_id": self.function_id,
                    "proposal": scan_route.proposal,
                    "metadata": dict(self._metadata[beamline]),
                },
            }
        }
        roles = self.config.globus.roles
        return RunRequest(
            flow_id=self.flow_id,
            body=body,
            label=run_label(beamline, scan_route.rel, scan.version),
            tags=run_tags(beamline),
            run_monitors=list(roles.run_monitors),
            run_managers=list(roles.run_managers),
            notify_on=list(self.config.globus.notifications.status),
        )

    def input_errors(self, request: RunRequest) -> list[str]:
        """What the flow's input_schema would reject, found before anything is sent."""
        errors = []
        for error in self._validator.iter_errors(request.body):
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            errors.append(f"{where}: {error.message}")
        return errors
