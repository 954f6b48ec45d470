"""`dichroism --help` wall time: median of N fresh subprocesses (target <= 250 ms).

    python benchmarks/bench_cli_help.py [N]

Exit 1 when the median misses the target, so CI can run it as a check.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_MS = 250.0


def command() -> list[str]:
    script = Path(sys.executable).with_name("dichroism")
    if script.exists():
        return [str(script), "--help"]
    found = shutil.which("dichroism")
    if found:
        return [found, "--help"]
    return [sys.executable, "-m", "dichroism_control.cli.main", "--help"]


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    argv = command()
    subprocess.run(argv, check=True, capture_output=True)  # warm the OS file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    print(
        f"dichroism --help: median {median:.0f} ms, min {min(times):.0f} ms, "
        f"max {max(times):.0f} ms over {runs} runs (target <= {TARGET_MS:.0f} ms)"
    )
    return 0 if median <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
