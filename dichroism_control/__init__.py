"""dichroism-flows: data movement for the ALS dichroism beamlines, built on Globus Flows."""

from __future__ import annotations

__version__ = "0.1.0"
