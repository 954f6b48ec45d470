"""What people do to the pipeline: retry, acknowledge, cancel, and one scan's story.

Rooms: `selection` (which failed scans, archive groups and prune batches a command names),
`retry` (re-queue them), `ack` (mark them dealt with), `cancel` (stop the subject of a run
being cancelled), `story` (`scan show`), `people` (who acted). Everything here works on the
ledger; only `cancel` talks to the backend. The CLI modules are the thin layer above.
"""

from __future__ import annotations
