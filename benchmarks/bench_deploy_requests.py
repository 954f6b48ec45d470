"""Requests made by a no-op deploy (the second deploy with nothing changed), by method.

    python benchmarks/bench_deploy_requests.py

Runs `dichroism deploy` twice in-process against a `responses`-served Globus (the test
suite's FakeGlobus: Auth, Flows, Compute) with a confidential client, and prints the request
count of each run by HTTP method. Needs the test extra (`responses`). Exit 1 if the second
deploy wrote anything.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import yaml

    from tests.conftest import config_data
    from tests.deploy.helpers import CLIENT_ID, CLIENT_SECRET, FakeGlobus, started_mock

    for key in [k for k in os.environ if k.startswith("GLOBUS_SDK_")]:
        del os.environ[key]
    os.environ["GLOBUS_CLIENT_ID"] = CLIENT_ID
    os.environ["GLOBUS_CLIENT_SECRET"] = CLIENT_SECRET

    from dichroism_control.cli.main import main as cli

    with tempfile.TemporaryDirectory() as tmp, started_mock() as mock:
        root = Path(tmp)
        data = config_data(root)
        for beamline in data["beamlines"].values():
            Path(beamline["watch"]["root"]).mkdir(parents=True, exist_ok=True)
        config_path = root / "config.yml"
        config_path.write_text(yaml.safe_dump(data))
        FakeGlobus(mock)

        counts = []
        for _ in range(2):
            mock.calls.reset()
            try:
                cli(["--config", str(config_path), "--format", "json", "deploy"])
            except SystemExit as exc:
                if exc.code not in (0, None):
                    print(f"deploy failed with exit code {exc.code}", file=sys.stderr)
                    return 1
            counts.append(Counter(c.request.method for c in mock.calls))

    def show(counter: Counter[str]) -> str:
        return ", ".join(f"{m} {n}" for m, n in sorted(counter.items())) or "none"

    first, second = counts
    sys.stdout.flush()
    print(f"\nfirst deploy:  {sum(first.values())} requests ({show(first)})", file=sys.stderr)
    print(f"no-op deploy:  {sum(second.values())} requests ({show(second)})", file=sys.stderr)
    writes = sum(n for m, n in second.items() if m in ("POST", "PUT", "PATCH", "DELETE"))
    print(f"no-op deploy writes: {writes}", file=sys.stderr)
    return 0 if writes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
