"""Local transfer throughput vs `cp`: one 1 GB file, verified copy, page cache warm.

    python benchmarks/bench_local_transfer.py [--size-mb 1024] [--repeat 3] [--dir DIR]

Reports MB/s for `cp` and for the local Transfer provider's copy (`copy_file`: each block
read once, checksummed and written from the same buffer, then the copy read back, checksummed
and compared) with the default CRC32 and with SHA256, the ratio to `cp`, and the best of
`--repeat` runs each, `cp` and ours interleaved run by run so a busy machine hurts both alike
(the source is read once first so every contender starts from a warm page cache). The load
average is printed before and after: the copy uses both cores, `cp` one. Then the engine's
state-transition figure from benchmarks/bench_engine.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dichroism_control.local.providers import copy_file


def _interleaved(
    contenders: dict[str, Callable[[], None]], size: int, repeat: int
) -> dict[str, float]:
    """Best MB/s of each contender, running them in turn `repeat` times (not one after the
    other), so load from other work on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {label: [] for label in contenders}
    for _ in range(repeat):
        for label, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    rates = {}
    for label, runs in times.items():
        rates[label] = size / min(runs) / 1e6
        print(f"  {label:<34} {rates[label]:8.0f} MB/s   (best of {repeat}: {min(runs):.3f} s)")
    return rates


def _load() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


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
        with open(src, "rb") as reader:  # warm the page cache for every contender
            while reader.read(64 * 2**20):
                pass
        dst = work / "dst.bin"

        def cp() -> None:
            dst.unlink(missing_ok=True)
            subprocess.run(["cp", str(src), str(dst)], check=True)

        def local(algorithm: str) -> Callable[[], None]:
            def run() -> None:
                dst.unlink(missing_ok=True)
                copy_file(src, dst, algorithm=algorithm, verify=True)

            return run

        print(f"{args.size_mb} MiB file in {work} ({os.cpu_count()} CPUs, load {_load()})")
        rates = _interleaved(
            {
                "cp": cp,
                "local transfer, verify, CRC32": local("CRC32"),
                "local transfer, verify, SHA256": local("SHA256"),
            },
            size,
            args.repeat,
        )
        cp_rate, crc, sha = rates.values()
        print(f"  load after: {_load()}")
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
