"""The flight check: can the pipeline work right now, end to end, with Globus as it is?

One `flight_check` run per beamline (flow_definitions/flight_check.json) copies a canary file
compute-dtn -> CFS with the MD5 checked by Globus (external_checksum, as new_file does),
stats it at CFS, deletes it there (Transfer delete, ignore_missing) and, for `dichroism
check`, at the source too; then asks each Compute endpoint what the pipeline needs of it
(`compute_functions/flight.py`: hsi/htar/HPSS at NERSC, SciCat with the endpoint's
credentials). Every step runs and records its outcome, so one run names every problem.

Two ways to start it, because a recurring Globus Timer carries ONE fixed body and nothing
can write a file on the compute-dtn side from the cloud (there is no Compute endpoint
there):

- **`dichroism check`** (`runner`): writes a fresh canary (random bytes, its own MD5) under
  the watch root's reserved directory `.dichroism-canary/`, starts the run, waits, deletes
  local leftovers and prints a verdict per step with the remedy: the full round trip,
  including the delete at the source (what a compute-dtn prune needs).
- **the recurring timer** (`lifecycle.flight.FlightChecks`, every
  `flight_check.interval_hours`): its fixed body names a canary the lifecycle keeps present
  with FIXED content (so its MD5 in the body stays true) at `.dichroism-canary/<bl>.dat`;
  each run derives its CFS name from `$._context.run_id`, so every run copies, stats and
  deletes a new CFS file. It does not delete the source canary (the next run needs it), so
  it cannot prove the source-side delete permission; `dichroism check` does.

The verdict of either (`verdict`) lands in the ledger's meta `last_flight_check` = `{verdict,
at, detail, steps, beamlines}`, which `status`, health, the alerts and the metrics read.
"""

from __future__ import annotations
