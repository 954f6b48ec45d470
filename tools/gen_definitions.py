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

# Limits that keep every run's state under the Flows cap of 200 KB
# (docs.globus.org/api/flows/limits) at the largest input the schemas allow: a file item is
# at most ~360 bytes of JSON (a 240-character relative path, size, mtime, MD5, version, tape
# index), so 200 of them are ~72 KB of input, and every result the flows keep is indices and
# counts, never per-file paths (the Compute action provider stores each result twice:
# details.result and details.results[].output). tests/local/test_state_budget.py runs the
# flows at these limits and measures the state.
BATCH_MAX_FILES = 200
REL_MAX = 240
ARCHIVES_MAX = 50
MD5 = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
VERSION = {"type": "integer", "minimum": 1}
# Transfer's `last_modified` form (docs.globus.org/api/transfer/file_operations, File
# document): UTC, whole seconds.
TRANSFER_TIME = {
    "type": "string",
    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\\+00:00$",
}
DEADLINE = {"type": "string", "format": "date-time", "maxLength": 40}
BATCH_REL = {**REL_PATH, "maxLength": REL_MAX}

# Globus Transfer's default checksum algorithm, and the one identity.py computes at detection.
CHECKSUM_ALGORITHM = "MD5"

new_file = {
    "definition": {
        "Comment": "One scan version: copy compute-dtn -> NERSC CFS, verified by Globus against "
        "the MD5 taken when the scan was detected; confirm the size at CFS; register it in "
        "SciCat.",
        "StartAt": "TransferToCFS",
        "States": {
            "TransferToCFS": {
                "Type": "Action",
                "Comment": "external_checksum: Globus verifies source and copy against the bytes "
                "seen at detection (a file changed or swapped since fails the task).",
                "ActionUrl": f"{TRANSFER}/transfer",
                "Parameters": {
                    "source_endpoint.$": "$.input.source.collection_id",
                    "destination_endpoint.$": "$.input.destination.collection_id",
                    "DATA": [
                        {
                            "source_path.$": "$.input.source.path",
                            "destination_path.$": "$.input.destination.path",
                            "external_checksum.$": "$.input.source.checksum",
                            "checksum_algorithm": CHECKSUM_ALGORITHM,
                        }
                    ],
                    # The task document types sync_level as an integer: 3 = checksum.
                    "sync_level": 3,
                    "verify_checksum": True,
                    "preserve_timestamp": True,
                    "deadline.$": "$.input.deadline",
                    "notify_on_succeeded": False,
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
                    "checksum.$": "$.input.source.checksum",
                    "version.$": "$.input.source.version",
                    "proposal.$": "$.input.scicat.proposal",
                    "metadata.$": "$.input.scicat.metadata",
                },
                "$.ingest",
                "IngestFailed",
                3600,
                "Register the scan in SciCat (raw dataset + OrigDatablock with the MD5); a new "
                "version updates the dataset; idempotent.",
                End=True,
            ),
            "TransferFailed": fail(
                "TransferFailed",
                "The checksum-verified copy from compute-dtn to CFS failed (a checksum mismatch "
                "means the file changed after it was detected)." + SEE_ERROR,
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
            "source": obj(
                {
                    "collection_id": UUID,
                    "path": ABS_PATH,
                    "size": SIZE,
                    "mtime": TRANSFER_TIME,
                    "checksum": MD5,
                    "version": VERSION,
                }
            ),
            "destination": obj({"collection_id": UUID, "path": ABS_PATH}),
            "deadline": DEADLINE,
            "scicat": obj(
                {
                    "endpoint_id": UUID,
                    "function_id": UUID,
                    "proposal": {"type": ["string", "null"], "maxLength": 128},
                    "metadata": obj(
                        {
                            "instrument_id": {"type": "string", "maxLength": 256},
                            "owner_group": {"type": "string", "maxLength": 256},
                            "access_groups": {
                                "type": "array",
                                "maxItems": 64,
                                "items": {"type": "string", "maxLength": 256},
                            },
                            "owner": {"type": "string", "maxLength": 256},
                            "contact_email": {"type": "string", "maxLength": 256},
                            "principal_investigator": {"type": "string", "maxLength": 256},
                        }
                    ),
                }
            ),
        }
    ),
}

ARCHIVE_FILE = obj({"path": BATCH_REL, "size": SIZE, "checksum": MD5, "version": VERSION})

archive = {
    "definition": {
        "Comment": "One group of CFS scan versions -> NERSC HPSS (htar bundles / hsi cput, each "
        "CFS file checked against its MD5 first, verified on tape), then record the tape "
        "locations in SciCat.",
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
                "hpss_archive at NERSC: check, bundle/send, verify; returns where each file went "
                "as indices (a file whose CFS copy changed meanwhile is left out, reported).",
                Next="RecordTapeLocation",
            ),
            "RecordTapeLocation": compute_action(
                "$.input.scicat.endpoint_id",
                "$.input.scicat.function_id",
                {
                    "beamline.$": "$.input.beamline",
                    "cfs_root.$": "$.input.cfs_root",
                    "hpss_dir.$": "$.input.hpss.directory",
                    "files.$": "$.input.files",
                    "archive.$": "$.archive.details.result[0]",
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
            "files": {
                "type": "array",
                "minItems": 1,
                "maxItems": BATCH_MAX_FILES,
                "items": ARCHIVE_FILE,
            },
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

# The prune's file item: what the version was when its safe copy was confirmed. `archive`
# (CFS prunes only) is the index of the file's htar archive in safe.archives, -1 for a file
# sent alone with hsi.
PRUNE_FILE = obj(
    {
        "path": BATCH_REL,
        "size": SIZE,
        "mtime": TRANSFER_TIME,
        "checksum": MD5,
        "version": VERSION,
        "archive": {"type": "integer", "minimum": -1, "maximum": ARCHIVES_MAX - 1},
    },
    required=["path", "size", "mtime", "checksum", "version"],
)
_FILE = "input.target.files[check.todo[check.pos]]"
VERIFY_KWARGS = {
    "target_root.$": "$.input.target.root",
    "safe_root.$": "$.input.safe.root",
    "files.$": "$.input.target.files",
}


def judge_expression() -> str:
    """The target is still the version recorded: a regular file, same size, same mtime.

    `and` short-circuits, so a failed stat (no `details.type`) never reaches the later terms.
    """
    return (
        "stat.status == 'SUCCEEDED' and 'type' in stat.details and 'size' in stat.details"
        " and 'last_modified' in stat.details and stat.details.type == 'file'"
        f" and stat.details.size == {_FILE}.size"
        f" and stat.details.last_modified == {_FILE}.mtime"
    )


CHECK_LISTS = ("delete", "changed", "gone")


def advance(field: str) -> dict:
    """The check accumulator after one file: list `field` gains the file's index.

    delete: the target is still the version recorded; changed: it is there but not that
    version (another size or mtime, or not a regular file); gone: Transfer could not stat it.
    """
    parameters: dict = {
        "todo.$": "$.check.todo",
        "n.$": "$.check.n",
        "pos.=": "check.pos + 1",
    }
    for name in CHECK_LISTS:
        if name == field:
            parameters[f"{name}.="] = f"check.{name} + [check.todo[check.pos]]"
        else:
            parameters[f"{name}.$"] = f"$.check.{name}"
    return {
        "Type": "ExpressionEval",
        "Parameters": parameters,
        "ResultPath": "$.check",
        "Next": "MoreToCheck",
    }


prune = {
    "definition": {
        "Comment": "Delete only what is proven safe and unchanged, at delete time. 1. Each "
        "file's safe copy holds its content (CFS copy: MD5 at NERSC; tape: listed with its size "
        "in the archive recorded for it, and the CFS file itself hashed). 2. Each target is "
        "still that version (Transfer stat: a regular file, same size and mtime). 3. Delete "
        "exactly the files that passed both; every other file is kept and reported by index "
        "with its reason. One changed file never blocks the rest of its batch.",
        "StartAt": "WhichSafeCopy",
        "States": {
            "WhichSafeCopy": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Variable": "$.input.location",
                        "StringEquals": "compute_dtn",
                        "Next": "VerifyCFSCopies",
                    },
                    {
                        "Variable": "$.input.location",
                        "StringEquals": "cfs",
                        "Next": "VerifyTapeCopies",
                    },
                ],
                "Default": "UnknownLocation",
            },
            "VerifyCFSCopies": compute_action(
                "$.input.verify.endpoint_id",
                "$.input.verify.function_id",
                VERIFY_KWARGS,
                "$.verification",
                "VerificationFailed",
                21600,
                "cfs_verify at NERSC: each file's CFS copy must hash to its MD5; returns the "
                "indices of the safe files and, for the others, the index and reason.",
                Next="StartChecks",
            ),
            "VerifyTapeCopies": compute_action(
                "$.input.verify.endpoint_id",
                "$.input.verify.function_id",
                {**VERIFY_KWARGS, "archives.$": "$.input.safe.archives"},
                "$.verification",
                "VerificationFailed",
                21600,
                "hpss_verify at NERSC: each file's tape copy must be listed with its size in "
                "the archive recorded for it (tape can only be checked by size), and the CFS "
                "file itself must still hash to its MD5.",
                Next="StartChecks",
            ),
            "StartChecks": {
                "Type": "ExpressionEval",
                "Comment": "Loop over the files whose safe copy was verified.",
                "Parameters": {
                    "todo.=": "verification.details.result[0].safe",
                    "n.=": "len(verification.details.result[0].safe)",
                    "pos": 0,
                    "delete": [],
                    "changed": [],
                    "gone": [],
                },
                "ResultPath": "$.check",
                "Next": "MoreToCheck",
            },
            "MoreToCheck": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Variable": "$.check.pos",
                        "NumericLessThanPath": "$.check.n",
                        "Next": "StatTarget",
                    }
                ],
                "Default": "Summarize",
            },
            "StatTarget": {
                "Type": "Action",
                "Comment": "The target as it is now. A failed stat (gone, not permitted) is "
                "recorded, not raised: that file is kept, the others go on.",
                "ActionUrl": f"{TRANSFER}/stat",
                "Parameters": {
                    "endpoint_id.$": "$.input.target.collection_id",
                    "path.=": f"input.target.root + '/' + {_FILE}.path",
                },
                "ResultPath": "$.stat",
                "WaitTime": 600,
                "ExceptionOnActionFailure": False,
                "Catch": catch("StatUnavailable"),
                "Next": "JudgeTarget",
            },
            "JudgeTarget": {
                "Type": "ExpressionEval",
                "Parameters": {"same.=": judge_expression()},
                "ResultPath": "$.judge",
                "Next": "TargetUnchanged",
            },
            "TargetUnchanged": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.judge.same", "BooleanEquals": True, "Next": "MarkForDelete"}
                ],
                "Default": "WasStatted",
            },
            "WasStatted": {
                "Type": "Choice",
                "Comment": "A path that does not exist is a stat without a `type` (the stat "
                "action reports NotFound in details.code, or fails): gone; any other: changed.",
                "Choices": [
                    {"Variable": "$.stat.details.type", "IsPresent": True, "Next": "MarkChanged"}
                ],
                "Default": "MarkGone",
            },
            "MarkForDelete": advance("delete"),
            "MarkChanged": advance("changed"),
            "MarkGone": advance("gone"),
            "Summarize": {
                "Type": "ExpressionEval",
                "Parameters": {
                    "deleting.=": "len(check.delete)",
                    "kept_changed.=": "len(check.changed)",
                    "kept_gone.=": "len(check.gone)",
                    "kept_unsafe.=": "len(verification.details.result[0].kept)",
                },
                "ResultPath": "$.summary",
                "Next": "AnythingToDelete",
            },
            "AnythingToDelete": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Variable": "$.summary.deleting",
                        "NumericGreaterThan": 0,
                        "Next": "DeleteUnchanged",
                    }
                ],
                "Default": "NothingToDelete",
            },
            "DeleteUnchanged": {
                "Type": "Action",
                "Comment": "Delete exactly the files that passed both checks; a file already "
                "gone is not an error (a retry after a partial delete).",
                "ActionUrl": f"{TRANSFER}/delete",
                "Parameters": {
                    "endpoint.$": "$.input.target.collection_id",
                    "recursive": False,
                    "ignore_missing": True,
                    "DATA.=": "[{'path': input.target.root + '/' + input.target.files[i].path}"
                    " for i in check.delete]",
                    "deadline.$": "$.input.deadline",
                    "notify_on_succeeded": False,
                    "label.$": "$._context.run_id",
                },
                "ResultPath": "$.delete",
                "WaitTime": 86400,
                "ExceptionOnActionFailure": True,
                "Catch": catch("DeleteFailed"),
                "End": True,
            },
            "NothingToDelete": {
                "Type": "Pass",
                "Comment": "Every file was kept; the reasons are in the run's output.",
                "End": True,
            },
            "UnknownLocation": fail(
                "UnknownLocation", "input.location is neither compute_dtn nor cfs."
            ),
            "VerificationFailed": fail(
                "VerificationFailed",
                "The verifier refused the batch (roots, paths) or could not run; nothing was "
                "deleted." + SEE_ERROR,
            ),
            "StatUnavailable": fail(
                "StatUnavailable",
                "Transfer could not stat a target; nothing was deleted." + SEE_ERROR,
            ),
            "DeleteFailed": fail(
                "DeleteFailed",
                "Every file in the delete list was verified but the delete failed; some files "
                "may remain." + SEE_ERROR,
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
                    "files": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": BATCH_MAX_FILES,
                        "items": PRUNE_FILE,
                    },
                }
            ),
            "safe": obj(
                {
                    "root": ABS_PATH,
                    "archives": {
                        "type": "array",
                        "maxItems": ARCHIVES_MAX,
                        "items": {**ABS_PATH, "maxLength": 512},
                    },
                },
                required=["root"],
            ),
            "verify": obj({"endpoint_id": UUID, "function_id": UUID}),
            "deadline": DEADLINE,
        }
    ),
}


