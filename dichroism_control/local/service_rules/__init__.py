"""What the Globus services do, written down once for every stand-in of them.

The local backend (`local/backend.py`, its engine and providers) and the unit tests'
in-memory `tests/fakes.py::FakeBackend` both obey these rules, so neither can drift into
"what we believed" on its own. Each rule names its source next to it; the list is also in
docs/ARCHITECTURE.md ("Service behaviours we rely on").

* `flows` — run requests (label, input schema with formats), run documents and their
  statuses, run-state size, run listing pages, 404s.
* `timers` — what a flow timer keeps of a run request (its FlowStartDocument), the timer
  document and its statuses before and after its one run.
* `transfer` — the Transfer action providers' task semantics: sync levels, external
  checksums, deadlines, task labels, the 3+3 active tasks per user, timestamps.
"""
