"""kill -9 the watcher at random moments during a 1 000-file burst; restart; check that every
file has exactly one run at the (loopback) Flows service and one `submitted` ledger row.

    python benchmarks/chaos_kill9.py [--files 1000] [--kills 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from harness import Server, Watch, write_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = Path(tmp)
        server = Server(workdir)
        config = write_config(workdir, settle=0.2)
        root = workdir / "data" / "bl402"
        log = workdir / "watch.log"
        expected = {f"bl402 P{i % 8}/c_{i:05d}.h5" for i in range(args.files)}

        def writer() -> None:
            for i in range(args.files):
                path = root / f"P{i % 8}" / f"c_{i:05d}.h5"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"c" * 512)
                time.sleep(0.002)

        watch = Watch(config, server, log)
        watch.wait_ready(log)
        thread = threading.Thread(target=writer)
        thread.start()
        kills = []
        for _ in range(args.kills):
            time.sleep(rng.uniform(0.2, 1.5))
            before = server.stats(summary=True)["runs"]
            watch.kill()
            kills.append(before)
            time.sleep(rng.uniform(0.0, 0.3))
            watch = Watch(config, server, log)
            watch.wait_ready(log)
        thread.join()
        deadline = time.monotonic() + 120
        while server.stats(summary=True)["runs"] < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        code = watch.stop()
        stats = server.stats()
        server.close()
        labels = stats["labels"]
        ledger = sqlite3.connect(workdir / "state" / "ledger.sqlite")
        states = dict(ledger.execute("SELECT state, COUNT(*) FROM scans GROUP BY state").fetchall())
        run_ids = [r[0] for r in ledger.execute("SELECT run_id FROM scans")]
        adopted = log.read_text().count("adopted run")
        report = {
            "files": len(expected),
            "kills": len(kills),
            "runs_at_kill": kills,
            "runs": stats["runs"],
            "lost": len([x for x in expected if x not in labels]),
            "duplicated": sum(n - 1 for n in labels.values() if n > 1),
            "ledger_states": states,
            "ledger_distinct_run_ids": len(set(run_ids)),
            "adopted_after_crash": adopted,
            "final_exit_code": code,
        }
        print(json.dumps(report))
        ok = (
            report["lost"] == 0
            and report["duplicated"] == 0
            and states == {"submitted": len(expected)}
        )
        raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
