"""flow_definitions/*.json are what deploy publishes; tools/gen_definitions.py writes them.
The two must not drift apart: an edit to one without the other fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "gen_definitions", ROOT / "tools/gen_definitions.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["new_file", "archive", "prune", "flight_check"])
def test_committed_definition_is_what_the_generator_writes(name: str) -> None:
    gen = _generator()
    doc = getattr(gen, name)
    expected = {**doc, "input_schema": gen.wrapped(doc["input_schema"])}  # type: ignore[attr-defined]
    committed = json.loads((ROOT / "flow_definitions" / f"{name}.json").read_text())
    assert committed == expected, f"run `python tools/gen_definitions.py` ({name}.json drifted)"
