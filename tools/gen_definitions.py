"""Writes flow_definitions/*.json. Run once by hand when the flows change; the JSON files are
the source of truth that deploy publishes (this script only spares hand-typing repeated schema
fragments)."""

from __future__ import annotations

import json
from pathlib import Path

UUID = {
    "type": "string",
    "format": "uuid",
    "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
}
ABS_PATH = {
    "type": "string",
    "minLength": 2,
    "maxLength": 4096,
    "pattern": "^(?!(.*/)?\\.\\.(/|$))/[^\\x00]*$",
}
REL_PATH = {
    "type": "string",
    "minLength": 1,
    "maxLength": 4096,
    "pattern": "^(?!/)(?!(.*/)?\\.\\.(/|$))[^\\x00]+$",
}
BEAMLINE = {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"}
SIZE = {"type": "integer", "minimum": 0}
TRANSFER = "https://transfer.actions.globus.org"
COMPUTE = "https://compute.actions.globus.org/v3"


def obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


def catch(target: str) -> list[dict]:
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": target}]


def fail(error: str, cause: str) -> dict:
    return {"Type": "Fail", "Error": error, "Cause": cause}


def compute_action(
    endpoint: str,
    function: str,
    kwargs: dict,
    result: str,
    on_error: str,
    wait: int,
    comment: str,
    **nxt,
) -> dict:
    return {
        "Type": "Action",
        "Comment": comment,
        "ActionUrl": COMPUTE,
        "Parameters": {
            "endpoint_id.$": endpoint,
            "tasks": [{"function_id.$": function, "args": [], "kwargs": kwargs}],
        },
        "ResultPath": result,
        "WaitTime": wait,
        "ExceptionOnActionFailure": True,
        "Catch": catch(on_error),
        **nxt,
    }


SEE_ERROR = " The error details are in the run's output under $.error."

new_file = {
    "definition": {
        "Comment": "One scan: copy compute-dtn -> NERSC CFS (checksum sync + verify), confirm the "
        "size at CFS, register it in SciCat.",
        "StartAt": "TransferToCFS",
        "States": {
            "TransferToCFS": {
                "Type": "Action",
                "Comment": "Checksum-verified copy of one file from the beamline to CFS.",
                "ActionUrl": f"{TRANSFER}/transfer",
                "Parameters": {
                    "source_endpoint.$": "$.input.source.collection_id",
                    "destination_endpoint.$": "$.input.destination.collection_id",
                    "DATA": [
                        {
                            "source_path.$": "$.input.source.path",
                            "destination_path.$": "$.input.destination.path",
                        }
                    ],
                    "sync_level": "checksum",
                    "verify_checksum": True,
                    "label.$": "$._context.run_id",
                },
                "ResultPath": "$.transfer",
                "WaitTime": 172800,
                "ExceptionOnActionFailure": True,
                "Catch": catch("TransferFailed"),
                "Next": "StatDestination",
            },
            "StatDestination": {
                "Type": "Action",
                "Comment": "Independent check that the file is at CFS with the expected size.",
                "ActionUrl": f"{TRANSFER}/stat",
                "Parameters": {
                    "endpoint_id.$": "$.input.destination.collection_id",
                    "path.$": "$.input.destination.path",
                },
                "ResultPath": "$.stat",
                "WaitTime": 600,
                "ExceptionOnActionFailure": True,
                "Catch": catch("StatFailed"),
                "Next": "CheckSize",
            },
            "CheckSize": {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.stat.details.size", "IsPresent": True},
                            {
                                "Variable": "$.stat.details.size",
                                "NumericEqualsPath": "$.input.source.size",
                            },
                        ],
                        "Next": "IngestToSciCat",
                    }
                ],
                "Default": "SizeMismatch",
            },
            "IngestToSciCat": compute_action(
                "$.input.scicat.endpoint_id",
                "$.input.scicat.function_id",
                {
                    "beamline.$": "$.input.beamline",
                    "file_path.$": "$.input.destination.path",
                    "size.$": "$.input.source.size",
                    "proposal.$": "$.input.scicat.proposal",
                    "metadata.$": "$.input.scicat.metadata",
                },
                "$.ingest",
                "IngestFailed",
                3600,
                "Register the scan in SciCat (raw dataset + OrigDatablock); idempotent.",
                End=True,
            ),
            "TransferFailed": fail(
                "TransferFailed",
                "The checksum-verified copy from compute-dtn to CFS failed." + SEE_ERROR,
            ),
            "StatFailed": fail(
                "StatFailed", "Could not stat the copy at CFS after the transfer." + SEE_ERROR
            ),
            "SizeMismatch": fail(
                "SizeMismatch",
                "The copy at CFS is missing or its size differs from the source scan "
                "($.stat.details.size vs $.input.source.size).",
            ),
            "IngestFailed": fail(
                "IngestFailed",
                "The file is safely at CFS but the SciCat registration failed." + SEE_ERROR,
            ),
        },
    },
    "input_schema": obj(
        {
            "beamline": BEAMLINE,
            "source": obj({"collection_id": UUID, "path": ABS_PATH, "size": SIZE}),
            "destination": obj({"collection_id": UUID, "path": ABS_PATH}),
            "scicat": obj(
                {
                    "endpoint_id": UUID,
                    "function_id": UUID,
                    "proposal": {"type": ["string", "null"], "maxLength": 128},
                    "metadata": obj(
                        {
                            "instrument_id": {"type": "string"},
                            "owner_group": {"type": "string"},
                            "access_groups": {"type": "array", "items": {"type": "string"}},
                            "owner": {"type": "string"},
                            "contact_email": {"type": "string"},
                            "principal_investigator": {"type": "string"},
                        }
                    ),
                }
            ),
        }
    ),
}