# The flight check's canary: a small file in a reserved directory at each end. The schema
# pins both to that directory (binding.py pins them per beamline), so the flow's deletes
# can never reach anything but a canary.
CANARY_DIR = ".dichroism-canary"
CANARY_MAX_BYTES = 1 << 20
CANARY_NAME = "[A-Za-z0-9._-]{1,128}"
# An absolute path without `..` whose last directory is the canary directory (`\.` in it).
_IN_CANARY_DIR = "^/(?!(.*/)?\\.\\.(/|$))[^\\x00]*/\\" + CANARY_DIR
CANARY_PATH = {**ABS_PATH, "pattern": f"{_IN_CANARY_DIR}/{CANARY_NAME}$"}
CANARY_DIRECTORY = {**ABS_PATH, "pattern": f"{_IN_CANARY_DIR}$"}


def step_ok(step: str, error_key: str, then: str) -> dict:
    """A Choice: the step's Catch stored an error (`$.<error_key>`) -> FlightCheckFailed."""
    return {
        "Type": "Choice",
        "Comment": f"Did {step} fail?",
        "Choices": [{"Variable": f"$.{error_key}", "IsPresent": True, "Next": "FlightCheckFailed"}],
        "Default": then,
    }


def endpoint_ok(result: str, then: str) -> dict:
    """A Choice: the Compute check at `$.<result>` reported every check ok."""
    return {
        "Type": "Choice",
        "Choices": [
            {
                "Variable": f"$.{result}.details.result[0].ok",
                "BooleanEquals": True,
                "Next": then,
            }
        ],
        "Default": "FlightCheckFailed",
    }


