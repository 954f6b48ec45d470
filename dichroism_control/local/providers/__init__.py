"""Local stand-ins for the Globus action providers the flows use, keyed by ActionUrl.

* Transfer (`https://transfer.actions.globus.org/{transfer,delete,stat,ls,mkdir}`) over
  local directories standing in for collections: `transfer.py`, with `transfer_queue.py`
  (3+3 tasks per user, overhead, deadlines), `transfer_tasks.py` (what the tasks do),
  `file_ops.py` (stat, ls, mkdir), `collections.py` (collection id and path -> local
  directory), `verified_copy.py` and `checksums.py`.
* Compute v3 (`https://compute.actions.globus.org/v3`): the registered function runs in a
  fresh Python subprocess with the fake HPSS tools and the SciCat stand-in: `compute.py`.
* Hello World (`https://actions.globus.org/hello_world`), for the Globus tutorial flows:
  `hello_world.py`.

Transfer's transfer and delete are tasks the engine polls, as the real ones are; Compute
answers synchronously (SUCCEEDED or FAILED from `run`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dichroism_control.local.engine.actions import ActionProvider
from dichroism_control.local.providers.checksums import checksum_file
from dichroism_control.local.providers.compute import COMPUTE_URL, ComputeProvider, FunctionLookup
from dichroism_control.local.providers.hello_world import HELLO_WORLD_URL, HelloWorldProvider
from dichroism_control.local.providers.transfer import TRANSFER_URLS, TransferProvider
from dichroism_control.local.providers.transfer_queue import TaskQueue
from dichroism_control.local.providers.verified_copy import copy_file

if TYPE_CHECKING:
    from dichroism_control.config import Config

__all__ = [
    "COMPUTE_URL",
    "HELLO_WORLD_URL",
    "TRANSFER_URLS",
    "ComputeProvider",
    "FunctionLookup",
    "HelloWorldProvider",
    "TaskQueue",
    "TransferProvider",
    "build_providers",
    "checksum_file",
    "copy_file",
]


def build_providers(
    config: Config, functions: FunctionLookup, *, transfer_queue: TaskQueue | None = None
) -> dict[str, ActionProvider]:
    """Every local provider by ActionUrl (an ActionUrl missing here is an engine error).
    The Transfer operations share one task queue (Transfer's limits are per user)."""
    queue = transfer_queue if transfer_queue is not None else TaskQueue()
    providers: dict[str, ActionProvider] = {
        url: TransferProvider(config, op, queue) for op, url in TRANSFER_URLS.items()
    }
    providers[COMPUTE_URL] = ComputeProvider(config, functions)
    providers[HELLO_WORLD_URL] = HelloWorldProvider()
    return providers
