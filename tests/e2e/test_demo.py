"""The README's first command: `dichroism --config examples/local.yml demo` takes two scans
through transfer, SciCat, tape and both prunes on the local backend, and says where each
went."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dichroism_control.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_demo_takes_two_scans_all_the_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from typer.testing import CliRunner

    monkeypatch.setenv("DICHROISM_DEMO_DIR", str(tmp_path / "demo"))
    for name in ("FAKE_HPSS_FAIL", "FAKE_HPSS_TRUNCATE", "FAKE_HPSS_HANG", "DICHROISM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(
        app,
        ["--config", str(EXAMPLES / "local.yml"), "--format", "json", "demo", "--timeout", "60"],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    outcome = json.loads(result.stdout)
    assert outcome["ok"] is True and len(outcome["scans"]) == 2
    assert {scan["state"] for scan in outcome["scans"]} == {"pruned"}
    # Nothing left at the compute-dtn or CFS but the flight check's canaries; each scan is
    # in a tar on the fake tape.
    demo = tmp_path / "demo"

    def scans_left(top: Path) -> list[Path]:
        return [p for p in top.rglob("*") if p.is_file() and ".dichroism-canary" not in p.parts]

    assert scans_left(demo / "beamline") == [] and scans_left(demo / "cfs") == []
    tars = list((demo / "hpss").rglob("*.tar"))
    assert len(tars) == 1
    # The story names the tape location of each scan (the archive and its member).
    story = result.stderr
    lines = [line for line in story.splitlines() if "archived on fake HPSS tape:" in line]
    assert len(lines) == 2 and all(f"{tars[0].name} member " in line for line in lines)
