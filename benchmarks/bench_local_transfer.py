"""Local transfer throughput vs `cp`: one 1 GB file, verified copy, page cache warm.

    python benchmarks/bench_local_transfer.py [--size-mb 1024] [--repeat 3] [--dir DIR]

Reports MB/s for `cp` and for the local Transfer provider's copy (`copy_file`, checksum
computed beside a kernel copy, then the destination re-read and compared) with the default
CRC32 and with SHA256, the ratio to `cp`, and the best of `--repeat` runs each (the source
is read once first so every contender starts from a warm page cache). Then the engine's
state-transition figure from benchmarks/bench_engine.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dichroism_control.local.providers import copy_file


def _best(label: str, fn: object, size: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    rate = size / min(times) / 1e6
    print(f"  {label:<34} {rate:8.0f} MB/s   (best of {repeat}: {min(times):.3f} s)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to put the files (default: tmp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-", dir=args.dir))
    try:
        src = work / "src.bin"
        size = args.size_mb * 2**20
        with open(src, "wb") as handle:
            block = os.urandom(2**20)
            for _ in range(args.size_mb):
                handle.write(block)
        with open(src, "rb") as handle:  # warm the page cache for every contender
            while handle.read(64 * 2**20):
                pass
        dst = work / "dst.bin"

        def cp() -> None:
            dst.unlink(missing_ok=True)
            subprocess.run(["cp", str(src), str(dst)], check=True)

        def local(algorithm: str) -> object:
            def run() -> None:
                dst.unlink(missing_ok=True)
                copy_file(src, dst, algorithm=algorithm, verify=True)

            return run

        print(f"{args.size_mb} MiB file in {work} ({os.cpu_count()} CPUs)")
        cp_rate = _best("cp", cp, size, args.repeat)
        crc = _best("local transfer, verify, CRC32", local("CRC32"), size, args.repeat)
        sha = _best("local transfer, verify, SHA256", local("SHA256"), size, args.repeat)
        print(
            f"  ratio to cp: CRC32 {crc / cp_rate:.0%}, SHA256 {sha / cp_rate:.0%}"
            "  (target >= 80% with verification)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    engine = Path(__file__).resolve().parent / "bench_engine.py"
    if engine.exists():
        print("engine:")
        subprocess.run([sys.executable, str(engine)], check=False)


if __name__ == "__main__":
    main()