# Paths relative to a root keep batches inside the 200 KB run-state cap.
FILES = {
    "type": "array",
    "minItems": 1,
    "maxItems": 1000,
    "items": obj({"path": REL_PATH, "size": SIZE}),
}

archive = {
    "definition": {
        "Comment": "One group of CFS files -> NERSC HPSS (htar bundles / hsi cput, verified), then "
        "record the tape locations in SciCat.",
        "StartAt": "ArchiveToTape",
        "States": {
            "ArchiveToTape": compute_action(
                "$.input.hpss.endpoint_id",
                "$.input.hpss.function_id",
                {
                    "beamline.$": "$.input.beamline",
                    "cfs_root.$": "$.input.cfs_root",
                    "files.$": "$.input.files",
                    "hpss_dir.$": "$.input.hpss.directory",
                    "archive_name.$": "$.input.hpss.archive_name",
                    "options.$": "$.input.hpss.options",
                },
                "$.archive",
                "ArchiveFailed",
                172800,
                "hpss_archive at NERSC: bundle/send, verify, return the manifest.",
                Next="RecordTapeLocation",
            ),
            "RecordTapeLocation": compute_action(
                "$.input.scicat.endpoint_id",
                "$.input.scicat.function_id",
                {
                    "beamline.$": "$.input.beamline",
                    "manifest.$": "$.archive.details.result[0].manifest",
                },
                "$.scicat",
                "RecordFailed",
                3600,
                "scicat_add_location: add the verified tape location to each dataset.",
                End=True,
            ),
            "ArchiveFailed": fail(
                "ArchiveFailed",
                "Archiving to HPSS failed or could not be verified; nothing was recorded."
                + SEE_ERROR,
            ),
            "RecordFailed": fail(
                "RecordFailed",
                "The files are verified on tape but SciCat was not updated." + SEE_ERROR,
            ),
        },
    },
    "input_schema": obj(
        {
            "beamline": BEAMLINE,
            "proposal": {"type": "string", "minLength": 1, "maxLength": 128},
            "cfs_root": ABS_PATH,
            "files": FILES,
            "hpss": obj(
                {
                    "endpoint_id": UUID,
                    "function_id": UUID,
                    "directory": ABS_PATH,
                    "archive_name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"},
                    "options": obj(
                        {
                            "bundle_max_bytes": {"type": "integer", "minimum": 1},
                            "single_file_threshold_bytes": {"type": "integer", "minimum": 1},
                            "max_sessions": {"type": "integer", "minimum": 1, "maximum": 15},
                            "walltime_seconds": {"type": "integer", "minimum": 1},
                        }
                    ),
                }
            ),
            "scicat": obj({"endpoint_id": UUID, "function_id": UUID}),
        }
    ),
}