def continue_on_error(key: str, target: str) -> list[dict]:
    """Record the error at `$.<key>` and go on: every step of a flight check runs, so one
    run reports every problem, not only the first."""
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": f"$.{key}", "Next": target}]


def flight_compute(endpoint: str, kwargs: dict, result: str, then: str, comment: str) -> dict:
    return {
        "Type": "Action",
        "Comment": comment,
        "ActionUrl": COMPUTE,
        "Parameters": {
            "endpoint_id.$": f"$.input.{endpoint}.endpoint_id",
            "tasks": [
                {"function_id.$": f"$.input.{endpoint}.function_id", "args": [], "kwargs": kwargs}
            ],
        },
        "ResultPath": f"$.{result}",
        "WaitTime": 600,
        "ExceptionOnActionFailure": True,
        "Catch": continue_on_error(f"{result}_error", then),
        "Next": then,
    }


flight_check = {
    "definition": {
        "Comment": "Can the pipeline work right now? A canary file goes compute-dtn -> CFS "
        "checksum-verified (MD5, as new_file), is stat'ed at CFS, deleted at CFS (and at the "
        "source when input.source.delete), then each Compute endpoint checks its needs "
        "(NERSC: hsi, htar, HPSS; SciCat: reachable with its credentials). Every step runs "
        "and records its result or error; the run fails if any did. The CFS copy's name is "
        "derived from the run id, so each run (a recurring timer's included) uses a new one.",
        "StartAt": "NameCanary",
        "States": {
            "NameCanary": {
                "Type": "ExpressionEval",
                "Parameters": {
                    "destination_path.=": "input.destination.directory + '/' + input.beamline"
                    " + '-' + _context.run_id + '.dat'"
                },
                "ResultPath": "$.canary",
                "Next": "CopyCanary",
            },
            "CopyCanary": {
                "Type": "Action",
                "Comment": "external_checksum: Globus verifies the copy against the MD5 of the "
                "canary as it was written.",
                "ActionUrl": f"{TRANSFER}/transfer",
                "Parameters": {
                    "source_endpoint.$": "$.input.source.collection_id",
                    "destination_endpoint.$": "$.input.destination.collection_id",
                    "DATA": [
                        {
                            "source_path.$": "$.input.source.path",
                            "destination_path.$": "$.canary.destination_path",
                            "external_checksum.$": "$.input.source.checksum",
                            "checksum_algorithm": CHECKSUM_ALGORITHM,
                        }
                    ],
                    "verify_checksum": True,
                    "notify_on_succeeded": False,
                    "notify_on_failed": False,
                    "label.$": "$._context.run_id",
                },
                "ResultPath": "$.copy",
                "WaitTime": 1800,
                "ExceptionOnActionFailure": True,
                "Catch": continue_on_error("copy_error", "StatCanary"),
                "Next": "StatCanary",
            },
            "StatCanary": {
                "Type": "Action",
                "ActionUrl": f"{TRANSFER}/stat",
                "Parameters": {
                    "endpoint_id.$": "$.input.destination.collection_id",
                    "path.$": "$.canary.destination_path",
                },
                "ResultPath": "$.stat",
                "WaitTime": 300,
                "ExceptionOnActionFailure": True,
                "Catch": continue_on_error("stat_error", "DeleteCanaryAtCFS"),
                "Next": "DeleteCanaryAtCFS",
            },
            "DeleteCanaryAtCFS": {
                "Type": "Action",
                "Comment": "ignore_missing: a copy that never arrived is not a second error.",
                "ActionUrl": f"{TRANSFER}/delete",
                "Parameters": {
                    "endpoint.$": "$.input.destination.collection_id",
                    "recursive": False,
                    "ignore_missing": True,
                    "DATA": [{"path.$": "$.canary.destination_path"}],
                    "notify_on_succeeded": False,
                    "notify_on_failed": False,
                    "label.$": "$._context.run_id",
                },
                "ResultPath": "$.delete_cfs",
                "WaitTime": 1800,
                "ExceptionOnActionFailure": True,
                "Catch": continue_on_error("delete_cfs_error", "DeleteAtSource"),
                "Next": "DeleteAtSource",
            },
            "DeleteAtSource": {
                "Type": "Choice",
                "Comment": "`dichroism check` writes a fresh canary and has it deleted at the "
                "source too; the recurring timer's canary is the watcher's and stays.",
                "Choices": [
                    {
                        "Variable": "$.input.source.delete",
                        "BooleanEquals": True,
                        "Next": "DeleteCanaryAtSource",
                    }
                ],
                "Default": "CheckNersc",
            },
            "DeleteCanaryAtSource": {
                "Type": "Action",
                "ActionUrl": f"{TRANSFER}/delete",
                "Parameters": {
                    "endpoint.$": "$.input.source.collection_id",
                    "recursive": False,
                    "ignore_missing": True,
                    "DATA": [{"path.$": "$.input.source.path"}],
                    "notify_on_succeeded": False,
                    "notify_on_failed": False,
                    "label.$": "$._context.run_id",
                },
                "ResultPath": "$.delete_source",
                "WaitTime": 1800,
                "ExceptionOnActionFailure": True,
                "Catch": continue_on_error("delete_source_error", "CheckNersc"),
                "Next": "CheckNersc",
            },
            "CheckNersc": flight_compute(
                "nersc",
                {"checks": ["hsi", "htar", "hpss"], "hpss_dir.$": "$.input.nersc.hpss_dir"},
                "nersc",
                "CheckScicat",
                "flight_check_endpoint at NERSC: hsi and htar on PATH, HPSS lists the "
                "beamline's directory.",
            ),
            "CheckScicat": flight_compute(
                "scicat",
                {"checks": ["scicat"]},
                "scicat",
                "CopyOk",
                "flight_check_endpoint on the SciCat endpoint: SciCat answers with the "
                "configured credentials (never shown).",
            ),
            "CopyOk": step_ok("the copy", "copy_error", "StatOk"),
            "StatOk": step_ok("the stat", "stat_error", "SizeOk"),
            "SizeOk": {
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
                        "Next": "DeleteCfsOk",
                    }
                ],
                "Default": "FlightCheckFailed",
            },
            "DeleteCfsOk": step_ok("the CFS delete", "delete_cfs_error", "DeleteSourceOk"),
            "DeleteSourceOk": step_ok("the source delete", "delete_source_error", "NerscRan"),
            "NerscRan": step_ok("the NERSC check", "nersc_error", "NerscOk"),
            "NerscOk": endpoint_ok("nersc", "ScicatRan"),
            "ScicatRan": step_ok("the SciCat check", "scicat_error", "ScicatOk"),
            "ScicatOk": endpoint_ok("scicat", "Passed"),
            "Passed": {"Type": "Pass", "Comment": "Every step passed.", "End": True},
            "FlightCheckFailed": fail(
                "FlightCheckFailed",
                "At least one flight-check step failed. Each step's result is in the run's "
                "output: $.copy, $.stat, $.delete_cfs, $.delete_source, $.nersc, $.scicat, "
                "and $.<step>_error for a step that raised.",
            ),
        },
    },
    "input_schema": obj(
        {
            "beamline": BEAMLINE,
            "source": obj(
                {
                    "collection_id": UUID,
                    "path": CANARY_PATH,
                    "size": {"type": "integer", "minimum": 1, "maximum": CANARY_MAX_BYTES},
                    "checksum": MD5,
                    "delete": {"type": "boolean"},
                }
            ),
            "destination": obj({"collection_id": UUID, "directory": CANARY_DIRECTORY}),
            "nersc": obj({"endpoint_id": UUID, "function_id": UUID, "hpss_dir": ABS_PATH}),
            "scicat": obj({"endpoint_id": UUID, "function_id": UUID}),
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
    flows = (
        ("new_file", new_file),
        ("archive", archive),
        ("prune", prune),
        ("flight_check", flight_check),
    )
    for name, doc in flows:
        doc = {**doc, "input_schema": wrapped(doc["input_schema"])}
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
