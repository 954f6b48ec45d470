"""How a new_file run is found again: its deterministic label and tags."""

from __future__ import annotations

import hashlib

FLOW_NAME = "new_file"
LABEL_LIMIT = 128  # Flows' run label limit (GLOBUS_NOTES)


def run_label(beamline: str, rel: str, version: int = 1, *, limit: int = LABEL_LIMIT) -> str:
    """`"<BL> <rel>"` (`"<BL> <rel> v<n>"` for a later version of the path), shortened in
    the middle when longer than `limit`.

    The cut carries a digest of the full path so two long names that differ only in the
    middle never share a label, and the version suffix is never cut: crash recovery
    identifies runs by their label.
    """
    suffix = f" v{version}" if version > 1 else ""
    limit -= len(suffix)
    full = f"{beamline} {rel}"
    if len(full) <= limit:
        return full + suffix
    digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    middle = f"…{digest}…"
    keep = limit - len(middle)
    head = keep // 2
    return full[:head] + middle + full[len(full) - (keep - head) :] + suffix


def run_tags(beamline: str) -> list[str]:
    return ["dichroism", beamline, FLOW_NAME]
