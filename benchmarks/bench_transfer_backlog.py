"""Drain time of a backlog of new_file transfers through the local Transfer provider.

    python benchmarks/bench_transfer_backlog.py [--files 2000] [--overhead 5] [--scale 0.01]

N small files (a burst of new scans) are submitted at once, each as its own new_file-like
Transfer task (one item, MD5 external checksum, sync_level 3, verify_checksum,
preserve_timestamp, a label, a deadline), and polled until every task has ended. The
local provider works like Transfer's task queue (docs.globus.org/api/transfer/task_behavior):
at most 3 transfer tasks per user at work, the rest queued, each task paying `--overhead`
seconds of start-up cost before its work (what a Globus task costs beyond the bytes: queue
pickup, sessions, checksums, completion; the figure is an assumption, not a documented one).

Sleeping through 2,000 real overheads would take hours, so overheads are slept `--scale`
times shorter; the copies, checksums and the queue are real. Reported: the wall time of the
scaled run, the peak number of tasks at work, and the drain time at the full overhead
(scaled overhead time back to full, plus the measured copy work), beside the bound the queue
sets, N / 3 x overhead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dichroism_control.config import load_config
from dichroism_control.local.engine import ActionContext
from dichroism_control.local.providers import TRANSFER_URLS, TaskQueue, TransferProvider
from dichroism_control.local.service_rules.transfer import ACTIVE_TASKS_PER_USER

SRC = "4f1e2d3c-5b6a-4788-9a0b-000000000402"
DST = "4f1e2d3c-5b6a-4788-9a0b-000000004020"


def _config(root: Path) -> Path:
    def endpoint(name: str, uuid: str, local: Path) -> dict[str, str]:
        local.mkdir(parents=True, exist_ok=True)
        return {
            "root_path": "/",
            "uri": "local",
            "uuid": uuid,
            "name": name,
            "local_path": str(local),
        }

    watch = root / "watch"
    watch.mkdir(parents=True, exist_ok=True)
    data = {
        "backend": "local",
        "state_dir": str(root / "state"),
        "globus": {
            "endpoints": {
                "bl402-compute-dtn": endpoint("bl402-compute-dtn", SRC, root / "dtn"),
                "bl402-nersc_alsdev_raw": endpoint("bl402-nersc_alsdev_raw", DST, root / "cfs"),
            },
            "compute_endpoints": {
                "nersc": "4f1e2d3c-5b6a-4788-9a0b-00000000c0de",
                "scicat": "4f1e2d3c-5b6a-4788-9a0b-00000000c0df",
            },
            "flows": {
                "new_file": {"title": "new"},
                "archive": {"title": "a"},
                "prune": {"title": "p"},
            },
        },
        "beamlines": {
            "bl402": {
                "watch": {"root": str(watch)},
                "source": "bl402-compute-dtn",
                "destination": "bl402-nersc_alsdev_raw",
                "hpss_root": "/home/a/alsdev/data_mover/4.0.2",
                "scicat": {"instrument_id": "4.0.2", "owner_group": "als", "access_groups": []},
            }
        },
    }
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per file")
    parser.add_argument("--overhead", type=float, default=5.0, help="seconds per task")
    parser.add_argument("--scale", type=float, default=0.01, help="overheads slept this much")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="backlog-") as tmp:
        root = Path(tmp)
        config = load_config(_config(root))
        checksums = []
        for i in range(args.files):
            data = os.urandom(args.size)
            path = root / "dtn" / "P1" / f"scan_{i:05d}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            checksums.append(hashlib.md5(data, usedforsecurity=False).hexdigest())

        queue = TaskQueue(overhead=args.overhead * args.scale)
        provider = TransferProvider(config, "transfer", queue)
        ctx = ActionContext(
            "bench",
            None,
            "TransferToCFS",
            TRANSFER_URLS["transfer"],
            172800,
            "User",
            {"user_id": "urn:globus:auth:identity:bench"},
        )
        deadline = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        t0 = time.perf_counter()
        pending = {}
        for i, checksum in enumerate(checksums):
            body = {
                "source_endpoint": SRC,
                "destination_endpoint": DST,
                "DATA": [
                    {
                        "source_path": f"/P1/scan_{i:05d}.h5",
                        "destination_path": f"/raw/P1/scan_{i:05d}.h5",
                        "external_checksum": checksum,
                        "checksum_algorithm": "MD5",
                    }
                ],
                "sync_level": 3,
                "verify_checksum": True,
                "preserve_timestamp": True,
                "deadline": deadline,
                "notify_on_succeeded": False,
                "label": f"run-{i}",
            }
            status = provider.run(body, ctx)
            pending[status.action_id] = status
        submitted = time.perf_counter() - t0
        queued = sum(1 for s in pending.values() if s.details["nice_status"] == "Queued")
        failed = 0
        while pending:
            for action_id in list(pending):
                status = provider.status(action_id)
                if status.status in ("SUCCEEDED", "FAILED"):
                    failed += status.status == "FAILED"
                    del pending[action_id]
            time.sleep(0.005)
        wall = time.perf_counter() - t0

    slots = ACTIVE_TASKS_PER_USER
    peak = max(queue.peak.values())
    slept = args.files / slots * args.overhead * args.scale
    work = max(wall - slept, 0.0)  # copies, checksums, queue and polling, measured
    projected = args.files / slots * args.overhead + work
    print(f"tasks: {args.files} x {args.size // 1024} KiB, MD5 external checksum + verify")
    print(f"submitted in {submitted:.2f} s; queued at submission: {queued}; failed: {failed}")
    print(f"peak tasks at work: {peak} (Transfer: {slots} per user)")
    print(
        f"scaled run: overhead {args.overhead * args.scale * 1000:.0f} ms/task, "
        f"drained in {wall:.1f} s (of which ~{work:.1f} s copy/checksum/queue work)"
    )
    print(
        f"at {args.overhead:g} s/task: drain ~{projected / 60:.1f} min "
        f"(bound N/{slots} x overhead = {args.files / slots * args.overhead / 60:.1f} min); "
        f"{args.files / projected * 3600:.0f} files/hour"
    )


if __name__ == "__main__":
    main()
