"""Hashing at detection vs coreutils: `identity.identify` (MD5, what the watcher records) on a
1 GiB file against `md5sum` on the same file, interleaved, in the same run.

    python benchmarks/bench_identity.py [--size-mib 1024] [--repeat 3] [--workdir DIR]

Target (issue 9): at least 80 % of md5sum's speed. The file is read once before timing so
both read it from the page cache (what a just-written scan is in); the first column is the
throughput of each, the last the ratio identify/md5sum per round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dichroism_control.identity import identify


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-identity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "scan.bin"
    if not path.exists() or path.stat().st_size != args.size_mib * 2**20:
        block = os.urandom(2**20)
        with open(path, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(block)
    size = path.stat().st_size
    expected = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, check=True)
    print(f"file {path} ({size / 2**20:.0f} MiB); load before {_load()}")
    ratios = []
    for round_ in range(1, args.repeat + 1):
        start = time.perf_counter()
        out = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, check=True)
        coreutils = time.perf_counter() - start
        start = time.perf_counter()
        ident = identify(str(path))
        ours = time.perf_counter() - start
        assert ident.checksum == out.stdout.split()[0] == expected.stdout.split()[0]
        ratio = coreutils / ours
        ratios.append(ratio)
        print(
            f"round {round_}: md5sum {size / coreutils / 1e6:7.0f} MB/s,"
            f" identify {size / ours / 1e6:7.0f} MB/s, ratio {ratio:.2f}"
        )
    median = sorted(ratios)[len(ratios) // 2]
    print(f"median ratio {median:.2f} (target >= 0.80); load after {_load()}")


if __name__ == "__main__":
    main()