prune = {
    "definition": {
        "Comment": "Verify-then-delete: every file's safe copy is checked at run time (CFS copy, "
        "or tape copy via hpss_verify); only if all are verified are the targets deleted.",
        "StartAt": "VerifySafeCopies",
        "States": {
            "VerifySafeCopies": compute_action(
                "$.input.verify.endpoint_id",
                "$.input.verify.function_id",
                {
                    "target_root.$": "$.input.target.root",
                    "safe_root.$": "$.input.safe.root",
                    "files.$": "$.input.target.files",
                },
                "$.verification",
                "VerificationFailed",
                7200,
                "cfs_verify / hpss_verify: raises naming any file whose safe copy is not "
                "verified; returns the delete list only when all are.",
                Next="AllVerified",
            ),
            "AllVerified": {
                "Type": "Choice",
                "Comment": "A second gate: delete only on an explicit all_verified == true.",
                "Choices": [
                    {
                        "And": [
                            {
                                "Variable": "$.verification.details.result[0].all_verified",
                                "IsPresent": True,
                            },
                            {
                                "Variable": "$.verification.details.result[0].all_verified",
                                "BooleanEquals": True,
                            },
                        ],
                        "Next": "DeleteVerified",
                    }
                ],
                "Default": "NotVerified",
            },
            "DeleteVerified": {
                "Type": "Action",
                "Comment": "Delete exactly the files the verifier listed.",
                "ActionUrl": f"{TRANSFER}/delete",
                "Parameters": {
                    "endpoint.$": "$.input.target.collection_id",
                    "recursive": False,
                    "DATA.$": "$.verification.details.result[0].delete",
                    "label.$": "$._context.run_id",
                },
                "ResultPath": "$.delete",
                "WaitTime": 86400,
                "ExceptionOnActionFailure": True,
                "Catch": catch("DeleteFailed"),
                "End": True,
            },
            "VerificationFailed": fail(
                "VerificationFailed",
                "At least one file's safe copy is missing, differs in size, is not verified on "
                "tape, or lies outside the configured root; nothing was deleted. The file is "
                "named in the error under $.error.",
            ),
            "NotVerified": fail(
                "NotVerified",
                "The verifier did not report every file as verified; nothing was deleted.",
            ),
            "DeleteFailed": fail(
                "DeleteFailed",
                "Every safe copy was verified but the delete failed; some files may remain."
                + SEE_ERROR,
            ),
        },
    },
    "input_schema": obj(
        {
            "beamline": BEAMLINE,
            "location": {"type": "string", "enum": ["compute_dtn", "cfs"]},
            "target": obj(
                {
                    "collection_id": UUID,
                    "root": ABS_PATH,
                    "files": {**FILES, "maxItems": 2000},
                }
            ),
            "safe": obj({"root": ABS_PATH}),
            "verify": obj({"endpoint_id": UUID, "function_id": UUID}),
        }
    ),
}


def wrapped(schema: dict) -> dict:
    # The run body is the initial run state; like gladier and the Globus tutorials we keep the
    # user's document under "input" so step results ($.transfer, $.error, ...) never collide
    # with it.
    return obj({"input": schema})


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "flow_definitions"
    for name, doc in (("new_file", new_file), ("archive", archive), ("prune", prune)):
        doc = {**doc, "input_schema": wrapped(doc["input_schema"])}
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
